package pki

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeClock is a manually advanced clock, safe for concurrent use.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newTestServerCerts returns ServerCerts for localhost/127.0.0.1 on a fresh
// CA, driven by a fake clock.
func newTestServerCerts(t *testing.T) (*ServerCerts, *CA, *fakeClock) {
	t.Helper()
	ca, _ := newTestCA(t)
	clock := newFakeClock()
	s, err := NewServerCerts(ServerCertsConfig{
		CA:       ca,
		DNSNames: []string{"localhost", "ca.internal"},
		IPs:      []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
		Now:      clock.Now,
	})
	if err != nil {
		t.Fatalf("NewServerCerts: %v", err)
	}
	return s, ca, clock
}

func serial(t *testing.T, c *tls.Certificate) string {
	t.Helper()
	if c == nil || c.Leaf == nil {
		t.Fatal("certificate or leaf is nil")
	}
	return c.Leaf.SerialNumber.String()
}

func mustGet(t *testing.T, s *ServerCerts) *tls.Certificate {
	t.Helper()
	c, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: "localhost"})
	if err != nil {
		t.Fatalf("GetCertificate: %v", err)
	}
	return c
}

func TestServerCertsIssuedCertificate(t *testing.T) {
	t.Parallel()
	s, ca, clock := newTestServerCerts(t)
	c := mustGet(t, s)

	if len(c.Certificate) != 2 {
		t.Fatalf("chain has %d certificates, want leaf+intermediate", len(c.Certificate))
	}
	if !slices.Equal(c.Certificate[1], ca.Intermediate.Raw) {
		t.Error("second chain element is not the intermediate")
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(leaf.Raw, c.Leaf.Raw) {
		t.Error("Leaf does not match Certificate[0]")
	}
	if !publicKeysEqual(leaf.PublicKey, c.PrivateKey.(crypto.Signer).Public()) {
		t.Error("private key does not match leaf")
	}

	roots := x509.NewCertPool()
	roots.AddCert(ca.Root)
	inters := x509.NewCertPool()
	inters.AddCert(ca.Intermediate)
	for _, name := range []string{"localhost", "ca.internal", "127.0.0.1", "::1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{
			DNSName:       name,
			Roots:         roots,
			Intermediates: inters,
			CurrentTime:   clock.Now(),
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}

	type profile struct {
		DNSNames    []string
		IPs         []string
		ExtKeyUsage []x509.ExtKeyUsage
		KeyUsage    x509.KeyUsage
		IsCA        bool
		Lifetime    time.Duration
	}
	var ips []string
	for _, ip := range leaf.IPAddresses {
		ips = append(ips, ip.String())
	}
	got := profile{
		DNSNames: leaf.DNSNames, IPs: ips, ExtKeyUsage: leaf.ExtKeyUsage, KeyUsage: leaf.KeyUsage,
		IsCA: leaf.IsCA, Lifetime: leaf.NotAfter.Sub(clock.Now().Truncate(time.Second)), // X.509 times have 1s resolution
	}
	want := profile{
		DNSNames:    []string{"localhost", "ca.internal"},
		IPs:         []string{"127.0.0.1", "::1"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		Lifetime:    24 * time.Hour,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("leaf profile (-want +got):\n%s", diff)
	}
	if s.Current() != c {
		t.Error("Current differs from GetCertificate result")
	}
}

func TestNewServerCertsConfigErrors(t *testing.T) {
	t.Parallel()
	ca, _ := newTestCA(t)
	names := []string{"localhost"}
	tests := []struct {
		name string
		cfg  ServerCertsConfig
	}{
		{"no CA", ServerCertsConfig{DNSNames: names}},
		{"CA without key", ServerCertsConfig{CA: &CA{Root: ca.Root, Intermediate: ca.Intermediate}, DNSNames: names}},
		{"no names", ServerCertsConfig{CA: ca}},
		{"negative lifetime", ServerCertsConfig{CA: ca, DNSNames: names, Lifetime: -time.Hour}},
		{"RenewAt 1", ServerCertsConfig{CA: ca, DNSNames: names, RenewAt: 1}},
		{"RenewAt negative", ServerCertsConfig{CA: ca, DNSNames: names, RenewAt: -0.5}},
		{"intermediate expired", ServerCertsConfig{CA: ca, DNSNames: names,
			Now: func() time.Time { return ca.Intermediate.NotAfter.Add(time.Second) }}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if s, err := NewServerCerts(tt.cfg); err == nil {
				t.Fatalf("NewServerCerts succeeded (%v), want error", s.Current().Leaf.Subject)
			}
		})
	}
}

func TestServerCertsIPOnly(t *testing.T) {
	t.Parallel()
	ca, _ := newTestCA(t)
	s, err := NewServerCerts(ServerCertsConfig{CA: ca, IPs: []net.IP{net.IPv4(10, 0, 0, 1)}})
	if err != nil {
		t.Fatalf("NewServerCerts: %v", err)
	}
	if got := s.Current().Leaf.Subject.CommonName; got != "10.0.0.1" {
		t.Errorf("CN %q, want 10.0.0.1", got)
	}
}

func TestServerCertsClampedToIntermediate(t *testing.T) {
	t.Parallel()
	ca, err := Create(DefaultFiles(t.TempDir()), CreateOptions{IntermediateLifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewServerCerts(ServerCertsConfig{CA: ca, DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatalf("NewServerCerts: %v", err)
	}
	if got, want := s.Current().Leaf.NotAfter, ca.Intermediate.NotAfter; !got.Equal(want) {
		t.Errorf("leaf NotAfter %s, want clamped to intermediate %s", got, want)
	}
}

func TestServerCertsLazyRenewal(t *testing.T) {
	t.Parallel()
	// Default lifetime 24h, RenewAt 2/3 -> renewal due 16h after issuance.
	tests := []struct {
		name    string
		advance time.Duration
		renewed bool
	}{
		{"fresh", 0, false},
		{"just before renewal point", 16*time.Hour - time.Second, false},
		{"at renewal point", 16 * time.Hour, true},
		{"near expiry", 23 * time.Hour, true},
		{"expired", 25 * time.Hour, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, _, clock := newTestServerCerts(t)
			first := serial(t, mustGet(t, s))
			clock.Advance(tt.advance)
			c := mustGet(t, s)
			if renewed := serial(t, c) != first; renewed != tt.renewed {
				t.Fatalf("renewed = %v, want %v", renewed, tt.renewed)
			}
			if !tt.renewed {
				return
			}
			if !c.Leaf.NotAfter.After(clock.Now().Add(23 * time.Hour)) {
				t.Errorf("renewed cert NotAfter %s is not a full lifetime after %s", c.Leaf.NotAfter, clock.Now())
			}
			// The new certificate is not renewed again straight away.
			clock.Advance(time.Hour)
			if got := serial(t, mustGet(t, s)); got != serial(t, c) {
				t.Errorf("renewed again after 1h: serial %s, want %s", got, serial(t, c))
			}
		})
	}
}

func TestServerCertsConcurrentGetCertificate(t *testing.T) {
	t.Parallel()
	s, _, clock := newTestServerCerts(t)
	first := serial(t, s.Current())

	issued := 0
	var mu sync.Mutex
	issue := s.issue
	s.issue = func(now time.Time) (*serverCert, error) {
		mu.Lock()
		issued++
		mu.Unlock()
		return issue(now)
	}
	clock.Advance(20 * time.Hour)

	const n = 64
	serials := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, err := s.GetCertificate(&tls.ClientHelloInfo{})
			if err != nil {
				t.Errorf("GetCertificate: %v", err)
				return
			}
			serials[i] = c.Leaf.SerialNumber.String()
		})
	}
	wg.Wait()

	if issued != 1 {
		t.Errorf("issued %d certificates for %d concurrent callers, want exactly 1", issued, n)
	}
	for i, sn := range serials {
		if sn == first || sn != serials[0] {
			t.Errorf("caller %d got serial %s; want the single renewed certificate %s (old %s)", i, sn, serials[0], first)
		}
	}
}

