package workertls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/internal/agent"
)

// testCA is a throw-away root CA standing in for crank-ca.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	cert := createCert(t, tmpl, tmpl, &key.PublicKey, key)
	return &testCA{cert: cert, key: key}
}

// issue returns an identity for spiffeID signed by ca, shaped like a
// crank-ca worker certificate: SPIFFE URI SAN, IP SAN 127.0.0.1, serverAuth
// and clientAuth.
func (ca *testCA) issue(t *testing.T, spiffeID string) *agent.Identity {
	t.Helper()
	u, err := url.Parse(spiffeID)
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(t),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		URIs:         []*url.URL{u},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	leaf := createCert(t, tmpl, ca.cert, &key.PublicKey, ca.key)
	id, err := agent.NewIdentity([]*x509.Certificate{leaf}, key, []*x509.Certificate{ca.cert})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func newSerial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func createCert(t *testing.T, tmpl, parent *x509.Certificate, pub any, priv *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// fakeSource is a Source whose identity a test can swap, like a rotation.
type fakeSource struct {
	cur atomic.Pointer[agent.Identity]
}

func newSource(id *agent.Identity) *fakeSource {
	s := &fakeSource{}
	s.cur.Store(id)
	return s
}

func (s *fakeSource) Current() *agent.Identity { return s.cur.Load() }
func (s *fakeSource) set(id *agent.Identity)   { s.cur.Store(id) }

func leafs(c *x509.Certificate) []*x509.Certificate { return []*x509.Certificate{c} }
