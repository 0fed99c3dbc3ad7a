package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"path"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// clientBackdate is subtracted from NotBefore of client certificates so that
// a server whose clock lags slightly behind ours still accepts them.
const clientBackdate = time.Minute

// IssueClientCert issues a client certificate (an X.509-SVID for id) signed
// by ca's intermediate, for example for an operator of the admin API. The
// certificate has a fresh ECDSA P-256 key, exactly one URI SAN (id), extended
// key usage clientAuth only (so it cannot serve TLS), key usage
// digitalSignature, cA=false, and the last path segment of id as its common
// name. It is valid from now minus one minute to now+lifetime, clamped to
// the intermediate's NotAfter.
//
// certPEM holds the leaf followed by the intermediate, so a peer that trusts
// only the root can build the chain; keyPEM is the PKCS#8 "PRIVATE KEY". The
// key is secret: callers must write it with restrictive permissions and never
// log it.
func IssueClientCert(ca *CA, id spiffeid.ID, lifetime time.Duration, now time.Time) (certPEM, keyPEM []byte, err error) {
	if ca == nil || ca.Intermediate == nil || ca.IntermediateKey == nil {
		return nil, nil, errors.New("pki: client certificate: CA with intermediate certificate and key is required")
	}
	if id.IsZero() {
		return nil, nil, errors.New("pki: client certificate: SPIFFE ID is required")
	}
	if lifetime <= 0 {
		return nil, nil, fmt.Errorf("pki: client certificate: lifetime %s must be positive", lifetime)
	}
	inter := ca.Intermediate
	notAfter := minTime(now.Add(lifetime), inter.NotAfter)
	if !notAfter.After(now) {
		return nil, nil, fmt.Errorf("pki: cannot issue client certificate: intermediate %q expired at %s",
			inter.Subject.CommonName, inter.NotAfter.UTC().Format(time.RFC3339))
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: generate client key: %w", err)
	}
	cn := path.Base(id.Path())
	if id.Path() == "" {
		cn = id.TrustDomain().Name()
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-clientBackdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	leaf, err := sign(tmpl, inter, &key.PublicKey, ca.IntermediateKey)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: sign client certificate: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: encode client key: %w", err)
	}
	certPEM = append(pemCert(leaf.Raw), pemCert(inter.Raw)...)
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	return certPEM, keyPEM, nil
}