func TestServerCertsRenewalFailure(t *testing.T) {
	t.Parallel()
	s, _, clock := newTestServerCerts(t)
	first := serial(t, s.Current())
	s.issue = func(time.Time) (*serverCert, error) { return nil, errors.New("signer unavailable") }

	// Past the renewal point but still valid: keep serving the old cert.
	clock.Advance(20 * time.Hour)
	if got := serial(t, mustGet(t, s)); got != first {
		t.Errorf("serial %s, want still-valid %s", got, first)
	}
	// Expired: fail the handshake rather than serve an expired cert.
	clock.Advance(5 * time.Hour)
	if c, err := s.GetCertificate(&tls.ClientHelloInfo{}); err == nil {
		t.Errorf("GetCertificate returned %s with expired cert and failing issuance, want error", serial(t, c))
	}
}

func TestServerCertsRunExitsOnCancel(t *testing.T) {
	t.Parallel()
	s, _, _ := newTestServerCerts(t)
	startRun(t, s)() // starts Run, cancels ctx, and checks it returns context.Canceled promptly
}

// waitForSerialChange polls until the current certificate's serial differs
// from old, failing the test after a deadline.
func waitForSerialChange(t *testing.T, s *ServerCerts, old string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if sn := serial(t, s.Current()); sn != old {
			return sn
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("certificate was not renewed in the background")
	return ""
}

// startRun runs s.Run in the background and returns a function that stops it
// and checks it exited with context.Canceled. Stopping is also registered
// with t.Cleanup; calling stop more than once is harmless.
func startRun(t *testing.T, s *ServerCerts) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run returned %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	t.Cleanup(stop)
	return stop
}

