package integration

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/pki"
)

// cliServe is a `crank-ca serve` process of TestAdminCLI.
type cliServe struct {
	cmd    *exec.Cmd
	exited chan error
	logs   *syncBuffer
	url    string
	roots  *x509.CertPool
}

// startCLIServe starts `crank-ca serve` and waits until /health answers.
func startCLIServe(t *testing.T, bin, cfgPath, dir, addr string) *cliServe {
	t.Helper()
	s := &cliServe{exited: make(chan error, 1), logs: &syncBuffer{}, url: "https://" + addr, roots: x509.NewCertPool()}
	s.cmd = exec.Command(bin, "serve", "--config", cfgPath)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.exited <- s.cmd.Wait() }()
	t.Cleanup(func() { _ = s.cmd.Process.Kill() })
	rootPEM, err := os.ReadFile(filepath.Join(dir, "pki", "root.crt"))
	if err != nil || !s.roots.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("root.crt: %v", err)
	}
	hc := s.client(nil)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := hc.Get(s.url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve never became healthy: %v\n%s", err, s.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// client is an HTTPS client trusting the CA root, presenting cert if set.
func (s *cliServe) client(cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: s.roots, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

func (s *cliServe) stop(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-s.exited:
		if err != nil {
			t.Fatalf("serve exit after SIGTERM: %v\n%s", err, s.logs)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not exit after SIGTERM")
	}
}

// cliEnroll registers a new ACME account with the EAB credentials of tok
// and obtains a certificate for the api worker. It returns the leaf, the
// chain (leaf and intermediate, as a worker presents it) and the key.
func (s *cliServe) cliEnroll(t *testing.T, kid, hmacKey string) (*x509.Certificate, []byte, *ecdsa.PrivateKey) {
	t.Helper()
	u := &legoUser{key: newKey(t)}
	lc := lego.NewConfig(u)
	lc.CADirURL = s.url + "/acme/workers/directory"
	lc.HTTPClient = s.client(nil)
	cl, err := lego.NewClient(lc)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := cl.Registration.RegisterWithExternalAccountBinding(registration.RegisterEABOptions{TermsOfServiceAgreed: true, Kid: kid, HmacEncoded: hmacKey})
	if err != nil {
		t.Fatalf("register with CLI token: %v\n%s", err, s.logs)
	}
	u.reg = reg
	key := newKey(t)
	res, err := cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: csrFor(t, key, "", []string{"api.workers.crank.internal"}, nil), PrivateKey: key, Bundle: true})
	if err != nil {
		t.Fatalf("obtain: %v\n%s", err, s.logs)
	}
	return parseChain(t, res.Certificate)[0], res.Certificate, key
}

// cliToken is `token create --json` output.
type cliToken struct{ KID, HMACKey, Token, ExpiresAt string }

