package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/internal/testpki"
)

func TestNewJoinOptions(t *testing.T) {
	t.Parallel()
	base := Config{CAURL: "https://ca:9090", StateDir: t.TempDir()}
	for _, tc := range []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"jwt file without a worker name", func(c *Config) { c.JWTFile = "/run/token" }, ""},
		{"jwt file with a worker name", func(c *Config) { c.JWTFile, c.Worker = "/run/token", "hello" }, ""},
		{"jwt file with an invalid worker name", func(c *Config) { c.JWTFile, c.Worker = "/run/token", "Not_Valid" }, "not a valid worker name"},
		{"no worker name without a jwt file", func(c *Config) {}, "not a valid worker name"},
		{"token and jwt file", func(c *Config) { c.JWTFile, c.Worker, c.Token = "/run/token", "hello", "ct1.x.y.z" }, "--token and --jwt-file are mutually exclusive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := base
			tc.mutate(&cfg)
			_, err := New(cfg)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("New: %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestReadJWTFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if tok, err := readJWTFile(write("ok", "  a.b.c\n")); err != nil || tok != "a.b.c" {
		t.Errorf("readJWTFile = %q, %v", tok, err)
	}
	for name, path := range map[string]string{
		"missing": filepath.Join(dir, "nope"),
		"empty":   write("empty", " \n"),
		"huge":    write("huge", strings.Repeat("a", maxJWTSize+1)),
	} {
		if _, err := readJWTFile(path); !errors.Is(err, ErrJWTFile) {
			t.Errorf("%s: %v, want ErrJWTFile", name, err)
		}
	}
}

func TestParseAttestResponse(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	hdr := func(kv ...string) http.Header {
		h := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	good := `{"kid":"ct1.k","hmacKey":"jgFw4orRGW9dExRhnTWhBaAM2lFmuv_X7OZRDJVBJik","expiresAt":"2026-11-30T08:05:00Z","directory":"https://ca/acme/workers/directory","worker":"ns/team-a/sa/billing","spiffeID":"spiffe://crank.internal/ns/team-a/sa/billing","dnsNames":["billing.team-a.workers.crank.internal"]}`
	att, err := parseAttestResponse(201, hdr("Content-Type", "application/json"), []byte(good), now)
	if err != nil || att.KID != "ct1.k" || att.Worker != "ns/team-a/sa/billing" || len(att.DNSNames) != 1 || !att.ExpiresAt.Equal(now.Add(5*time.Minute)) {
		t.Fatalf("201: %+v, %v", att, err)
	}

	for _, tc := range []struct {
		name      string
		status    int
		h         http.Header
		body      string
		refused   bool   // an *AttestationError
		check     string // its check
		retry     time.Duration
		inMessage string
	}{
		{name: "refused token", status: 401, h: hdr("Content-Type", "application/problem+json"),
			body:    `{"type":"urn:ietf:params:acme:error:unauthorized","detail":"attestation refused: audience: the token is for \"x\"","status":401,"check":"audience"}`,
			refused: true, check: "audience", inMessage: "check audience): attestation refused: audience"},
		{name: "malformed", status: 400, h: hdr("Content-Type", "application/problem+json"), body: `{"type":"urn:ietf:params:acme:error:malformed","detail":"the body must be {\"jwt\": \"<token>\"} and nothing else"}`, refused: true, inMessage: "HTTP 400"},
		{name: "no problem document", status: 404, h: hdr("Content-Type", "text/plain"), body: "404 page not found", refused: true, inMessage: "Not Found: 404 page not found"},
		{name: "rate limited", status: 429, h: hdr("Content-Type", "application/problem+json", "Retry-After", "17"), body: `{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many attestations"}`, retry: 17 * time.Second, inMessage: "rate limiting"},
		{name: "store down", status: 503, h: hdr("Content-Type", "application/problem+json", "Retry-After", now.Add(5*time.Second).Format(http.TimeFormat)), body: `{"detail":"retry later"}`, retry: 5 * time.Second, inMessage: "the CA is unreachable"},
		{name: "201 without names", status: 201, h: hdr("Content-Type", "application/json"), body: `{"kid":"k","hmacKey":"aGk"}`, inMessage: "lack"},
		{name: "201 not JSON", status: 201, h: hdr("Content-Type", "text/html"), body: `<html>`, inMessage: "Content-Type"},
		{name: "201 padded key", status: 201, h: hdr("Content-Type", "application/json"), body: `{"kid":"k","hmacKey":"aGk=","dnsNames":["a"]}`, inMessage: "base64url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseAttestResponse(tc.status, tc.h, []byte(tc.body), now)
			if err == nil || !strings.Contains(err.Error(), tc.inMessage) {
				t.Fatalf("err %v, want one mentioning %q", err, tc.inMessage)
			}
			var ae *AttestationError
			if got := errors.As(err, &ae); got != tc.refused || got != errors.Is(err, ErrAttestationRefused) {
				t.Fatalf("refusal %v (%v), want %v", got, err, tc.refused)
			}
			if tc.refused && (ae.Check != tc.check || ae.Status != tc.status) {
				t.Errorf("check %q status %d", ae.Check, ae.Status)
			}
			var ra *retryAfterError
			if tc.retry > 0 && (!errors.As(err, &ra) || ra.after != tc.retry) {
				t.Errorf("retry after: %v, want %v", err, tc.retry)
			}
		})
	}
}

