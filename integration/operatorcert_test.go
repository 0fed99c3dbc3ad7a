package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/internal/pki"
)

// TestOperatorCertRenewal: an operator certificate with ten days left
// makes `serve` warn at start and `workers list` warn on stderr (its
// stdout stays clean JSON); `admin cert --renew` replaces certificate and
// key in place (key 0600), the running server accepts the new one at once,
// and the warnings stop. Refused renewals change nothing.
func TestOperatorCertRenewal(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	bin := binary(t, "crank-ca")
	dir := filepath.Join(t.TempDir(), "ca")
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	if out, errOut, code := runCmd(t, bin, "init", "--dir", dir, "--listen", addr); code != 0 {
		t.Fatalf("init: %d\n%s%s", code, out, errOut)
	}
	cfgPath := filepath.Join(dir, "crank-ca.json")
	certPath, keyPath := filepath.Join(dir, "admin", "operator.crt"), filepath.Join(dir, "admin", "operator.key")
	serial := func() string {
		t.Helper()
		c, _, err := pki.ReadClientCert(certPath)
		if err != nil {
			t.Fatal(err)
		}
		return c.SerialNumber.String()
	}
	initSerial := serial()

	// Ten days left: as if init had run 80 days ago.
	out, errOut, code := runCmd(t, bin, "admin", "cert", "--config", cfgPath, "--renew", "--lifetime", "240h")
	if code != 0 || !strings.Contains(out, "Renewed the certificate for spiffe://crank.internal/admin/operator") {
		t.Fatalf("admin cert --renew --lifetime 240h: %d\n%s%s", code, out, errOut)
	}
	shortSerial := serial()
	if shortSerial == initSerial {
		t.Fatal("--renew did not replace the certificate")
	}
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("operator.key after --renew: %v %v, want 0600", fi.Mode(), err)
	}

	s := startCLIServe(t, bin, cfgPath, dir, addr)
	waitLogAfter(t, s.logs, 0, "the operator certificate expires soon", 10*time.Second)
	stdout, stderr, code := runCmd(t, bin, "workers", "list", "--config", cfgPath, "--json")
	if code != 0 {
		t.Fatalf("workers list: %d\n%s", code, stderr)
	}
	if !strings.Contains(stderr, "warning: the operator certificate") || !strings.Contains(stderr, "expires in 9 days") || !strings.Contains(stderr, "--renew") {
		t.Errorf("workers list did not warn about the certificate:\n%s", stderr)
	}
	var workers []map[string]any
	if err := json.Unmarshal([]byte(stdout), &workers); err != nil {
		t.Errorf("workers list --json stdout is not clean JSON: %v\n%s", err, stdout)
	}

	// Refusals change nothing.
	keyBefore, _ := os.ReadFile(keyPath)
	for _, args := range [][]string{
		{"admin", "cert", "--config", cfgPath, "--renew", "--name", "other"},
		{"admin", "cert", "--config", cfgPath, "--renew", "--lifetime", "0s"},
		{"admin", "cert", "--config", cfgPath, "--admin-cert", certPath},
		{"admin", "cert", "--config", cfgPath, "--renew", "--admin-cert", filepath.Join(dir, "pki", "root.crt"), "--admin-key", keyPath},
	} {
		if _, errOut, code := runCmd(t, bin, args...); code == 0 {
			t.Errorf("%v succeeded", args)
		} else if !strings.Contains(errOut, "crank-ca: ") {
			t.Errorf("%v: no error message: %q", args, errOut)
		}
	}
	if keyAfter, _ := os.ReadFile(keyPath); !bytes.Equal(keyBefore, keyAfter) || serial() != shortSerial {
		t.Error("a refused renewal changed the operator certificate or key")
	}

	out, errOut, code = runCmd(t, bin, "admin", "cert", "--config", cfgPath, "--renew")
	if code != 0 {
		t.Fatalf("admin cert --renew: %d\n%s%s", code, out, errOut)
	}
	if serial() == shortSerial {
		t.Fatal("the second --renew did not replace the certificate")
	}
	// The running server takes the renewed certificate (same ID, same CA)
	// without a restart or reload, and nothing warns any more.
	if _, stderr, code := runCmd(t, bin, "workers", "list", "--config", cfgPath); code != 0 || strings.Contains(stderr, "warning") {
		t.Errorf("workers list with the renewed certificate: %d\n%s", code, stderr)
	}
	s.stop(t)
}
