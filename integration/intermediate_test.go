package integration

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/pki"
	"github.com/crank-platform/crank-ca/internal/server"
)

// TestIntermediateRotation: two hello-worker processes greet each other over
// mTLS every 100 ms against `crank-ca serve`, which runs without the root
// key. The operator runs `crank-ca pki rotate-intermediate` with the root
// key from elsewhere, sends SIGHUP and forces renewal with `crank-ca
// rotate --all`. Both workers end with leaf certificates of the new
// intermediate, the server presents a certificate of the new intermediate,
// the CRL is re-signed by it, and no greeting fails at any point.
func TestIntermediateRotation(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binaries through a rotation")
	}
	bin, hello := binary(t, "crank-ca"), binary(t, "hello-worker")
	dir := filepath.Join(t.TempDir(), "ca")
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	if out, errOut, code := runCmd(t, bin, "init", "--dir", dir, "--listen", addr); code != 0 {
		t.Fatalf("init: %d\n%s%s", code, out, errOut)
	}
	cfgPath := filepath.Join(dir, "crank-ca.json")
	// Two-minute certificates: Retry-After 6 s, so `rotate` reaches the
	// workers within seconds.
	editConfig(t, cfgPath, func(doc map[string]any) {
		provisionerDoc(t, doc, "workers")["claims"] = map[string]any{"minCertDuration": "1m", "defaultCertDuration": "2m", "maxCertDuration": "2m"}
	})
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	// The root key is kept away from serve, which never needs it.
	rootKey := filepath.Join(t.TempDir(), "offline-root.key")
	if err := os.Rename(filepath.Join(dir, "pki", "root.key"), rootKey); err != nil {
		t.Fatal(err)
	}
	s := startCLIServe(t, bin, cfgPath, dir, addr)
	oldInter, err := os.ReadFile(filepath.Join(dir, "pki", "intermediate.crt"))
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, err := os.ReadFile(filepath.Join(dir, "pki", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	fp := pki.Fingerprint(parseChain(t, rootPEM)[0])

	names := []string{"alpha", "beta"}
	ports := []int{freePort(t), freePort(t)}
	states := []string{filepath.Join(t.TempDir(), "alpha"), filepath.Join(t.TempDir(), "beta")}
	var logs [2]syncBuffer
	var cmds [2]*exec.Cmd
	for i, name := range names {
		tok, err := server.MintToken(cfg, server.TokenRequest{Worker: name})
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(hello,
			"--ca-url", s.url, "--fingerprint", fp, "--worker", name, "--state", states[i],
			"--listen", "127.0.0.1:"+strconv.Itoa(ports[i]),
			"--peer", "https://127.0.0.1:"+strconv.Itoa(ports[1-i])+"/",
			"--peer-id", "spiffe://crank.internal/worker/"+names[1-i],
			"--interval", "100ms")
		cmd.Env = append(cmd.Environ(), "CRANK_TOKEN="+tok.Encode())
		cmd.Stdout, cmd.Stderr = &logs[i], &logs[i]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[i] = cmd
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if conn, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(ports[i])); err == nil {
				conn.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never listened\n%s", name, logs[i].String())
			}
		}
	}
	// From the first greeting on, every call must succeed.
	var from [2]int
	for i := range names {
		from[i] = waitLogAfter(t, &logs[i], 0, `msg="peer answered"`, 30*time.Second)
	}
	for i, name := range names {
		if issuerOfState(t, states[i]) != string(oldInter) {
			t.Fatalf("%s did not start with a certificate of the first intermediate", name)
		}
	}

	out, errOut, code := runCmd(t, bin, "pki", "rotate-intermediate", "--config", cfgPath, "--root-key", rootKey)
	if code != 0 {
		t.Fatalf("rotate-intermediate: %d\n%s%s", code, out, errOut)
	}
	t.Logf("rotate-intermediate:\n%s", out)
	newInter, err := os.ReadFile(filepath.Join(dir, "pki", "intermediate.crt"))
	if err != nil || bytes.Equal(newInter, oldInter) {
		t.Fatalf("intermediate.crt unchanged after the rotation (%v)", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "pki", "intermediate.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("intermediate.key: %v %v, want 0600", fi.Mode(), err)
	}
	kept := regexp.MustCompile(`kept as (\S+), (\S+)`).FindStringSubmatch(out)
	if kept == nil {
		t.Fatalf("rotate-intermediate did not say where the old intermediate is")
	}
	if b, err := os.ReadFile(kept[1]); err != nil || !bytes.Equal(b, oldInter) {
		t.Errorf("old intermediate not kept at %s: %v", kept[1], err)
	}

	mark := len(s.logs.String())
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLogAfter(t, s.logs, mark, "configuration reloaded", 30*time.Second)
	if !strings.Contains(s.logs.String()[mark:], "pki.intermediate") {
		t.Errorf("the reload did not report the new intermediate:\n%s", s.logs.String()[mark:])
	}
	// The server's own certificate moves to the new intermediate at once.
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: s.roots, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if chain := conn.ConnectionState().PeerCertificates; len(chain) < 2 || !bytes.Equal(pemBytes(chain[1]), newInter) {
		t.Errorf("the server does not present a chain of the new intermediate")
	}
	conn.Close()
	waitLogAfter(t, s.logs, mark, `reason="issuer changed"`, 10*time.Second)

	if out, errOut, code := runCmd(t, bin, "rotate", "--config", cfgPath, "--all"); code != 0 {
		t.Fatalf("rotate --all: %d\n%s%s", code, out, errOut)
	}
	for i, name := range names {
		for deadline := time.Now().Add(60 * time.Second); issuerOfState(t, states[i]) != string(newInter); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s never renewed under the new intermediate\n%s", name, logs[i].String())
			}
		}
	}
	// Each then greets the other with its new certificate, at least once.
	for i := range names {
		peerSerial := leafOfState(t, states[1-i]).SerialNumber.String()
		waitLogAfter(t, &logs[i], from[i], "peerSerial="+peerSerial, 30*time.Second)
	}
	// Count before stopping either: a greeting cut short by the stop
	// itself is not a failure of the rotation.
	var seen [2]string
	for i := range names {
		seen[i] = logs[i].String()[from[i]:]
	}
	for i, cmd := range cmds {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("%s exit: %v", names[i], err)
		}
	}
	for i := range names {
		after := seen[i]
		answered := strings.Count(after, `msg="peer answered"`)
		failed := strings.Count(after, "peer call failed") + strings.Count(after, "peer answered badly")
		t.Logf("%s: %d greetings answered, %d failed after the first", names[i], answered, failed)
		if failed > 0 {
			t.Errorf("%s: %d failed greetings:\n%s", names[i], failed, after)
		}
	}
	s.stop(t)
}

// pemBytes is cert as the pki package writes it.
func pemBytes(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// leafOfState is the leaf in a worker's state directory.
func leafOfState(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return parseChain(t, b)[0]
}

// issuerOfState is the PEM of the intermediate in a worker's state
// directory (the chain it presents).
func issuerOfState(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	chain := parseChain(t, b)
	if len(chain) < 2 {
		t.Fatalf("%s: chain without an intermediate", dir)
	}
	return string(pemBytes(chain[1]))
}
