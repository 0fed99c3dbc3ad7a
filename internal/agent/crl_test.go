package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/internal/testpki"
)

// crlPKI is a throw-away crank-ca: root → intermediate → worker leaf, plus
// an impostor CA bearing the intermediate's name but not its key.
type crlPKI struct {
	root, inter, impostor *testpki.CA
	id                    *Identity
}

func newCRLPKI(t *testing.T) *crlPKI {
	t.Helper()
	root := testpki.New(t, "test root")
	p := &crlPKI{root: root, inter: root.Intermediate(t, "test intermediate"), impostor: testpki.New(t, "test intermediate")}
	leaf, key := p.inter.Leaf(t, "spiffe://crank.internal/worker/w1")
	id, err := newIdentity([]*x509.Certificate{leaf, p.inter.Cert}, key, []*x509.Certificate{p.root.Cert})
	if err != nil {
		t.Fatal(err)
	}
	p.id = id
	return p
}

// crl signs a CRL listing revoked with the named signer's key.
func (p *crlPKI) crl(t *testing.T, signer string, number int64, revoked ...int64) []byte {
	t.Helper()
	issuer := p.inter
	switch signer {
	case "root":
		issuer = p.root
	case "impostor":
		issuer = p.impostor
	}
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(number),
		ThisUpdate: time.Now().Add(-time.Minute),
		NextUpdate: time.Now().Add(time.Hour),
	}
	for _, s := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: big.NewInt(s), RevocationTime: time.Now()})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, issuer.Cert, issuer.Key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// serverCert is a TLS certificate for 127.0.0.1 issued by the named CA.