// TestAttestRequest checks the request the agent sends (over TLS trusting
// only the pinned root) and what it does with the answer.
func TestAttestRequest(t *testing.T) {
	t.Parallel()
	var srvURL string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/redirect/attest/workers":
			http.Redirect(w, r, srvURL+"/elsewhere", http.StatusTemporaryRedirect)
			return
		case "/attest/workers":
		default:
			http.Error(w, "wrong path "+r.URL.Path, http.StatusTeapot)
			return
		}
		b, _ := io.ReadAll(r.Body)
		var body map[string]any
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || json.Unmarshal(b, &body) != nil || len(body) != 1 || body["jwt"] != "a.b.c" {
			http.Error(w, "bad request "+string(b), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"kid":"k","hmacKey":"aGk","expiresAt":"2030-01-01T00:00:00Z","worker":"hello","spiffeID":"spiffe://crank.internal/worker/hello","dnsNames":["hello.workers.crank.internal"]}`)
	}))
	t.Cleanup(srv.Close)
	srvURL = srv.URL
	jwtFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(jwtFile, []byte("a.b.c\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	agentFor := func(t *testing.T, caURL, worker string) *Agent {
		t.Helper()
		a, err := New(Config{CAURL: caURL, JWTFile: jwtFile, Worker: worker, StateDir: t.TempDir(), HTTPTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		a.root = srv.Certificate()
		return a
	}

	att, err := agentFor(t, srv.URL, "").attest(t.Context())
	if err != nil || att.Worker != "hello" || att.HMACKey != "aGk" {
		t.Fatalf("attest: %+v, %v", att, err)
	}
	if _, err := agentFor(t, srv.URL, "api").attest(t.Context()); err == nil || !strings.Contains(err.Error(), `attests worker "hello", not --worker "api"`) {
		t.Errorf("another worker's JWT: %v", err)
	}
	if _, err := agentFor(t, srv.URL+"/redirect", "").attest(t.Context()); !errors.Is(err, ErrAttestationRefused) || !strings.Contains(err.Error(), "307") {
		t.Errorf("redirect: %v, want it refused, not followed", err)
	}
	other := agentFor(t, srv.URL, "")
	other.root = testpki.New(t, "another root").Cert
	if _, err := other.attest(t.Context()); !errors.Is(err, ErrCAUnreachable) {
		t.Errorf("a server that does not chain to the pinned root: %v", err)
	}
}

// TestAccountStateReplacedAtomically: account.json carries the key, and it
// alone decides the account, so a re-attestation cut short between the two
// writes leaves the previous account whole.
func TestAccountStateReplacedAtomically(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := &Agent{cfg: Config{StateDir: dir}}
	newAcc := func(uri string) *account {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return &account{key: k, URI: uri, CAURL: "https://ca", Provisioner: "workers", Attested: true, Worker: "hello", DNSNames: []string{"hello.workers.crank.internal"}}
	}
	old := newAcc("https://ca/acct/1")
	if err := a.saveAccount(old); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{fileAccount, fileAccountKey} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, fi, err)
		}
	}
	// A crash after account.key of the next account was written.
	next := newAcc("https://ca/acct/2")
	keyPEM, err := marshalKey(next.key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, fileAccountKey), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.account == nil || st.account.URI != old.URI || !st.account.key.Equal(old.key) || !st.account.Attested || st.account.DNSNames[0] != "hello.workers.crank.internal" {
		t.Fatalf("loaded %+v", st.account)
	}
	if err := a.saveAccount(next); err != nil {
		t.Fatal(err)
	}
	if st, err = loadState(dir); err != nil || st.account.URI != next.URI || !st.account.key.Equal(next.key) {
		t.Fatalf("after the replacement: %+v, %v", st.account, err)
	}
	// An account.json of an older agent (no key in it) still loads with
	// account.key.
	b, _ := json.Marshal(map[string]string{"uri": "https://ca/acct/3", "caURL": "https://ca", "provisioner": "workers"})
	if err := os.WriteFile(filepath.Join(dir, fileAccount), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if st, err = loadState(dir); err != nil || st.account.URI != "https://ca/acct/3" || !st.account.key.Equal(next.key) {
		t.Fatalf("older state: %+v, %v", st.account, err)
	}
}
