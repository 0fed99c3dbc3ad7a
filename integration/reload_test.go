package integration

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/server"
)

// editConfig rewrites the JSON configuration file at path through edit,
// which gets the decoded document.
func editConfig(t *testing.T, path string, edit func(doc map[string]any)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	edit(doc)
	if b, err = json.MarshalIndent(doc, "", "  "); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// provisionerDoc returns the provisioner named name of a decoded
// configuration.
func provisionerDoc(t *testing.T, doc map[string]any, name string) map[string]any {
	t.Helper()
	for _, p := range doc["provisioners"].([]any) {
		if m := p.(map[string]any); m["name"] == name {
			return m
		}
	}
	t.Fatalf("no provisioner %q", name)
	return nil
}

// waitLogAfter waits until logs holds want after offset from, and returns the
// end of the first match.
func waitLogAfter(t *testing.T, logs *syncBuffer, from int, want string, within time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		s := logs.String()
		if i := strings.Index(s[from:], want); i >= 0 {
			return from + i + len(want)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log within %s\n%s", want, within, s[from:])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// issuingClient is one lego client issuing certificates in a loop for its
// worker, recording every outcome.
type issuingClient struct {
	cl     *lego.Client
	name   string
	issued atomic.Int64
	failed atomic.Int64
	mu     sync.Mutex
	errs   []string
	// last is the latest certificate, started is when its issuance began.
	last    *certificate.Resource
	started time.Time
}

func (l *issuingClient) fail(err error) {
	l.failed.Add(1)
	l.mu.Lock()
	if len(l.errs) < 5 {
		l.errs = append(l.errs, err.Error())
	}
	l.mu.Unlock()
}

// TestReloadUnderLoad drives `crank-ca serve` (the binary, so the SIGHUP
// path is the real one) with eight lego clients issuing continuously and four more clients
// asking for nonces, and
// sends SIGHUP twice: with a valid changed file (a new provisioner appears
// in its directory, the workers' default lifetime changes in the next
// certificate, a changed listen address is reported as needing a
// restart), then with an invalid file (every problem is logged, the
// running configuration stays). No request fails.
func TestReloadUnderLoad(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binaries under load")
	}
	bin := binary(t, "crank-ca")
	dir := filepath.Join(t.TempDir(), "ca")
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	if out, errOut, code := runCmd(t, bin, "init", "--dir", dir, "--listen", addr); code != 0 {
		t.Fatalf("init: %d\n%s%s", code, out, errOut)
	}
	cfgPath := filepath.Join(dir, "crank-ca.json")
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	s := startCLIServe(t, bin, cfgPath, dir, addr)
	hc := s.client(nil)

	if resp, err := hc.Get(s.url + "/acme/extra/directory"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("extra directory before the reload: %v %v", resp, err)
	}

	const clients, maxPerClient = 8, 60
	load := make([]*issuingClient, clients)
	for i := range load {
		name := fmt.Sprintf("load%d", i)
		tok, err := server.MintToken(cfg, server.TokenRequest{Worker: name})
		if err != nil {
			t.Fatal(err)
		}
		u := &legoUser{key: newKey(t)}
		lc := lego.NewConfig(u)
		lc.CADirURL = s.url + "/acme/workers/directory"
		lc.HTTPClient = hc
		cl, err := lego.NewClient(lc)
		if err != nil {
			t.Fatal(err)
		}
		if u.reg, err = cl.Registration.RegisterWithExternalAccountBinding(registration.RegisterEABOptions{TermsOfServiceAgreed: true, Kid: tok.KID, HmacEncoded: tok.HMACKeyString()}); err != nil {
			t.Fatalf("register %s: %v\n%s", name, err, s.logs)
		}
		load[i] = &issuingClient{cl: cl, name: name}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, l := range load {
		wg.Go(func() {
			for range maxPerClient {
				select {
				case <-stop:
					return
				default:
				}
				key := newKey(t)
				start := time.Now()
				res, err := l.cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: csrFor(t, key, "", []string{l.name + ".workers.crank.internal"}, nil), PrivateKey: key})
				if err != nil {
					l.fail(err)
					continue
				}
				l.mu.Lock()
				l.last, l.started = res, start
				l.mu.Unlock()
				l.issued.Add(1)
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	// Plain requests besides, on keep-alive connections: directory and
	// new-nonce, as fast as they come back.
	var polls, pollFailed, dials atomic.Int64
	// dials counts the connections the pollers open: after the first few,
	// every request reuses one, across both reloads.
	trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
		if !ci.Reused {
			dials.Add(1)
		}
	}}
	pc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.roots, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 4}}
	for range 4 {
		wg.Go(func() {
			for range 20000 {
				select {
				case <-stop:
					return
				default:
				}
				req, err := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), http.MethodHead, s.url+"/acme/workers/new-nonce", nil)
				if err != nil {
					t.Error(err)
					return
				}
				resp, err := pc.Do(req)
				polls.Add(1)
				if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Replay-Nonce") == "" {
					pollFailed.Add(1)
				}
				if err == nil {
					resp.Body.Close()
				}
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	issued := func() int64 {
		var n int64
		for _, l := range load {
			n += l.issued.Load()
		}
		return n
	}
	// lifetime is that of a certificate whose issuance started after since
	// (one started before may finish on the configuration it began with).
	lifetime := func(since time.Time) time.Duration {
		t.Helper()
		for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			for _, l := range load {
				l.mu.Lock()
				res := l.last
				if l.started.Before(since) {
					res = nil
				}
				l.mu.Unlock()
				if res != nil {
					leaf := parseChain(t, res.Certificate)[0]
					return leaf.NotAfter.Sub(leaf.NotBefore)
				}
			}
		}
		t.Fatalf("no certificate issued within 90s\n%s", s.logs)
		return 0
	}
	for deadline := time.Now().Add(30 * time.Second); issued() < 8; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the load never got going\n%s", s.logs)
		}
	}
	if d := lifetime(time.Time{}); d < 23*time.Hour {
		t.Fatalf("lifetime before the reload: %s", d)
	}

	// A valid change: a new provisioner, a shorter default lifetime, and a
	// listen address that needs a restart.
	editConfig(t, cfgPath, func(doc map[string]any) {
		provisionerDoc(t, doc, "workers")["claims"].(map[string]any)["defaultCertDuration"] = "2h"
		extra := map[string]any{}
		for k, v := range provisionerDoc(t, doc, "adhoc") {
			extra[k] = v
		}
		extra["name"] = "extra"
		extra["policy"] = map[string]any{"allowedDNSSuffixes": []any{"extra.test"}}
		doc["provisioners"] = append(doc["provisioners"].([]any), extra)
		doc["listen"] = "127.0.0.1:1"
	})
	dialsBefore := dials.Load()
	mark := len(s.logs.String())
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLogAfter(t, s.logs, mark, "configuration reloaded", 30*time.Second)
	reloaded := time.Now()
	logs := s.logs.String()[mark:]
	for _, want := range []string{`changed=provisioners`, `needs a restart`, `setting=listen`} {
		if !strings.Contains(logs, want) {
			t.Errorf("reload log lacks %q:\n%s", want, logs)
		}
	}
	resp, err := hc.Get(s.url + "/acme/extra/directory")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("extra directory after the reload: %v %v\n%s", resp, err, logs)
	}
	resp.Body.Close()
	if d := lifetime(reloaded); d < 2*time.Hour-time.Minute || d > 2*time.Hour+10*time.Minute {
		t.Errorf("lifetime after the reload: %s, want about 2h", d)
	}

	// An invalid file: two problems, both logged; nothing changes.
	editConfig(t, cfgPath, func(doc map[string]any) {
		provisionerDoc(t, doc, "workers")["claims"].(map[string]any)["defaultCertDuration"] = "9000h"
		doc["trustDomain"] = "Not A Domain"
	})
	mark = len(s.logs.String())
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLogAfter(t, s.logs, mark, "configuration reload refused", 30*time.Second)
	waitLogAfter(t, s.logs, mark, "defaultCertDuration", 5*time.Second)
	waitLogAfter(t, s.logs, mark, "trustDomain", 5*time.Second)
	if d := lifetime(time.Now()); d < 2*time.Hour-time.Minute || d > 2*time.Hour+10*time.Minute {
		t.Errorf("lifetime after the refused reload: %s, want the running 2h", d)
	}
	if resp, err := hc.Get(s.url + "/acme/extra/directory"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("extra directory after the refused reload: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	close(stop)
	wg.Wait()
	if d := dials.Load() - dialsBefore; d != 0 {
		t.Errorf("the pollers opened %d new connections across the reloads: one was dropped", d)
	}
	var failed int64
	var errs []string
	for _, l := range load {
		failed += l.failed.Load()
		errs = append(errs, l.errs...)
	}
	t.Logf("%d certificates issued by %d clients across two reloads, %d failed; %d new-nonce requests, %d failed", issued(), clients, failed, polls.Load(), pollFailed.Load())
	if pollFailed.Load() > 0 {
		t.Errorf("%d failed new-nonce requests", pollFailed.Load())
	}
	if failed > 0 {
		t.Errorf("%d failed issuances: %v", failed, errors.Join(stringErrs(errs)...))
	}
	s.stop(t)
}

func stringErrs(ss []string) []error {
	out := make([]error, len(ss))
	for i, s := range ss {
		out[i] = errors.New(s)
	}
	return out
}
