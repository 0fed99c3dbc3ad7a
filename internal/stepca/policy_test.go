package stepca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/netip"
	"net/url"
	"testing"
	"time"

	"github.com/smallstep/certificates/acme"
	authconfig "github.com/smallstep/certificates/authority/config"
	steppro "github.com/smallstep/certificates/authority/provisioner"

	"github.com/crank-platform/crank-ca/provisioner"
)

// TestSmallstepPolicyDeniesWorkerNames checks the third, independent place
// the worker namespace is refused: smallstep's own x509 policy engine, at
// new-order (AuthorizeOrderIdentifier) and when signing (its name policy
// validator), with none of crank-ca's checks involved.
func TestSmallstepPolicyDeniesWorkerNames(t *testing.T) {
	t.Parallel()
	p := &Provisioner{
		Name: "adhoc", Kind: KindACME,
		MinDuration: 5 * time.Minute, DefaultDuration: time.Hour, MaxDuration: 24 * time.Hour,
		Policy: provisioner.NamePolicy{
			AllowedDNSSuffixes: []string{"localhost", "crank.internal"},
			DeniedDNSSuffixes:  []string{"workers.crank.internal"},
			DeniedIPs:          []netip.Addr{netip.MustParseAddr("127.0.0.9")},
		},
		DeniedURIDomains: []string{"crank.internal"},
	}
	ap := stepProvisioner(p)
	if err := ap.Init(steppro.Config{Claims: authconfig.GlobalProvisionerClaims}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		typ, value string
		ok         bool
	}{
		{"dns", "ok.localhost", true},
		{"dns", "api.crank.internal", true},
		{"dns", "alpha.workers.crank.internal", false},
		{"dns", "workers.crank.internal", false},
		{"ip", "127.0.0.9", false},
		{"ip", "127.0.0.1", true},
	} {
		err := ap.AuthorizeOrderIdentifier(context.Background(), steppro.ACMEIdentifier{Type: steppro.ACMEIdentifierType(tc.typ), Value: tc.value})
		if (err == nil) != tc.ok {
			t.Errorf("smallstep AuthorizeOrderIdentifier(%s %s) = %v, want ok=%v", tc.typ, tc.value, err, tc.ok)
		}
	}

	opts, err := ap.AuthorizeSign(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	spiffe, _ := url.Parse("spiffe://crank.internal/worker/alpha")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// Certificates that differ only in their names, so the plain one
	// passing every validator shows that only the name policy refuses
	// the others.
	cert := func(dns []string, uris ...*url.URL) *x509.Certificate {
		return &x509.Certificate{PublicKey: &key.PublicKey, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), DNSNames: dns, URIs: uris}
	}
	for _, tc := range []struct {
		name string
		cert *x509.Certificate
		ok   bool
	}{
		{"plain", cert([]string{"ok.localhost"}), true},
		{"worker name", cert([]string{"alpha.workers.crank.internal"}), false},
		{"worker SPIFFE ID", cert([]string{"ok.localhost"}, spiffe), false},
	} {
		var verr error
		for _, o := range opts {
			if v, ok := o.(interface {
				Valid(*x509.Certificate, steppro.SignOptions) error
			}); ok && verr == nil {
				verr = v.Valid(tc.cert, steppro.SignOptions{})
			}
		}
		if tc.ok {
			if verr != nil {
				t.Errorf("%s: %v", tc.name, verr)
			}
			continue
		}
		if verr == nil {
			t.Errorf("%s: smallstep's sign validators accepted it", tc.name)
		}
	}
}

