package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"
)

// CA is a throwaway certificate authority: a root from New, or an
// intermediate from Intermediate.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// New returns a self-signed root CA with the common name name, valid from
// an hour ago for a day.
func New(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := caTemplate(t, name)
	return &CA{Cert: sign(t, tmpl, tmpl, key, key), Key: key}
}

// Intermediate returns a CA with the common name name signed by ca.
func (ca *CA) Intermediate(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	return &CA{Cert: sign(t, caTemplate(t, name), ca.Cert, key, ca.Key), Key: key}
}

// Issue signs a certificate from tmpl for a new P-256 key, filling in a
// random serial and, when tmpl leaves them zero, a validity from a minute
// ago for an hour. tmpl is not modified.
func (ca *CA) Issue(t testing.TB, tmpl *x509.Certificate) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	c := *tmpl
	c.SerialNumber = serial(t)
	if c.NotBefore.IsZero() {
		c.NotBefore = time.Now().Add(-time.Minute)
	}
	if c.NotAfter.IsZero() {
		c.NotAfter = time.Now().Add(time.Hour)
	}
	key := newKey(t)
	return sign(t, &c, ca.Cert, key, ca.Key), key
}

// Leaf issues a certificate shaped like a crank-ca worker certificate for
// spiffeID: the SPIFFE ID as its only URI SAN, IP SAN 127.0.0.1, digital
// signature, serverAuth and clientAuth.
func (ca *CA) Leaf(t testing.TB, spiffeID string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	u, err := url.Parse(spiffeID)
	if err != nil {
		t.Fatal(err)
	}
	return ca.Issue(t, &x509.Certificate{
		URIs:        []*url.URL{u},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
}

func caTemplate(t testing.TB, name string) *x509.Certificate {
	t.Helper()
	return &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// sign creates tmpl for key's public half, signed by parent with parentKey.
func sign(t testing.TB, tmpl, parent *x509.Certificate, key, parentKey *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
