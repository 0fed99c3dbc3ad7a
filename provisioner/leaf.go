package provisioner

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"net"
	"net/url"
	"strings"
)

// Extensions whose meaning ApplyLeaf owns. A template's ExtraExtensions
// override the struct fields in x509.CreateCertificate, so any of these left
// in ExtraExtensions (e.g. copied from a CSR) would silently undo the profile.
var leafOwnedExtensions = []asn1.ObjectIdentifier{
	{2, 5, 29, 17}, // subjectAltName
	{2, 5, 29, 15}, // keyUsage
	{2, 5, 29, 37}, // extKeyUsage
	{2, 5, 29, 19}, // basicConstraints
	{2, 5, 29, 30}, // nameConstraints: meaningless on a leaf, never allowed
}

// ApplyLeaf turns a certificate template, about to be signed by the CA, into
// the SPIFFE X.509-SVID leaf profile for this identity, whatever the CSR
// asked for. The identity, not the requester, decides every name and usage:
//
//   - URIs = exactly [SPIFFEID]; DNSNames = id.DNSNames; IPAddresses = id.IPs;
//     no e-mail addresses;
//   - KeyUsage = digitalSignature only; ExtKeyUsage = serverAuth, clientAuth;
//   - basic constraints present with cA=false;
//   - Subject = CN only if the CN is one of id.DNSNames, else empty (then
//     x509 marks the SAN extension critical, as RFC 5280 requires);
//   - name constraints and conflicting ExtraExtensions are removed.
//
// It fails only if the identity is unusable (no SPIFFE ID) or cert is nil.
func (id Identity) ApplyLeaf(cert *x509.Certificate) error {
	if cert == nil {
		return fmt.Errorf("%w: nil certificate template", ErrInvalidIdentity)
	}
	if id.SPIFFEID.IsZero() {
		return fmt.Errorf("%w: worker %q has no SPIFFE ID", ErrInvalidIdentity, id.Worker)
	}
	cert.URIs = []*url.URL{id.SPIFFEID.URL()}
	cert.DNSNames = nil
	if len(id.DNSNames) > 0 {
		cert.DNSNames = append([]string(nil), id.DNSNames...)
	}
	cert.IPAddresses = nil
	for _, ip := range id.IPs {
		cert.IPAddresses = append(cert.IPAddresses, net.IP(ip.Unmap().AsSlice()))
	}
	cert.EmailAddresses = nil

	cert.KeyUsage = x509.KeyUsageDigitalSignature
	cert.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	cert.UnknownExtKeyUsage = nil

	cert.BasicConstraintsValid = true
	cert.IsCA = false
	cert.MaxPathLen = 0
	cert.MaxPathLenZero = false

	cert.PermittedDNSDomainsCritical = false
	cert.PermittedDNSDomains = nil
	cert.ExcludedDNSDomains = nil
	cert.PermittedIPRanges = nil
	cert.ExcludedIPRanges = nil
	cert.PermittedEmailAddresses = nil
	cert.ExcludedEmailAddresses = nil
	cert.PermittedURIDomains = nil
	cert.ExcludedURIDomains = nil

	subject := pkix.Name{}
	for _, n := range id.DNSNames {
		if cert.Subject.CommonName != "" && strings.EqualFold(cert.Subject.CommonName, n) {
			subject.CommonName = n
			break
		}
	}
	cert.Subject = subject
	// RawSubject takes precedence over Subject in CreateCertificate.
	cert.RawSubject = nil

	kept := cert.ExtraExtensions[:0:0]
	for _, ext := range cert.ExtraExtensions {
		if !isLeafOwned(ext.Id) {
			kept = append(kept, ext)
		}
	}
	cert.ExtraExtensions = kept
	if len(cert.ExtraExtensions) == 0 {
		cert.ExtraExtensions = nil
	}
	return nil
}

func isLeafOwned(oid asn1.ObjectIdentifier) bool {
	for _, o := range leafOwnedExtensions {
		if o.Equal(oid) {
			return true
		}
	}
	return false
}