// TestCreateOrderRefusesWhatThePrecheckMissed drives the second new-order
// check directly, as if the precheck had been bypassed.
func TestCreateOrderRefusesWhatThePrecheckMissed(t *testing.T) {
	t.Parallel()
	spec := &Provisioner{Name: "adhoc", Kind: KindACME, MinDuration: 5 * time.Minute, DefaultDuration: time.Hour, MaxDuration: 24 * time.Hour,
		Limits: Limits{MaxIdentifiersPerOrder: 2, MaxPendingOrdersPerAccount: 10, NewAccountsPerMinute: 1, NewOrdersPerMinute: 1},
		Policy: provisioner.NamePolicy{AllowedDNSSuffixes: []string{"localhost"}}}
	d := &acmeDB{specs: map[string]*Provisioner{spec.id(): spec}, now: time.Now}
	now := time.Now()
	order := func(names ...string) *acme.Order {
		o := &acme.Order{AccountID: "acc", ProvisionerID: spec.id(), ExpiresAt: now.Add(orderLifetime), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)}
		for _, n := range names {
			o.Identifiers = append(o.Identifiers, acme.Identifier{Type: acme.DNS, Value: n})
		}
		return o
	}
	for _, tc := range []struct {
		name string
		o    *acme.Order
	}{
		{"foreign name", order("evil.example.com")},
		{"too many", order("a.localhost", "b.localhost", "c.localhost")},
		{"none", order()},
		{"future notBefore", func() *acme.Order {
			o := order("a.localhost")
			o.NotBefore = now.Add(300 * 24 * time.Hour)
			o.NotAfter = o.NotBefore.Add(time.Hour)
			return o
		}()},
		{"back-dated notBefore", func() *acme.Order { o := order("a.localhost"); o.NotBefore = now.Add(-6 * 24 * time.Hour); return o }()},
	} {
		if err := d.CreateOrder(context.Background(), tc.o); err == nil {
			t.Errorf("%s: CreateOrder accepted it", tc.name)
		}
	}
}

// TestIssuanceValidator drives the sign-time check directly, as if both
// new-order checks had been bypassed.
func TestIssuanceValidator(t *testing.T) {
	t.Parallel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	weak, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pol := &provisioner.NamePolicy{AllowedDNSSuffixes: []string{"localhost", "crank.internal"}, DeniedDNSSuffixes: []string{"workers.crank.internal"}}
	ids, err := provisioner.NewIdentities(provisioner.IdentitiesConfig{TrustDomain: "crank.internal", Pattern: "[a-z]+", DNSTemplates: []string{"{worker}.workers.{trustDomain}"}})
	if err != nil {
		t.Fatal(err)
	}
	alpha, err := ids.Lookup("alpha")
	if err != nil {
		t.Fatal(err)
	}
	alphaID, _ := url.Parse(alpha.SPIFFEID.String())
	betaID, _ := url.Parse("spiffe://crank.internal/worker/beta")
	now := time.Now()
	mk := func(mut func(c *x509.Certificate)) *x509.Certificate {
		c := &x509.Certificate{PublicKey: &key.PublicKey, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour), DNSNames: []string{"ok.localhost"}}
		if mut != nil {
			mut(c)
		}
		return c
	}
	for _, tc := range []struct {
		name string
		v    issuanceValidator
		cert *x509.Certificate
		ok   bool
	}{
		{"acme plain", issuanceValidator{policy: pol}, mk(nil), true},
		{"acme worker name", issuanceValidator{policy: pol}, mk(func(c *x509.Certificate) { c.DNSNames = []string{"alpha.workers.crank.internal"} }), false},
		{"acme URI", issuanceValidator{policy: pol}, mk(func(c *x509.Certificate) { c.URIs = []*url.URL{alphaID} }), false},
		{"acme weak key", issuanceValidator{policy: pol}, mk(func(c *x509.Certificate) { c.PublicKey = &weak.PublicKey }), false},
		{"acme future start", issuanceValidator{policy: pol}, mk(func(c *x509.Certificate) { c.NotBefore = now.Add(300 * 24 * time.Hour) }), false},
		{"acme back-dated start", issuanceValidator{policy: pol}, mk(func(c *x509.Certificate) { c.NotBefore = now.Add(-6 * 24 * time.Hour) }), false},
		{"worker own names", issuanceValidator{identity: &alpha}, mk(func(c *x509.Certificate) {
			c.DNSNames, c.URIs = []string{"alpha.workers.crank.internal"}, []*url.URL{alphaID}
		}), true},
		{"worker other name", issuanceValidator{identity: &alpha}, mk(func(c *x509.Certificate) {
			c.DNSNames, c.URIs = []string{"beta.workers.crank.internal"}, []*url.URL{alphaID}
		}), false},
		{"worker other SPIFFE ID", issuanceValidator{identity: &alpha}, mk(func(c *x509.Certificate) {
			c.DNSNames, c.URIs = []string{"alpha.workers.crank.internal"}, []*url.URL{betaID}
		}), false},
		{"no policy at all", issuanceValidator{}, mk(nil), false},
	} {
		err := tc.v.Valid(tc.cert, steppro.SignOptions{})
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v", tc.name, err, tc.ok)
		}
		var ae *acme.Error
		if err != nil && !errors.As(err, &ae) {
			t.Errorf("%s: %T is not a problem document", tc.name, err)
		}
	}
}
