package integration

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/certificate"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/server"
	"github.com/crank-platform/crank-ca/provisioner"
)

func parseURL(s string) (*url.URL, error) { return url.Parse(s) }

// problem extracts the ACME problem document from a lego error.
func problem(t *testing.T, err error) *acme.ProblemDetails {
	t.Helper()
	if err == nil {
		t.Fatal("expected an ACME problem, got success")
	}
	var pd *acme.ProblemDetails
	if !errors.As(err, &pd) {
		t.Fatalf("expected an ACME problem document, got %T: %v", err, err)
	}
	return pd
}

func wantProblem(t *testing.T, err error, typ string, status int) {
	t.Helper()
	pd := problem(t, err)
	if pd.Type != "urn:ietf:params:acme:error:"+typ || pd.HTTPStatus != status {
		t.Fatalf("problem = %s (%d) %q, want %s (%d)", pd.Type, pd.HTTPStatus, pd.Detail, typ, status)
	}
}

// obtain orders a certificate for the worker's default name with a fresh key.
func obtain(t *testing.T, c *ca, cl interface {
	ObtainForCSR(certificate.ObtainForCSRRequest) (*certificate.Resource, error)
}, names ...string) (*certificate.Resource, error) {
	t.Helper()
	key := newKey(t)
	return cl.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: csrFor(t, key, "", names, nil), PrivateKey: key, Bundle: true})
}

func TestWorkerIssuance(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()

	start := time.Now()
	cl, u := c.newLego("workers", nil)
	if err := c.register(cl, u, c.token("api")); err != nil {
		t.Fatalf("register: %v", err)
	}
	key := newKey(t)
	res, err := cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{
		CSR: csrFor(t, key, "api.workers.crank.internal", []string{"api.workers.crank.internal"}, nil), PrivateKey: key, Bundle: true,
	})
	if err != nil {
		t.Fatalf("obtain: %v\n%s", err, c.logs)
	}
	t.Logf("full worker issuance (register + order + finalize + download): %s", time.Since(start))

	chain := parseChain(t, res.Certificate)
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, ic := range chain[1:] {
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.fetchRoots(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("chain does not verify to /roots.pem: %v", err)
	}
	if got := uris(leaf); len(got) != 1 || got[0] != "spiffe://crank.internal/worker/api" {
		t.Errorf("URI SANs = %v, want exactly the SPIFFE ID", got)
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "api.workers.crank.internal" || len(leaf.IPAddresses) != 0 {
		t.Errorf("DNS/IP SANs = %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	checkSVIDProfile(t, leaf)
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life < 24*time.Hour || life > 24*time.Hour+2*time.Minute {
		t.Errorf("lifetime = %s, want the default 24h (plus backdate)", life)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
		t.Error("leaf key is not the CSR key")
	}
}

func uris(c *x509.Certificate) []string {
	var out []string
	for _, u := range c.URIs {
		out = append(out, u.String())
	}
	return out
}

// checkSVIDProfile checks the X.509-SVID leaf rules on the raw extensions.
func checkSVIDProfile(t *testing.T, leaf *x509.Certificate) {
	t.Helper()
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Error("basic constraints must be present with cA=false")
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("key usage = %b, want digitalSignature only", leaf.KeyUsage)
	}
	var kuCritical, sanCritical bool
	for _, e := range leaf.Extensions {
		switch {
		case e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 15}):
			kuCritical = e.Critical
		case e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}):
			sanCritical = e.Critical
		}
	}
	if !kuCritical {
		t.Error("key usage must be critical")
	}
	if len(leaf.Subject.String()) == 0 && !sanCritical {
		t.Error("empty subject requires a critical SAN extension")
	}
	hasServer, hasClient := false, false
	for _, u := range leaf.ExtKeyUsage {
		hasServer = hasServer || u == x509.ExtKeyUsageServerAuth
		hasClient = hasClient || u == x509.ExtKeyUsageClientAuth
	}
	if !hasServer || !hasClient {
		t.Errorf("EKU = %v, want serverAuth and clientAuth", leaf.ExtKeyUsage)
	}
}

