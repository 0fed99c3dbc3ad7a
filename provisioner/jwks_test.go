package provisioner_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/crank-platform/crank-ca/provisioner"
)

// fakeIssuer serves discovery and a JWKS whose keys the test can rotate.
type fakeIssuer struct {
	srv     *httptest.Server
	mu      sync.Mutex
	keys    []jose.JSONWebKey
	issuer  string // what discovery claims; default the server URL
	jwksURI string // default the server's /keys
	fetches atomic.Int64
}

func newFakeIssuer(t *testing.T) *fakeIssuer {
	t.Helper()
	f := &fakeIssuer{}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		iss, uri := f.issuer, f.jwksURI
		f.mu.Unlock()
		if iss == "" {
			iss = f.srv.URL
		}
		if uri == "" {
			uri = f.srv.URL + "/keys"
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": iss, "jwks_uri": uri})
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) {
		f.fetches.Add(1)
		f.mu.Lock()
		defer f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: f.keys})
	})
	f.srv = httptest.NewTLSServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeIssuer) setKeys(kids ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys = nil
	for _, kid := range kids {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		f.keys = append(f.keys, jose.JSONWebKey{Key: &k.PublicKey, KeyID: kid, Algorithm: "ES256", Use: "sig"})
	}
}

func TestJWKSDiscoveryRotationAndRateLimit(t *testing.T) {
	t.Parallel()
	f := newFakeIssuer(t)
	f.setKeys("k1")
	var clk struct {
		sync.Mutex
		t time.Time
	}
	clk.t = time.Unix(1_800_000_000, 0)
	now := func() time.Time { clk.Lock(); defer clk.Unlock(); return clk.t }
	advance := func(d time.Duration) { clk.Lock(); clk.t = clk.t.Add(d); clk.Unlock() }
	j, err := provisioner.NewJWKS(provisioner.JWKSConfig{Discovery: f.srv.URL, Client: f.srv.Client(), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Key(t.Context(), "k1"); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Key(t.Context(), "k1"); err != nil || f.fetches.Load() != 1 {
		t.Fatalf("cached key: %v, %d fetches", err, f.fetches.Load())
	}
	// The issuer rotates: an unknown kid refreshes once, then not again
	// for 30 s however many made-up kids arrive.
	f.setKeys("k2")
	advance(time.Minute)
	if _, err := j.Key(t.Context(), "k2"); err != nil || f.fetches.Load() != 2 {
		t.Fatalf("rotated key: %v, %d fetches", err, f.fetches.Load())
	}
	madeUp := func() {
		for range 20 {
			if _, err := j.Key(t.Context(), "made-up"); !errors.Is(err, provisioner.ErrAttestation) {
				t.Fatalf("unknown kid: %v", err)
			}
		}
	}
	madeUp()
	if n := f.fetches.Load(); n != 2 {
		t.Errorf("%d fetches after 20 unknown kids right after a refresh, want 2 (rate-limited)", n)
	}
	advance(31 * time.Second)
	madeUp()
	if n := f.fetches.Load(); n != 3 {
		t.Errorf("%d fetches after 20 unknown kids 31 s later, want 3 (one refresh)", n)
	}
	// After an hour the set is refreshed anyway.
	advance(2 * time.Hour)
	f.setKeys("k3")
	if _, err := j.Key(t.Context(), "k3"); err != nil {
		t.Fatal(err)
	}
}

func TestJWKSDiscoveryRefusals(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name           string
		issuer, jwksAt string
	}{
		{"discovery names another issuer", "https://evil.example", ""},
		{"jwks_uri not https", "", "http://127.0.0.1:1/keys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeIssuer(t)
			f.setKeys("k1")
			f.issuer, f.jwksURI = tc.issuer, tc.jwksAt
			j, err := provisioner.NewJWKS(provisioner.JWKSConfig{Discovery: f.srv.URL, Client: f.srv.Client()})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := j.Key(t.Context(), "k1"); !errors.Is(err, provisioner.ErrAttestation) {
				t.Fatalf("got %v, want a refusal", err)
			}
			if f.fetches.Load() != 0 {
				t.Error("keys were fetched from a location discovery should not have led to")
			}
		})
	}
}

func TestNewJWKSConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(file, []byte(`{"keys":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg provisioner.JWKSConfig
		ok  bool
	}{
		{provisioner.JWKSConfig{File: file}, true},
		{provisioner.JWKSConfig{URL: "https://x/keys"}, true},
		{provisioner.JWKSConfig{Discovery: "https://x"}, true},
		{provisioner.JWKSConfig{}, false},
		{provisioner.JWKSConfig{URL: "http://x/keys"}, false},
		{provisioner.JWKSConfig{URL: "https://x/keys", File: file}, false},
	} {
		if _, err := provisioner.NewJWKS(tc.cfg); (err == nil) != tc.ok {
			t.Errorf("%+v: %v, want ok=%v", tc.cfg, err, tc.ok)
		}
	}
}
