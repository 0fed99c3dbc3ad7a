package pki

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// RenewClientBefore is how long before its expiry an operator (client)
// certificate is reported as due for renewal: two weeks leave room for a
// holiday between the first warning and the last day.
const RenewClientBefore = 14 * 24 * time.Hour

// ReadClientCert reads the first certificate of a client certificate file
// and its SPIFFE ID (its one URI SAN).
func ReadClientCert(path string) (*x509.Certificate, spiffeid.ID, error) {
	cert, err := readCert(path)
	if err != nil {
		return nil, spiffeid.ID{}, err
	}
	if len(cert.URIs) != 1 {
		return nil, spiffeid.ID{}, fileErr(path, fmt.Errorf("the certificate has %d URI SANs; a client certificate of this CA has exactly one SPIFFE ID", len(cert.URIs)))
	}
	id, err := spiffeid.FromURI(cert.URIs[0])
	if err != nil {
		return nil, spiffeid.ID{}, fileErr(path, fmt.Errorf("URI SAN: %w", err))
	}
	return cert, id, nil
}

// ClientCertDue reports whether cert is within RenewClientBefore of its
// expiry at now (or past it), and how long it has left (negative once
// expired).
func ClientCertDue(cert *x509.Certificate, now time.Time) (bool, time.Duration) {
	left := cert.NotAfter.Sub(now)
	return left < RenewClientBefore, left
}

// RenewClientCert replaces the client certificate at certPath and its key
// at keyPath with a fresh pair for the same SPIFFE ID, issued by ca's
// intermediate (see IssueClientCert): the key first, then the certificate,
// each written atomically (key 0600, certificate 0644). The old
// certificate must have been issued under ca's root; it may have expired.
// A crash between the two writes leaves a pair that does not match: run
// the renewal again (it needs only the certificate).
func RenewClientCert(ca *CA, certPath, keyPath string, lifetime time.Duration, now time.Time) (*x509.Certificate, error) {
	if ca == nil || ca.Root == nil {
		return nil, errors.New("pki: renew: CA with a root is required")
	}
	old, id, err := ReadClientCert(certPath)
	if err != nil {
		return nil, err
	}
	if err := issuedUnder(ca, certPath, old); err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := IssueClientCert(ca, id, lifetime, now)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(keyPath, keyPEM, keyMode); err != nil {
		return nil, fileErr(keyPath, err)
	}
	if err := writeFileAtomic(certPath, certPEM, certMode); err != nil {
		return nil, fileErr(certPath, err)
	}
	leaf, _, err := ReadClientCert(certPath)
	return leaf, err
}

// issuedUnder checks that cert (with the intermediates after it in its
// file) chains to ca's root, at a time when it was valid.
func issuedUnder(ca *CA, path string, cert *x509.Certificate) error {
	inters := x509.NewCertPool()
	inters.AddCert(ca.Intermediate)
	if all, err := readCerts(path); err == nil {
		for _, c := range all[1:] {
			inters.AddCert(c)
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root)
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inters,
		CurrentTime: cert.NotBefore.Add(time.Minute),
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return fileErr(path, fmt.Errorf("not a client certificate of this CA: %w", err))
	}
	return nil
}

// readCerts returns every CERTIFICATE block of a PEM file.
func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fileErr(path, err)
	}
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fileErr(path, fmt.Errorf("parse certificate: %w", err))
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fileErr(path, fmt.Errorf("%w: want CERTIFICATE", ErrNoPEM))
	}
	return out, nil
}
