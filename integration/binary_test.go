package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	buildOut  []byte
)

// binary builds cmd/NAME once per test process.
func binary(t *testing.T, name string) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "crank-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", buildDir+"/", "../cmd/...")
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build: %v\n%s", buildErr, buildOut)
	}
	return filepath.Join(buildDir, name)
}

func runCmd(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("%s %v: %v", bin, args, err)
		}
		code = ee.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

// TestBinary drives the crank-ca binary as an operator would: init, a refused
// second init, a refused bad config, serve, token create while serve holds
// the store lock, a real issuance with that token, and graceful shutdown.
func TestBinary(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	bin := binary(t, "crank-ca")
	dir := filepath.Join(t.TempDir(), "ca")
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))

	out, errOut, code := runCmd(t, bin, "init", "--dir", dir, "--listen", addr)
	if code != 0 || !strings.Contains(out, "Root fingerprint (SHA-256): ") {
		t.Fatalf("init: code %d\n%s%s", code, out, errOut)
	}
	cfgPath := filepath.Join(dir, "crank-ca.json")
	before, _ := os.ReadFile(cfgPath)
	if _, errOut, code := runCmd(t, bin, "init", "--dir", dir); code == 0 || !strings.Contains(errOut, "already exists") {
		t.Errorf("second init: code %d, stderr %q", code, errOut)
	}
	if after, _ := os.ReadFile(cfgPath); !bytes.Equal(before, after) {
		t.Error("second init changed the config")
	}

	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"listn": "x", "provisioners": [{"name": "w", "type": "nope"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := runCmd(t, bin, "serve", "--config", bad); code == 0 || !strings.Contains(errOut, "listn") {
		t.Errorf("bad config: code %d, stderr %q", code, errOut)
	}

	var logs syncBuffer
	start := time.Now()
	serve := exec.Command(bin, "serve", "--config", cfgPath)
	serve.Stdout, serve.Stderr = &logs, &logs
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- serve.Wait() }()
	t.Cleanup(func() { _ = serve.Process.Kill() })

	roots := x509.NewCertPool()
	rootPEM, _ := os.ReadFile(filepath.Join(dir, "pki", "root.crt"))
	roots.AppendCertsFromPEM(rootPEM)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	url := "https://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := hc.Get(url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve never became healthy: %v\n%s", err, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("serve: process start to healthy HTTPS: %s", time.Since(start))

	out, errOut, code = runCmd(t, bin, "token", "create", "--config", cfgPath, "--worker", "api", "--json")
	if code != 0 {
		t.Fatalf("token create while serving: code %d: %s", code, errOut)
	}
	var tok struct{ KID, HMACKey, Token, ExpiresAt string }
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.KID == "" || tok.HMACKey == "" || !strings.HasPrefix(tok.Token, tok.KID+".") {
		t.Fatalf("token --json output %q: %v", out, err)
	}
	if plain, _, code := runCmd(t, bin, "token", "create", "--config", cfgPath, "--worker", "api"); code != 0 || strings.Count(strings.TrimSpace(plain), "\n") != 0 {
		t.Errorf("plain token output: code %d %q", code, plain)
	}
	if _, errOut, code := runCmd(t, bin, "token", "create", "--config", cfgPath, "--worker", "Not_A_Worker"); code == 0 || !strings.Contains(errOut, "worker: ") {
		t.Errorf("bad worker: code %d, stderr %q", code, errOut)
	}

	// Any ACME client can use kid and hmacKey as EAB credentials.
	u := &legoUser{key: newKey(t)}
	lc := lego.NewConfig(u)
	lc.CADirURL = url + "/acme/workers/directory"
	lc.HTTPClient = hc
	cl, err := lego.NewClient(lc)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := cl.Registration.RegisterWithExternalAccountBinding(registration.RegisterEABOptions{TermsOfServiceAgreed: true, Kid: tok.KID, HmacEncoded: tok.HMACKey})
	if err != nil {
		t.Fatalf("register with CLI token: %v\n%s", err, logs.String())
	}
	u.reg = reg
	key := newKey(t)
	if _, err := cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: csrFor(t, key, "", []string{"api.workers.crank.internal"}, nil), PrivateKey: key}); err != nil {
		t.Fatalf("obtain: %v\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), "certificate issued") {
		t.Error("no audit record of the issuance")
	}

	if err := serve.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("serve exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not exit after SIGTERM")
	}
}
