package provisioner_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/crank-platform/crank-ca/provisioner"
)

// staticKeys is a KeySet of fixed keys (test code only).
type staticKeys map[string]jose.JSONWebKey

func (s staticKeys) Key(_ context.Context, kid string) (jose.JSONWebKey, error) {
	if k, ok := s[kid]; ok {
		return k, nil
	}
	return jose.JSONWebKey{}, &provisioner.AttestationError{Check: "key", Reason: "unknown"}
}

var jwtNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

func signJWT(t testing.TB, key *ecdsa.PrivateKey, kid string, c jwt.Claims, extra map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	b := jwt.Signed(s).Claims(c)
	if extra != nil {
		b = b.Claims(extra)
	}
	out, err := b.Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestJWTAttestorKubernetes(t *testing.T) {
	t.Parallel()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	a, err := provisioner.NewJWTAttestor(provisioner.JWTAttestorConfig{
		Name: "k8s", Kind: provisioner.JWTKubernetes, Issuer: "https://k8s.example", Audience: "crank-ca",
		Keys: staticKeys{"k1": {Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}, MaxTokenAge: time.Hour,
		TrustDomain: "crank.internal", Allow: []provisioner.ServiceAccountRule{{Namespace: "team-a", ServiceAccount: "billing"}},
		DNSTemplates: []string{"{serviceAccount}.{namespace}.workers.{trustDomain}"}, Now: func() time.Time { return jwtNow },
	})
	if err != nil {
		t.Fatal(err)
	}
	claims := func(mut func(*jwt.Claims)) jwt.Claims {
		c := jwt.Claims{Issuer: "https://k8s.example", Subject: "system:serviceaccount:team-a:billing", Audience: jwt.Audience{"crank-ca"},
			IssuedAt: jwt.NewNumericDate(jwtNow.Add(-time.Minute)), Expiry: jwt.NewNumericDate(jwtNow.Add(time.Hour)), ID: "j1"}
		if mut != nil {
			mut(&c)
		}
		return c
	}
	k8s := func(ns, sa string) map[string]any {
		return map[string]any{"kubernetes.io": map[string]any{"namespace": ns, "serviceaccount": map[string]string{"name": sa}, "pod": map[string]string{"name": "p1", "uid": "u1"}}}
	}
	att, err := a.Attest(t.Context(), signJWT(t, key, "k1", claims(nil), k8s("team-a", "billing")))
	if err != nil {
		t.Fatal(err)
	}
	if att.Identity.SPIFFEID.String() != "spiffe://crank.internal/ns/team-a/sa/billing" || att.Identity.DNSNames[0] != "billing.team-a.workers.crank.internal" ||
		att.PodName != "p1" || att.PodUID != "u1" || att.JTI != "j1" || att.Identity.Worker != "ns/team-a/sa/billing" {
		t.Errorf("attestation %+v", att)
	}
	for _, tc := range []struct {
		name  string
		token string
		check string
	}{
		{"audience", signJWT(t, key, "k1", claims(func(c *jwt.Claims) { c.Audience = jwt.Audience{"x"} }), k8s("team-a", "billing")), "audience"},
		{"issuer", signJWT(t, key, "k1", claims(func(c *jwt.Claims) { c.Issuer = "https://x" }), k8s("team-a", "billing")), "issuer"},
		{"no exp", signJWT(t, key, "k1", claims(func(c *jwt.Claims) { c.Expiry = nil }), k8s("team-a", "billing")), "expiry"},
		{"no iat", signJWT(t, key, "k1", claims(func(c *jwt.Claims) { c.IssuedAt = nil }), k8s("team-a", "billing")), "issued-at"},
		{"expired within leeway is fine, beyond not", signJWT(t, key, "k1", claims(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(jwtNow.Add(-2 * time.Minute)) }), k8s("team-a", "billing")), "expiry"},
		{"no kid", signJWT(t, key, "", claims(nil), k8s("team-a", "billing")), "key"},
		{"unknown kid", signJWT(t, key, "k2", claims(nil), k8s("team-a", "billing")), "key"},
		{"not a service account", signJWT(t, key, "k1", claims(func(c *jwt.Claims) { c.Subject = "alice" }), k8s("team-a", "billing")), "subject"},
		{"claim mismatch", signJWT(t, key, "k1", claims(nil), k8s("team-a", "other")), "subject"},
		{"no kubernetes claim", signJWT(t, key, "k1", claims(nil), nil), "subject"},
		{"not allowed", signJWT(t, key, "k1", claims(func(c *jwt.Claims) { c.Subject = "system:serviceaccount:team-a:admin" }), k8s("team-a", "admin")), "allow-list"},
		{"garbage", "x.y.z", "format"},
	} {
		_, err := a.Attest(t.Context(), tc.token)
		var ae *provisioner.AttestationError
		if !errors.As(err, &ae) || ae.Check != tc.check || !errors.Is(err, provisioner.ErrAttestation) {
			t.Errorf("%s: %v, want check %s", tc.name, err, tc.check)
		}
	}
}

func TestNewJWTAttestorReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := provisioner.NewJWTAttestor(provisioner.JWTAttestorConfig{Name: "Bad Name", Kind: provisioner.JWTKubernetes, TrustDomain: "crank.internal",
		DNSTemplates: []string{"{pod}.x"}})
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"name:", "issuer:", "audience:", "keys:", "maxTokenAge:", "allow:", "dnsTemplates[0]:"} {
		if !contains(err.Error(), want) {
			t.Errorf("missing %q in %v", want, err)
		}
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// FuzzJWTAttest: hostile tokens never panic the attestor and never attest.
func FuzzJWTAttest(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	a, err := provisioner.NewJWTAttestor(provisioner.JWTAttestorConfig{
		Name: "ci", Kind: provisioner.JWTKubernetes, Issuer: "https://k8s.example", Audience: "crank-ca",
		Keys: staticKeys{"k1": {Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256"}}, MaxTokenAge: time.Hour,
		TrustDomain: "crank.internal", Allow: []provisioner.ServiceAccountRule{{Namespace: "a", ServiceAccount: "*"}},
		Now: func() time.Time { return jwtNow },
	})
	if err != nil {
		f.Fatal(err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.Add(signJWT(f, other, "k1", jwt.Claims{Issuer: "https://k8s.example", Subject: "system:serviceaccount:a:b"}, nil))
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, token string) {
		_, _ = provisioner.PeekIssuer(token)
		if _, err := a.Attest(context.Background(), token); err == nil {
			t.Fatalf("a token not signed by the issuer's key attested: %q", token)
		}
	})
}
