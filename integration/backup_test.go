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
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/server"
	"github.com/crank-platform/crank-ca/internal/store"
)

// issuance is one certificate a backup test client obtained: when it asked
// and when it had the certificate.
type issuance struct {
	worker     string
	serial     string // decimal, as the admin API lists it
	start, end time.Time
}

// issuanceLog collects the issuances of concurrent clients.
type issuanceLog struct {
	mu  sync.Mutex
	all []issuance
}

func (l *issuanceLog) add(i issuance) {
	l.mu.Lock()
	l.all = append(l.all, i)
	l.mu.Unlock()
}

func (l *issuanceLog) snapshot() []issuance {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.all)
}

// perWorker counts, for every worker, the issuances for which keep is true.
func (l *issuanceLog) perWorker(keep func(issuance) bool) map[string]int {
	n := map[string]int{}
	for _, i := range l.snapshot() {
		if keep(i) {
			n[i.worker]++
		}
	}
	return n
}

// TestBackupRestore takes an online backup with `crank-ca backup` while 8
// lego clients issue worker certificates from a running `crank-ca serve`,
// lets them issue more, then restores the backup with `crank-ca restore`
// into a new CA directory (the first one's configuration, PKI, token key
// and operator certificate, no store) and serves that: every certificate
// issued before the backup started is listed by the admin API, none whose
// issuance began after the backup ended is, the restored CA issues again,
// and its store passes bbolt's consistency check. Along the way: a backup
// with a worker's certificate is refused with 403 and writes nothing,
// restore refuses garbage and a store a running server holds, and changes
// nothing either time.
func TestBackupRestore(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	bin := binary(t, "crank-ca")
	root := t.TempDir()
	dir := filepath.Join(root, "ca")
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	if out, errOut, code := runCmd(t, bin, "init", "--dir", dir, "--listen", addr); code != 0 {
		t.Fatalf("init: code %d\n%s%s", code, out, errOut)
	}
	cfgPath := filepath.Join(dir, "crank-ca.json")
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	srv := startCLIServe(t, bin, cfgPath, dir, addr)

	// Eight workers issue certificates back to back until told to stop.
	const clients, maxPerClient = 8, 40
	var log issuanceLog
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	var workerCert struct {
		once  sync.Once
		chain []byte
		key   *ecdsa.PrivateKey
	}
	for i := range clients {
		worker := fmt.Sprintf("backup%d", i)
		wg.Go(func() {
			tok, err := server.MintToken(cfg, server.TokenRequest{Worker: worker})
			if err != nil {
				errs <- err
				return
			}
			u := &legoUser{key: newKey(t)}
			lc := lego.NewConfig(u)
			lc.CADirURL = srv.url + "/acme/workers/directory"
			lc.HTTPClient = srv.client(nil)
			cl, err := lego.NewClient(lc)
			if err != nil {
				errs <- err
				return
			}
			if u.reg, err = cl.Registration.RegisterWithExternalAccountBinding(registration.RegisterEABOptions{
				TermsOfServiceAgreed: true, Kid: tok.KID, HmacEncoded: tok.HMACKeyString(),
			}); err != nil {
				errs <- fmt.Errorf("%s: register: %w", worker, err)
				return
			}
			for range maxPerClient {
				select {
				case <-stop:
					return
				default:
				}
				key := newKey(t)
				start := time.Now()
				res, err := cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{
					CSR: csrFor(t, key, "", []string{worker + ".workers.crank.internal"}, nil), PrivateKey: key, Bundle: true,
				})
				if err != nil {
					errs <- fmt.Errorf("%s: obtain: %w", worker, err)
					return
				}
				leaf := parseChain(t, res.Certificate)[0]
				log.add(issuance{worker: worker, serial: leaf.SerialNumber.String(), start: start, end: time.Now()})
				workerCert.once.Do(func() { workerCert.chain, workerCert.key = res.Certificate, key })
			}
		})
	}
	failed := func() {
		t.Helper()
		select {
		case err := <-errs:
			close(stop)
			wg.Wait()
			t.Fatalf("client: %v\n%s", err, srv.logs)
		default:
		}
	}
	// waitEach waits until every worker has n issuances that keep accepts.
	waitEach := func(what string, n int, keep func(issuance) bool) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			failed()
			counts := log.perWorker(keep)
			done := len(counts) == clients
			for _, c := range counts {
				done = done && c >= n
			}
			if done {
				return
			}
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("%s: issuances per worker %v", what, counts)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitEach("before the backup", 2, func(issuance) bool { return true })

	backupPath := filepath.Join(root, "backups", "crank-ca.db")
	if err := os.MkdirAll(filepath.Dir(backupPath), 0o700); err != nil {
		t.Fatal(err)
	}
	backupStart := time.Now()
	out, errOut, code := runCmd(t, bin, "backup", "--config", cfgPath, "--out", backupPath)
	backupEnd := time.Now()
	if code != 0 || !strings.Contains(out, "bbolt consistency check passed") {
		t.Fatalf("backup: code %d\n%s%s\n%s", code, out, errOut, srv.logs)
	}
	t.Logf("backup: %s in %s", strings.TrimSpace(out), backupEnd.Sub(backupStart).Round(time.Millisecond))
	if strings.Contains(srv.logs.String(), "write timeout stays") {
		t.Errorf("serve could not lift the write deadline for the backup:\n%s", srv.logs)
	}
	waitEach("after the backup", 2, func(i issuance) bool { return i.start.After(backupEnd) })
	close(stop)
	wg.Wait()
	failed()

	all := log.snapshot()
	var before, during, after []issuance
	for _, i := range all {
		switch {
		case i.end.Before(backupStart):
			before = append(before, i)
		case i.start.After(backupEnd):
			after = append(after, i)
		default:
			during = append(during, i)
		}
	}
	t.Logf("%d issuances: %d before the backup started, %d overlapping it, %d begun after it ended", len(all), len(before), len(during), len(after))

	if fi, err := os.Stat(backupPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v, mode %v, want 0600", err, fi.Mode())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(backupPath), ".*")); len(left) > 0 {
		t.Errorf("temporary files left beside the backup: %v", left)
	}

	// A worker's certificate is not an operator's: 403, and no file.
	workerPEM := filepath.Join(root, "worker.crt")
	workerKey := filepath.Join(root, "worker.key")
	keyDER, err := x509.MarshalECPrivateKey(workerCert.key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(workerPEM, workerCert.chain, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(workerKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	refused := filepath.Join(root, "backups", "refused.db")
	_, errOut, code = runCmd(t, bin, "backup", "--config", cfgPath, "--out", refused, "--admin-cert", workerPEM, "--admin-key", workerKey)
	if code != 1 || !strings.Contains(errOut, "HTTP 403") {
		t.Errorf("backup with a worker certificate: code %d, stderr %q; want 1 and HTTP 403", code, errOut)
	}
	if entries, _ := os.ReadDir(filepath.Dir(refused)); len(entries) != 1 {
		t.Errorf("the refused backup left files: %v", entries)
	}

	// restore refuses the store the running server holds, and changes nothing.
	_, errOut, code = runCmd(t, bin, "restore", "--config", cfgPath, "--from", backupPath)
	if code != 1 || !strings.Contains(errOut, "in use") {
		t.Errorf("restore over the running server's store: code %d, stderr %q", code, errOut)
	}
	if aside, _ := filepath.Glob(filepath.Join(dir, "db", "*.replaced-*")); len(aside) > 0 {
		t.Errorf("restore over a running server moved its store: %v", aside)
	}

	// A new CA directory: everything but the store.
	newDir := filepath.Join(root, "restored")
	newAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	for _, sub := range []string{"pki", "secrets", "admin"} {
		copyDir(t, filepath.Join(dir, sub), filepath.Join(newDir, sub))
	}
	newCfg := filepath.Join(newDir, "crank-ca.json")
	writeWithListen(t, cfgPath, newCfg, newAddr)
	newDB := filepath.Join(newDir, "db", "crank-ca.db")

	garbage := filepath.Join(root, "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("this is not a bbolt file\n", 4096)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = runCmd(t, bin, "restore", "--config", newCfg, "--from", garbage)
	if code != 1 || !strings.Contains(errOut, "not a valid crank-ca bbolt store") {
		t.Errorf("restore of garbage: code %d, stderr %q", code, errOut)
	}
	if entries, _ := os.ReadDir(filepath.Dir(newDB)); len(entries) != 0 {
		t.Errorf("restore of garbage left files: %v", entries)
	}

	// The restored CA must number its CRLs above what workers may hold.
	out, errOut, code = runCmd(t, bin, "restore", "--config", newCfg, "--from", backupPath, "--crl-number", "1000")
	if code != 0 || !strings.Contains(out, "restored "+backupPath+" into "+newDB) {
		t.Fatalf("restore: code %d\n%s%s", code, out, errOut)
	}
	if fi, err := os.Stat(newDB); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("restored store: %v, mode %v", err, fi.Mode())
	}
	srv.stop(t)

	restored := startCLIServe(t, bin, newCfg, newDir, newAddr)
	out, errOut, code = runCmd(t, bin, "certs", "list", "--config", newCfg, "--all", "--json")
	if code != 0 {
		t.Fatalf("certs list on the restored CA: code %d\n%s", code, errOut)
	}
	var listed []admin.Certificate
	if err := json.Unmarshal([]byte(out), &listed); err != nil {
		t.Fatalf("certs list --json: %v\n%s", err, out)
	}
	known := map[string]bool{}
	for _, c := range listed {
		known[c.Serial] = true
	}
	for _, i := range before {
		if !known[i.serial] {
			t.Errorf("certificate %s of %s, issued before the backup started, is not in the restored CA", i.serial, i.worker)
		}
	}
	for _, i := range after {
		if known[i.serial] {
			t.Errorf("certificate %s of %s, whose issuance began after the backup ended, is in the restored CA", i.serial, i.worker)
		}
	}

	// Its first CRL follows the number given to restore.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var number string
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, restored.url+"/crl", nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := restored.client(nil).Do(req); err == nil {
			der, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if crl, err := x509.ParseRevocationList(der); err == nil {
				number = crl.Number.String()
			}
		}
		if number == "1001" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CRL number %q from the restored CA, want 1001\n%s", number, restored.logs)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The restored CA issues (cliEnroll enrols worker api).
	restoredCfg, err := config.Load(newCfg)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := server.MintToken(restoredCfg, server.TokenRequest{Worker: "api"})
	if err != nil {
		t.Fatal(err)
	}
	leaf, _, _ := restored.cliEnroll(t, tok.KID, tok.HMACKeyString())
	if len(leaf.URIs) != 1 {
		t.Errorf("certificate from the restored CA: URIs %v", leaf.URIs)
	}
	restored.stop(t)

	rep, err := store.CheckFile(newDB, time.Second)
	if err != nil {
		t.Fatalf("the restored store after serving: %v", err)
	}
	if rep.Certificates < len(before) {
		t.Errorf("restored store holds %d certificates, want at least %d", rep.Certificates, len(before))
	}
}

// TestBackupPostgreSQL: on PostgreSQL the backup endpoint answers 409 with
// a problem pointing to pg_dump, and restore refuses to run.
func TestBackupPostgreSQL(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	dsn := startPostgres(t, "crank_ca_backup")
	c := newCA(t, func(cfg *config.Config) {
		cfg.Storage = config.Storage{Type: config.StoragePostgreSQL, DSN: dsn}
	})
	c.start()
	var p admin.Problem
	status := c.adminRaw(t, http.MethodGet, "/backup", &p)
	if status != http.StatusConflict || p.Type != admin.ProblemConflict || !strings.Contains(p.Detail, "pg_dump") {
		t.Errorf("GET /admin/v1/backup on PostgreSQL: %d %+v; want 409 naming pg_dump", status, p)
	}
	c.stop()

	// restore reads the configuration only; it refuses before touching
	// anything.
	bin := binary(t, "crank-ca")
	b, err := os.ReadFile(filepath.Join(c.dir, "crank-ca.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m["storage"] = map[string]any{"type": "postgresql", "dsn": dsn}
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(c.dir, "pg.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(t.TempDir(), "b.db")
	if err := os.WriteFile(backup, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := runCmd(t, bin, "restore", "--config", cfgPath, "--from", backup); code != 1 || !strings.Contains(errOut, "pg_restore") {
		t.Errorf("restore on PostgreSQL: code %d, stderr %q", code, errOut)
	}
}

// adminRaw calls the admin API with the operator certificate and decodes
// the answer, problem or not, into out. It returns the status.
func (c *ca) adminRaw(t *testing.T, method, path string, out any) int {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(c.dir, "admin", "operator.crt"), filepath.Join(c.dir, "admin", "operator.key"))
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	req, err := http.NewRequestWithContext(t.Context(), method, c.url+admin.Prefix+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("admin %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("admin %s %s: %d, undecodable answer: %v", method, path, resp.StatusCode, err)
	}
	return resp.StatusCode
}

// copyDir copies the regular files of src into dst (created 0700), keeping
// their modes.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

// writeWithListen copies the configuration at src to dst with another
// listen address.
func writeWithListen(t *testing.T, src, dst, listen string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m["listen"] = listen
	if b, err = json.MarshalIndent(m, "", "  "); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
