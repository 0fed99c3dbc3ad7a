package agent

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Identity is one issued certificate with its key: what a worker presents.
// It is immutable; a rotation produces a new Identity.
type Identity struct {
	SPIFFEID spiffeid.ID
	// Chain is the leaf followed by its intermediates.
	Chain []*x509.Certificate
	Key   crypto.Signer
	// Roots are the trust anchors pinned at bootstrap.
	Roots []*x509.Certificate

	tls *tls.Certificate
	// obtained is when this agent received the certificate (zero when loaded
	// from state). The CA backdates NotBefore for clock skew, which for
	// minute-long certificates is a large part of the lifetime, so renewal is
	// planned from here when known.
	obtained time.Time
}

// Leaf is the worker's own certificate.
func (id *Identity) Leaf() *x509.Certificate { return id.Chain[0] }

// Serial is the leaf's serial number in decimal.
func (id *Identity) Serial() string { return id.Chain[0].SerialNumber.String() }

// NotAfter is when the leaf expires.
func (id *Identity) NotAfter() time.Time { return id.Chain[0].NotAfter }

// TLSCertificate is the chain and key for crypto/tls.
func (id *Identity) TLSCertificate() *tls.Certificate { return id.tls }

// RootPool is a pool of the trust anchors.
func (id *Identity) RootPool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range id.Roots {
		p.AddCert(r)
	}
	return p
}

// NewIdentity builds an Identity from its parts, checking them as newIdentity
// does. It exists for tests and tools that load certificates themselves.
func NewIdentity(chain []*x509.Certificate, key crypto.Signer, roots []*x509.Certificate) (*Identity, error) {
	return newIdentity(chain, key, roots)
}

// newIdentity checks that the parts fit together: the key matches the leaf,
// the leaf has exactly one SPIFFE ID, and the chain verifies to the roots.
func newIdentity(chain []*x509.Certificate, key crypto.Signer, roots []*x509.Certificate) (*Identity, error) {
	if len(chain) == 0 {
		return nil, fmt.Errorf("empty certificate chain")
	}
	leaf := chain[0]
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("the private key does not match the certificate")
	}
	if len(leaf.URIs) != 1 {
		return nil, fmt.Errorf("certificate has %d URI SANs, want exactly one SPIFFE ID", len(leaf.URIs))
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("certificate URI SAN: %w", err)
	}
	rootPool := x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: rootPool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: leaf.NotBefore.Add(time.Second)}); err != nil {
		return nil, fmt.Errorf("certificate does not chain to the pinned root: %w", err)
	}
	raw := make([][]byte, len(chain))
	for i, c := range chain {
		raw[i] = c.Raw
	}
	return &Identity{
		SPIFFEID: id, Chain: chain, Key: key, Roots: roots,
		tls: &tls.Certificate{Certificate: raw, PrivateKey: key, Leaf: leaf},
	}, nil
}