func TestWorkerLifetime(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()
	cl, u := c.newLego("workers", nil)
	if err := c.register(cl, u, c.token("api")); err != nil {
		t.Fatal(err)
	}
	names := []string{"api.workers.crank.internal"}

	key := newKey(t)
	want := time.Now().Add(time.Hour).Truncate(time.Second)
	res, err := cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: csrFor(t, key, "", names, nil), PrivateKey: key, NotAfter: want})
	if err != nil {
		t.Fatalf("obtain with notAfter: %v", err)
	}
	if got := parseChain(t, res.Certificate)[0].NotAfter; !got.Equal(want) {
		t.Errorf("notAfter = %s, want the requested %s", got, want)
	}

	for _, tc := range []struct {
		name     string
		notAfter time.Time
	}{
		{"above max", time.Now().Add(8 * 24 * time.Hour)},
		{"below min", time.Now().Add(time.Minute)},
	} {
		key := newKey(t)
		_, err := cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: csrFor(t, key, "", names, nil), PrivateKey: key, NotAfter: tc.notAfter})
		wantProblem(t, err, "malformed", 400)
	}
}

func TestWorkerRefusals(t *testing.T) {
	t.Parallel()
	c := newCA(t, func(cfg *config.Config) {
		cfg.Provisioners[0].Workers.Pattern = "api|web"
	})
	c.start()
	key, err := server.LoadTokenKey(c.cfg)
	if err != nil {
		t.Fatal(err)
	}
	mint := func(worker string, ttl time.Duration) provisioner.Token {
		tok, err := key.Mint(provisioner.TokenClaims{Provisioner: "workers", Worker: worker, ExpiresAt: time.Now().Add(ttl)})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}

	// Runs after the parallel subtests: every refusal is an audit event.
	t.Cleanup(func() {
		logs := c.logs.String()
		for _, want := range []string{"the join token has already been used", "the join token has expired", "is not valid for this CA", "is not a known identity"} {
			if !strings.Contains(logs, `msg="join token refused"`) || !strings.Contains(logs, want) {
				t.Errorf("audit stream lacks a refusal with %q", want)
			}
		}
	})
	t.Run("reused token", func(t *testing.T) {
		t.Parallel()
		tok := c.token("api")
		cl, u := c.newLego("workers", nil)
		if err := c.register(cl, u, tok); err != nil {
			t.Fatal(err)
		}
		cl2, u2 := c.newLego("workers", nil)
		wantProblem(t, c.register(cl2, u2, tok), "unauthorized", 401)
	})
	t.Run("replayed registration", func(t *testing.T) {
		t.Parallel()
		// The same key sends the same new-account again (its first
		// response was lost): the account the token bound is answered,
		// and it orders. Another key with that token is still refused.
		tok := c.token("api")
		key := newKey(t)
		cl, u := c.newLego("workers", key)
		if err := c.register(cl, u, tok); err != nil {
			t.Fatal(err)
		}
		again, u2 := c.newLego("workers", key)
		if err := c.register(again, u2, tok); err != nil {
			t.Fatalf("replayed new-account: %v", err)
		}
		if u2.reg.URI != u.reg.URI {
			t.Errorf("replay answered account %s, want %s", u2.reg.URI, u.reg.URI)
		}
		if _, err := obtain(t, c, again.Certificate, "api.workers.crank.internal"); err != nil {
			t.Errorf("order after the replay: %v", err)
		}
		other, u3 := c.newLego("workers", nil)
		wantProblem(t, c.register(other, u3, tok), "unauthorized", 401)
	})
	t.Run("expired token", func(t *testing.T) {
		t.Parallel()
		tok := mint("api", 2*time.Second)
		time.Sleep(3 * time.Second)
		cl, u := c.newLego("workers", nil)
		wantProblem(t, c.register(cl, u, tok), "unauthorized", 401)
	})
	t.Run("tampered kid", func(t *testing.T) {
		t.Parallel()
		tok := mint("api", time.Hour)
		other := mint("web", time.Hour)
		parts, oparts := strings.Split(tok.KID, "."), strings.Split(other.KID, ".")
		tok.KID = parts[0] + "." + oparts[1] + "." + parts[2] // web's claims with api's MAC
		cl, u := c.newLego("workers", nil)
		wantProblem(t, c.register(cl, u, tok), "unauthorized", 401)
	})
	t.Run("tampered hmac key", func(t *testing.T) {
		t.Parallel()
		tok := mint("api", time.Hour)
		tok.HMACKey = append([]byte{}, tok.HMACKey...)
		tok.HMACKey[0] ^= 0xff
		cl, u := c.newLego("workers", nil)
		wantProblem(t, c.register(cl, u, tok), "unauthorized", 401)
	})
	t.Run("unknown worker", func(t *testing.T) {
		t.Parallel()
		cl, u := c.newLego("workers", nil)
		wantProblem(t, c.register(cl, u, mint("db", time.Hour)), "unauthorized", 401)
	})
	t.Run("no EAB", func(t *testing.T) {
		t.Parallel()
		cl, _ := c.newLego("workers", nil)
		_, err := cl.Registration.Register(registrationOptions())
		wantProblem(t, err, "externalAccountRequired", 400)
	})
	t.Run("foreign name", func(t *testing.T) {
		t.Parallel()
		cl, u := c.newLego("workers", nil)
		if err := c.register(cl, u, c.token("api")); err != nil {
			t.Fatal(err)
		}
		for _, names := range [][]string{
			{"web.workers.crank.internal"},
			{"api.workers.crank.internal", "evil.example.com"},
			{"*.workers.crank.internal"},
		} {
			_, err := obtain(t, c, cl.Certificate, names...)
			wantProblem(t, err, "rejectedIdentifier", 400)
		}
		key := newKey(t)
		_, err := cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: csrFor(t, key, "", nil, []net.IP{net.IPv4(10, 0, 0, 1)}), PrivateKey: key})
		wantProblem(t, err, "rejectedIdentifier", 400)
	})
	t.Run("CSR with the account key", func(t *testing.T) {
		t.Parallel()
		acct := newKey(t)
		cl, u := c.newLego("workers", acct)
		if err := c.register(cl, u, c.token("api")); err != nil {
			t.Fatal(err)
		}
		_, err := cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: csrFor(t, acct, "", []string{"api.workers.crank.internal"}, nil), PrivateKey: acct})
		wantProblem(t, err, "badCSR", 400)
	})
	t.Run("CSR with extra URI SAN", func(t *testing.T) {
		t.Parallel()
		cl, u := c.newLego("workers", nil)
		if err := c.register(cl, u, c.token("api")); err != nil {
			t.Fatal(err)
		}
		key := newKey(t)
		csr := csrFor(t, key, "", []string{"api.workers.crank.internal"}, nil, "spiffe://crank.internal/worker/admin")
		_, err := cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: csr, PrivateKey: key})
		wantProblem(t, err, "badCSR", 400)
	})
	t.Run("concurrent reuse leaves losers unbound", func(t *testing.T) {
		t.Parallel()
		tok := c.token("web")
		const n = 6
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			wins int
			lost []*legoClientUser
		)
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cl, u := c.newLego("workers", nil)
				err := c.register(cl, u, tok)
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					wins++
					return
				}
				lost = append(lost, &legoClientUser{cl: cl, u: u})
			}()
		}
		wg.Wait()
		if wins != 1 {
			t.Fatalf("%d registrations won one token, want exactly 1", wins)
		}
		for _, l := range lost {
			reg, err := l.cl.Registration.ResolveAccountByKey()
			if err != nil {
				continue // refused before an account was created
			}
			l.u.reg = reg
			_, err = obtain(t, c, l.cl.Certificate, "web.workers.crank.internal")
			wantProblem(t, err, "unauthorized", 401)
		}
	})
}
