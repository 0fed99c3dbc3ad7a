package integration

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/server"
	"github.com/crank-platform/crank-ca/internal/setup"
	"github.com/crank-platform/crank-ca/provisioner"
)

// clock is a settable clock shared by a test and its server.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

// ca is one crank-ca instance under test: a CA directory made by setup.Init
// and, while running, an in-process server on a loopback port.
type ca struct {
	t      *testing.T
	dir    string
	cfg    *config.Config
	clock  *clock
	logs   *syncBuffer
	url    string
	roots  *x509.CertPool
	srv    *server.Server
	cancel context.CancelFunc
	done   chan error

	// clients are the transports of httpClient; stop closes their idle
	// connections, as a client that noticed the server's close would.
	// Without it a request racing that close can meet EOF on a stale
	// keep-alive connection, which net/http does not retry for a POST.
	// A pointer: replicas copy the ca.
	clients *transports
}

// transports are HTTP transports made for one test CA.
type transports struct {
	mu  sync.Mutex
	all []*http.Transport
}

// newCA initialises a CA directory; mutate may adjust the configuration
// (it is validated again afterwards).
func newCA(t *testing.T, mutate func(*config.Config)) *ca {
	t.Helper()
	dir := t.TempDir()
	res, err := setup.Init(setup.Options{Dir: dir})
	if err != nil {
		t.Fatalf("init: %v", err)
	}
	cfg, err := config.Load(res.ConfigPath)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if mutate != nil {
		mutate(cfg)
		// As Load does: defaults for what the mutation left unset (the
		// pool size of a storage switched to PostgreSQL, say).
		cfg.ApplyDefaults()
		if err := cfg.Validate(); err != nil {
			t.Fatalf("mutated config: %v", err)
		}
	}
	roots := x509.NewCertPool()
	pemBytes, err := os.ReadFile(filepath.Join(dir, "pki", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots.AppendCertsFromPEM(pemBytes)
	c := &ca{t: t, dir: dir, cfg: cfg, clock: &clock{}, logs: &syncBuffer{}, roots: roots, clients: &transports{}}
	return c
}

// start serves the CA on 127.0.0.1 (a fresh port unless one was used before,
// so that a restart keeps the URLs clients know).
func (c *ca) start() {
	c.t.Helper()
	addr := "127.0.0.1:0"
	if c.url != "" {
		addr = c.url[len("https://"):]
	}
	logger := slog.New(slog.NewTextHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := server.New(c.t.Context(), server.Deps{Config: c.cfg, Logger: logger, Audit: logger.With("log", "audit"), Now: c.clock.Now})
	if err != nil {
		c.t.Fatalf("server.New: %v", err)
	}
	var ln net.Listener
	for i := 0; ; i++ {
		ln, err = net.Listen("tcp", addr)
		if err == nil || i == 50 {
			break
		}
		time.Sleep(50 * time.Millisecond) // the previous instance's port may linger briefly
	}
	if err != nil {
		_ = srv.Close()
		c.t.Fatalf("listen: %v", err)
	}
	c.url = "https://" + ln.Addr().String()
	c.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.done = make(chan error, 1)
	go func() { c.done <- srv.Serve(ctx, ln) }()
	c.t.Cleanup(c.stop)
}

// stop shuts the server down and waits until the store is released.
func (c *ca) stop() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	c.cancel = nil
	if err := <-c.done; err != nil {
		c.t.Errorf("serve: %v", err)
	}
	c.clients.mu.Lock()
	defer c.clients.mu.Unlock()
	for _, tr := range c.clients.all {
		tr.CloseIdleConnections()
	}
}

func (c *ca) directory(prov string) string { return c.url + "/acme/" + prov + "/directory" }

func (c *ca) httpClient() *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.roots, MinVersion: tls.VersionTLS12}}
	c.clients.mu.Lock()
	c.clients.all = append(c.clients.all, tr)
	c.clients.mu.Unlock()
	return &http.Client{Timeout: 30 * time.Second, Transport: tr}
}

func (c *ca) token(worker string) provisioner.Token {
	c.t.Helper()
	tok, err := server.MintToken(c.cfg, server.TokenRequest{Worker: worker, Now: c.clock.Now()})
	if err != nil {
		c.t.Fatalf("mint token: %v", err)
	}
	return tok
}

// legoUser implements registration.User.
type legoUser struct {
	key crypto.PrivateKey
	reg *registration.Resource
}

func (u *legoUser) GetEmail() string                        { return "" }
func (u *legoUser) GetRegistration() *registration.Resource { return u.reg }
func (u *legoUser) GetPrivateKey() crypto.PrivateKey        { return u.key }

// newLego returns a lego client for a provisioner with a fresh P-256 account
// key (or the given one).
func (c *ca) newLego(prov string, key crypto.PrivateKey) (*lego.Client, *legoUser) {
	c.t.Helper()
	if key == nil {
		key = newKey(c.t)
	}
	u := &legoUser{key: key}
	cfg := lego.NewConfig(u)
	cfg.CADirURL = c.directory(prov)
	cfg.HTTPClient = c.httpClient()
	cfg.Certificate.KeyType = certcrypto.EC256
	cfg.Certificate.OverallRequestLimit = 1000
	cl, err := lego.NewClient(cfg)
	if err != nil {
		c.t.Fatalf("lego client: %v", err)
	}
	return cl, u
}

// register binds a new account with a token.
func (c *ca) register(cl *lego.Client, u *legoUser, tok provisioner.Token) error {
	reg, err := cl.Registration.RegisterWithExternalAccountBinding(registration.RegisterEABOptions{
		TermsOfServiceAgreed: true, Kid: tok.KID, HmacEncoded: tok.HMACKeyString(),
	})
	if err == nil {
		u.reg = reg
	}
	return err
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csrFor makes a CSR for names with key.
func csrFor(t *testing.T, key crypto.Signer, cn string, dns []string, ips []net.IP, uris ...string) *x509.CertificateRequest {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, DNSNames: dns, IPAddresses: ips}
	for _, u := range uris {
		pu, err := parseURL(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func parseChain(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			t.Fatalf("chain holds a %s block", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatal("empty chain")
	}
	return out
}

// fetchRoots downloads /roots.pem into a pool.
func (c *ca) fetchRoots() *x509.CertPool {
	c.t.Helper()
	resp, err := c.httpClient().Get(c.url + "/roots.pem")
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		c.t.Fatalf("roots.pem holds no certificate: %q", b)
	}
	return pool
}

// syncBuffer collects server logs for assertions and failure output.
type syncBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b)
}

func mkdir(p string) error { return os.MkdirAll(p, 0o700) }

func newKeyB(b *testing.B) *ecdsa.PrivateKey {
	b.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	return k
}

func csrForB(b *testing.B, key crypto.Signer, dns []string) *x509.CertificateRequest {
	b.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: dns}, key)
	if err != nil {
		b.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		b.Fatal(err)
	}
	return csr
}