// TestAdminCLI drives the operator commands of the crank-ca binary against
// a running `serve` (so nothing but the server opens the store), and checks
// that the admin API refuses clients without an admin certificate.
func TestAdminCLI(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	bin := binary(t, "crank-ca")
	dir := filepath.Join(t.TempDir(), "ca")
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	if out, errOut, code := runCmd(t, bin, "init", "--dir", dir, "--listen", addr); code != 0 {
		t.Fatalf("init: code %d\n%s%s", code, out, errOut)
	}
	cfgPath := filepath.Join(dir, "crank-ca.json")
	s := startCLIServe(t, bin, cfgPath, dir, addr)

	// cli runs an operator command that must succeed.
	cli := func(args ...string) string {
		t.Helper()
		args = append(args[:len(args):len(args)], "--config", cfgPath)
		out, errOut, code := runCmd(t, bin, args...)
		if code != 0 {
			t.Fatalf("crank-ca %s: code %d\nstdout: %s\nstderr: %s\nserve log:\n%s", strings.Join(args, " "), code, out, errOut, s.logs)
		}
		return out
	}
	decode := func(out string, v any) {
		t.Helper()
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("undecodable --json output %q: %v", out, err)
		}
	}

	// token create goes through the API: the server audits the request.
	var tok cliToken
	decode(cli("token", "create", "--worker", "api", "--json"), &tok)
	if tok.KID == "" || tok.HMACKey == "" || !strings.HasPrefix(tok.Token, tok.KID+".") {
		t.Fatalf("token --json: %+v", tok)
	}
	cliWaitFor(t, "admin audit record of POST /admin/v1/tokens", func() bool {
		for _, line := range strings.Split(s.logs.String(), "\n") {
			if strings.Contains(line, `"msg":"admin request"`) && strings.Contains(line, `"log":"audit"`) &&
				strings.Contains(line, `"path":"/admin/v1/tokens"`) && strings.Contains(line, `"status":201`) {
				return true
			}
		}
		return false
	}, s.logs)

	leaf, _, _ := s.cliEnroll(t, tok.KID, tok.HMACKey)
	serial := leaf.SerialNumber.String()

	var workers []admin.Worker
	decode(cli("workers", "list", "--json"), &workers)
	i := slices.IndexFunc(workers, func(w admin.Worker) bool { return w.Name == "api" })
	if i < 0 || workers[i].Provisioner != "workers" || workers[i].Accounts != 1 || workers[i].LiveCertificates != 1 || workers[i].Disabled {
		t.Errorf("workers list --json: %+v", workers)
	}
	if out := cli("workers", "list"); !strings.Contains(out, "LIVE CERTS") || !cliLineMatches(out, `^workers\s+api\s+enabled\s+1\s+1\s`) {
		t.Errorf("workers list table:\n%s", out)
	}
	if out := cli("accounts", "list"); !strings.HasPrefix(out, "ACCOUNT") || !cliLineMatches(out, `\sworkers\s+api\s+\S+\s+yes$`) {
		t.Errorf("accounts list table:\n%s", out)
	}
	var accounts []admin.Account
	decode(cli("accounts", "list", "--json"), &accounts)
	if len(accounts) != 1 || accounts[0].Worker != "api" || !accounts[0].Usable {
		t.Errorf("accounts list --json: %+v", accounts)
	}

	var certs []admin.Certificate
	decode(cli("certs", "list", "--worker", "api", "--json"), &certs)
	if len(certs) != 1 || certs[0].Serial != serial || certs[0].Worker != "api" || certs[0].Revoked {
		t.Errorf("certs list --worker api --json: %+v, want serial %s", certs, serial)
	}
	if out := cli("certs", "list"); !strings.Contains(out, serial) || !strings.Contains(out, "api.workers.crank.internal") {
		t.Errorf("certs list table:\n%s", out)
	}

	if out := cli("rotate", "--worker", "api"); !strings.Contains(out, "renewal forced for "+serial) {
		t.Errorf("rotate --worker api:\n%s", out)
	}
	decode(cli("certs", "list", "--worker", "api", "--json"), &certs)
	if len(certs) != 1 || certs[0].RenewNow.IsZero() {
		t.Errorf("after rotate, certs list: %+v", certs)
	}

	if _, errOut, code := runCmd(t, bin, "revoke", "--config", cfgPath, "--serial", "12g4"); code != 1 || !strings.Contains(errOut, `serial "12g4" is neither a decimal nor a hexadecimal`) {
		t.Errorf("revoke of a malformed serial: code %d, stderr %q", code, errOut)
	}
	// The serial as `openssl x509 -text` prints it: colon-separated hex.
	hexSerial := fmt.Sprintf("%x", leaf.SerialNumber.Bytes())
	var pairs []string
	for i := 0; i < len(hexSerial); i += 2 {
		pairs = append(pairs, hexSerial[i:min(i+2, len(hexSerial))])
	}
	if out := cli("revoke", "--serial", strings.Join(pairs, ":"), "--reason", "keyCompromise"); strings.TrimSpace(out) != "revoked "+serial {
		t.Errorf("revoke --serial in hex: %q, want revoked %s", out, serial)
	}
	cliWaitFor(t, "revoked serial in /crl", func() bool {
		resp, err := s.client(nil).Get(s.url + "/crl")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		der, _ := io.ReadAll(resp.Body)
		crl, err := x509.ParseRevocationList(der)
		return err == nil && crlHas(crl, leaf.SerialNumber)
	}, s.logs)
	decode(cli("certs", "list", "--worker", "api", "--json"), &certs)
	if len(certs) != 0 {
		t.Errorf("revoked certificate still listed as live: %+v", certs)
	}
	if _, errOut, code := runCmd(t, bin, "revoke", "--config", cfgPath, "--serial", serial); code != 1 || !strings.Contains(errOut, "(HTTP 409)") {
		t.Errorf("second revoke: code %d, stderr %q", code, errOut)
	}

	// A disabled worker gets no tokens through the API.
	if out := cli("worker", "disable", "api"); !strings.Contains(out, "disabled worker workers/api") {
		t.Errorf("worker disable: %q", out)
	}
	decode(cli("workers", "list", "--json"), &workers)
	if i := slices.IndexFunc(workers, func(w admin.Worker) bool { return w.Name == "api" }); i < 0 || !workers[i].Disabled {
		t.Errorf("after disable, workers list: %+v", workers)
	}
	out, errOut, code := runCmd(t, bin, "token", "create", "--config", cfgPath, "--worker", "api")
	if code != 1 || out != "" || !strings.HasPrefix(errOut, "crank-ca: ") || !strings.Contains(errOut, "disabled") || !strings.HasSuffix(errOut, "(HTTP 409)\n") {
		t.Errorf("token for a disabled worker: code %d, stdout %q, stderr %q", code, out, errOut)
	}

	if out := cli("worker", "enable", "api", "--provisioner", "workers"); !strings.Contains(out, "enabled worker workers/api") {
		t.Errorf("worker enable: %q", out)
	}
	time.Sleep(1100 * time.Millisecond) // a token's issued-at has second precision
	decode(cli("token", "create", "--worker", "api", "--json"), &tok)
	leaf2, chain2, key2 := s.cliEnroll(t, tok.KID, tok.HMACKey)
	if leaf2.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("second enrolment returned the revoked certificate")
	}

	// admin cert issues an operator certificate locally.
	out, errOut, code = runCmd(t, bin, "admin", "cert", "--config", cfgPath, "--name", "ops2")
	if code != 0 || !strings.Contains(out, "spiffe://crank.internal/admin/ops2") || !strings.Contains(errOut, "admin.spiffeIDs") {
		t.Errorf("admin cert: code %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	ops2Cert, ops2Key := filepath.Join(dir, "admin", "ops2.crt"), filepath.Join(dir, "admin", "ops2.key")
	if fi, err := os.Stat(ops2Key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("ops2.key: %v, mode %v", err, fi)
	}
	if c, err := tls.LoadX509KeyPair(ops2Cert, ops2Key); err != nil || len(c.Leaf.URIs) != 1 || c.Leaf.URIs[0].String() != "spiffe://crank.internal/admin/ops2" {
		t.Errorf("ops2 key pair: %v", err)
	}
	if _, errOut, code := runCmd(t, bin, "admin", "cert", "--config", cfgPath, "--name", "ops2"); code != 1 || !strings.Contains(errOut, "exists") {
		t.Errorf("admin cert over an existing one: code %d, stderr %q", code, errOut)
	}
	if _, _, code := runCmd(t, bin, "admin", "cert", "--config", cfgPath, "--name", "Bad_Name"); code != 2 {
		t.Errorf("admin cert --name Bad_Name: code %d, want 2", code)
	}
	// Not in admin.spiffeIDs: the server knows who it is and refuses.
	if _, errOut, code := runCmd(t, bin, "workers", "list", "--config", cfgPath, "--admin-cert", ops2Cert, "--admin-key", ops2Key); code != 1 || !strings.Contains(errOut, "not an admin (HTTP 403)") {
		t.Errorf("workers list as ops2: code %d, stderr %q", code, errOut)
	}

	// The API itself, with raw clients.
	get := func(hc *http.Client) (int, admin.Problem, error) {
		resp, err := hc.Get(s.url + admin.Prefix + "/workers")
		if err != nil {
			return 0, admin.Problem{}, err
		}
		defer resp.Body.Close()
		var p admin.Problem
		if resp.Header.Get("Content-Type") == "application/problem+json" {
			_ = json.NewDecoder(resp.Body).Decode(&p)
		}
		return resp.StatusCode, p, nil
	}
	if status, p, err := get(s.client(nil)); err != nil || status != http.StatusUnauthorized || p.Status != 401 || p.Type != admin.ProblemUnauthorized {
		t.Errorf("no client certificate: %d %+v %v, want a 401 problem", status, p, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key2)
	if err != nil {
		t.Fatal(err)
	}
	workerCert, err := tls.X509KeyPair(chain2, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	if status, p, err := get(s.client(&workerCert)); err != nil || status != http.StatusForbidden || p.Type != admin.ProblemForbidden {
		t.Errorf("worker certificate: %d %+v %v, want a 403 problem", status, p, err)
	}
	ca, err := pki.Load(filepath.Join(dir, "pki", "root.crt"), filepath.Join(dir, "pki", "intermediate.crt"), filepath.Join(dir, "pki", "intermediate.key"))
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := pki.IssueClientCert(ca, spiffeid.RequireFromString("spiffe://crank.internal/admin/operator"), time.Hour, time.Now().Add(-48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	expired, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if status, _, err := get(s.client(&expired)); err == nil && status >= 200 && status < 300 {
		t.Errorf("expired admin certificate: HTTP %d, want a refusal", status)
	} else {
		t.Logf("expired admin certificate: status %d, error %v", status, err)
	}

	// --local mints without asking the server.
	if out, errOut, code := runCmd(t, bin, "token", "create", "--config", cfgPath, "--worker", "api", "--local"); code != 0 || strings.TrimSpace(out) == "" || errOut != "" {
		t.Errorf("token create --local: code %d, stdout %q, stderr %q", code, out, errOut)
	}

	s.stop(t)

	// With the server down, token create mints locally and says so.
	out, errOut, code = runCmd(t, bin, "token", "create", "--config", cfgPath, "--worker", "api")
	if code != 0 || strings.Count(strings.TrimSpace(out), "\n") != 0 || strings.TrimSpace(out) == "" || errOut != "crank-ca: server not reachable; minted locally\n" {
		t.Errorf("token create, server down: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	if _, errOut, code := runCmd(t, bin, "workers", "list", "--config", cfgPath); code != 1 || !strings.Contains(errOut, "unreachable") {
		t.Errorf("workers list, server down: code %d, stderr %q", code, errOut)
	}
}

// cliWaitFor polls cond for up to 10 seconds.
func cliWaitFor(t *testing.T, what string, cond func() bool, logs *syncBuffer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s\nserve log:\n%s", what, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cliLineMatches reports whether some line of out matches re.
func cliLineMatches(out, re string) bool {
	return regexp.MustCompile(`(?m)` + re).MatchString(out)
}