func (p *crlPKI) serverCert(t *testing.T, signer string) tls.Certificate {
	t.Helper()
	issuer := p.inter
	if signer == "impostor" {
		issuer = p.impostor
	}
	c, key := issuer.Issue(t, &x509.Certificate{
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return tls.Certificate{Certificate: [][]byte{c.Raw, issuer.Cert.Raw}, PrivateKey: key}
}

// crlServer is a stand-in for the CA's GET /crl whose answer a test swaps.
type crlServer struct {
	url  string
	body atomic.Pointer[[]byte] // nil: 404
}

func (s *crlServer) serve(b []byte) { s.body.Store(&b) }

func newCRLServer(t *testing.T, cert tls.Certificate) *crlServer {
	t.Helper()
	s := &crlServer{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /crl", func(w http.ResponseWriter, r *http.Request) {
		b := s.body.Load()
		if b == nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		_, _ = w.Write(*b)
	})
	s.url = testpki.Serve(t, mux, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	return s
}

// newCRLAgent is an agent that has "started" with p's identity, talking to
// caURL, without any ACME.
func newCRLAgent(t *testing.T, p *crlPKI, caURL string, interval time.Duration) *Agent {
	t.Helper()
	a, err := New(Config{CAURL: caURL, Worker: "w1", StateDir: t.TempDir(), CRLInterval: interval, HTTPTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.root = p.root.Cert
	a.mu.Unlock()
	a.publish(p.id)
	return a
}

func TestRefreshCRL(t *testing.T) {
	t.Parallel()
	p := newCRLPKI(t)
	// step is one CRL served, then one fetch.
	type step struct {
		crl     func(t *testing.T) []byte // nil: the server answers 404
		wantErr error                     // nil, ErrCRLRejected or ErrCAUnreachable
	}
	crl := func(signer string, number int64, revoked ...int64) func(*testing.T) []byte {
		return func(t *testing.T) []byte { return p.crl(t, signer, number, revoked...) }
	}
	tests := []struct {
		name        string
		steps       []step
		serverBy    string // who issued the CA's TLS certificate; "" = intermediate
		wantRevoked []int64
		wantKept    []int64 // serials that must not be revoked
		wantNumber  int64   // 0: no CRL held
	}{
		{
			name:        "revoked after a fetch",
			steps:       []step{{crl("inter", 1, 5, 7), nil}},
			wantRevoked: []int64{5, 7}, wantKept: []int64{6}, wantNumber: 1,
		},
		{
			name:     "signed by another key with the issuer's name",
			steps:    []step{{crl("impostor", 1, 5), ErrCRLRejected}},
			wantKept: []int64{5},
		},
		{
			name:        "another key keeps the previous CRL",
			steps:       []step{{crl("inter", 1, 5), nil}, {crl("impostor", 2, 6), ErrCRLRejected}},
			wantRevoked: []int64{5}, wantKept: []int64{6}, wantNumber: 1,
		},
		{
			name:     "signed by the root, not our issuer",
			steps:    []step{{crl("root", 1, 5), ErrCRLRejected}},
			wantKept: []int64{5},
		},
		{
			name:        "a newer CRL replaces the set",
			steps:       []step{{crl("inter", 1, 5), nil}, {crl("inter", 2, 6), nil}},
			wantRevoked: []int64{6}, wantKept: []int64{5}, wantNumber: 2,
		},
		{
			name:        "an older CRL is ignored",
			steps:       []step{{crl("inter", 3, 5), nil}, {crl("inter", 2, 6), ErrCRLRejected}},
			wantRevoked: []int64{5}, wantKept: []int64{6}, wantNumber: 3,
		},
		{
			name:        "the same number again changes nothing",
			steps:       []step{{crl("inter", 3, 5), nil}, {crl("inter", 3, 6), nil}},
			wantRevoked: []int64{5}, wantKept: []int64{6}, wantNumber: 3,
		},
		{
			name: "garbage keeps the previous CRL",
			steps: []step{{crl("inter", 1, 5), nil},
				{func(*testing.T) []byte { return []byte("not a CRL") }, ErrCRLRejected}},
			wantRevoked: []int64{5}, wantNumber: 1,
		},
		{
			name:        "CA without /crl keeps the previous CRL",
			steps:       []step{{crl("inter", 1, 5), nil}, {nil, ErrCAUnreachable}},
			wantRevoked: []int64{5}, wantNumber: 1,
		},
		{
			name:     "server not under the pinned root",
			serverBy: "impostor",
			steps:    []step{{crl("inter", 1, 5), ErrCAUnreachable}},
			wantKept: []int64{5},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newCRLServer(t, p.serverCert(t, tt.serverBy))
			a := newCRLAgent(t, p, srv.url, 0)
			client := crlClient(a.Current().Roots, a.cfg.HTTPTimeout)
			t.Cleanup(client.CloseIdleConnections)
			for i, s := range tt.steps {
				if s.crl == nil {
					srv.body.Store(nil)
				} else {
					srv.serve(s.crl(t))
				}
				err := a.refreshCRL(t.Context(), client)
				if (s.wantErr == nil) != (err == nil) || (s.wantErr != nil && !errors.Is(err, s.wantErr)) {
					t.Fatalf("step %d: err = %v, want %v", i+1, err, s.wantErr)
				}
			}
			for _, s := range tt.wantRevoked {
				if !a.Revoked(big.NewInt(s)) {
					t.Errorf("serial %d not revoked", s)
				}
			}
			for _, s := range tt.wantKept {
				if a.Revoked(big.NewInt(s)) {
					t.Errorf("serial %d revoked", s)
				}
			}
			switch got := a.CRLNumber(); {
			case tt.wantNumber == 0 && got != nil:
				t.Errorf("CRLNumber = %v, want none", got)
			case tt.wantNumber != 0 && (got == nil || got.Int64() != tt.wantNumber):
				t.Errorf("CRLNumber = %v, want %d", got, tt.wantNumber)
			}
		})
	}
}

func TestCRLNumberErrorIs(t *testing.T) {
	t.Parallel()
	var err error = &CRLNumberError{Have: big.NewInt(3), Got: big.NewInt(2)}
	if !errors.Is(err, ErrCRLRejected) {
		t.Errorf("%v is not ErrCRLRejected", err)
	}
	var ne *CRLNumberError
	if !errors.As(err, &ne) || ne.Have.Int64() != 3 || ne.Got.Int64() != 2 {
		t.Errorf("errors.As = %+v", ne)
	}
}

func TestRevokedNil(t *testing.T) {
	t.Parallel()
	a := &Agent{}
	if a.Revoked(big.NewInt(1)) || a.Revoked(nil) || a.CRLNumber() != nil {
		t.Error("an agent without a CRL revokes or has a number")
	}
}

// TestRunCRL runs the loop against a CA whose CRL changes, with handshakes
// (Revoked) racing the updates.
func TestRunCRL(t *testing.T) {
	t.Parallel()
	p := newCRLPKI(t)
	srv := newCRLServer(t, p.serverCert(t, ""))
	srv.serve(p.crl(t, "inter", 1, 5))
	a := newCRLAgent(t, p, srv.url, 10*time.Millisecond)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.RunCRL(ctx) }()
	readers := make(chan struct{})
	go func() {
		defer close(readers)
		for ctx.Err() == nil {
			a.Revoked(big.NewInt(5))
			a.CRLNumber()
		}
	}()

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("the first CRL", func() bool { return a.Revoked(big.NewInt(5)) })
	srv.serve(p.crl(t, "impostor", 9, 6)) // rejected on every tick
	time.Sleep(50 * time.Millisecond)
	if !a.Revoked(big.NewInt(5)) || a.Revoked(big.NewInt(6)) || a.CRLNumber().Int64() != 1 {
		t.Fatalf("a forged CRL changed the set: number %v", a.CRLNumber())
	}
	srv.serve(p.crl(t, "inter", 2, 6))
	waitFor("the second CRL", func() bool { return a.Revoked(big.NewInt(6)) && !a.Revoked(big.NewInt(5)) })

	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("RunCRL = %v, want context.Canceled", err)
	}
	<-readers
}

func TestRunCRLBeforeStart(t *testing.T) {
	t.Parallel()
	a, err := New(Config{CAURL: "https://127.0.0.1:1", Worker: "w1", StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.RunCRL(t.Context()); err == nil {
		t.Error("RunCRL without an identity succeeded")
	}
}