func TestServerCertsRunRenewsProactively(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		failures int
	}{
		{"first attempt succeeds", 0},
		{"retries after failures", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, _, clock := newTestServerCerts(t)
			s.backoffMin, s.backoffMax = time.Millisecond, 4*time.Millisecond
			var mu sync.Mutex
			attempts := 0
			issue := s.issue
			s.issue = func(now time.Time) (*serverCert, error) {
				mu.Lock()
				attempts++
				n := attempts
				mu.Unlock()
				if n <= tt.failures {
					return nil, errors.New("transient")
				}
				return issue(now)
			}
			first := serial(t, s.Current())

			// Not due yet: Run must not renew. Give it a moment to misbehave.
			stop := startRun(t, s)
			time.Sleep(20 * time.Millisecond)
			stop()
			if got := serial(t, s.Current()); got != first {
				t.Fatal("Run renewed a certificate that was not due")
			}

			// A real timer cannot observe the fake clock jumping, so start
			// Run again after the jump (as after a suspend/resume it would
			// re-check within maxSleep).
			clock.Advance(17 * time.Hour)
			startRun(t, s)
			waitForSerialChange(t, s, first)
			mu.Lock()
			defer mu.Unlock()
			if attempts != tt.failures+1 {
				t.Errorf("attempts = %d, want %d", attempts, tt.failures+1)
			}
		})
	}
}

func TestServerCertsTLSHandshake(t *testing.T) {
	t.Parallel()
	s, ca, _ := newTestServerCerts(t)
	// The fake clock starts at real now and stays there, so the certificate
	// is valid for the real TLS stack.

	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello over crank TLS")
	}))
	srv.TLS = &tls.Config{GetCertificate: s.GetCertificate, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	roots := x509.NewCertPool()
	roots.AddCert(ca.Root)
	// Connect by name so the client sends SNI: httptest fills
	// tls.Config.Certificates with its own cert, which crypto/tls uses instead
	// of GetCertificate for SNI-less clients.
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"},
	}}
	t.Cleanup(client.CloseIdleConnections)

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://127.0.0.1:"+port+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET over TLS: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if string(body) != "hello over crank TLS" {
		t.Errorf("body %q", body)
	}
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		t.Fatal("no peer certificates")
	}
	if got, want := resp.TLS.PeerCertificates[0].SerialNumber.String(), serial(t, s.Current()); got != want {
		t.Errorf("server presented serial %s, want ServerCerts serial %s", got, want)
	}
	if len(resp.TLS.VerifiedChains) == 0 || !resp.TLS.VerifiedChains[0][len(resp.TLS.VerifiedChains[0])-1].Equal(ca.Root) {
		t.Error("verified chain does not end at the crank root")
	}
}
