package provisioner

import (
	"crypto/x509"
	"fmt"
	"net/netip"
	"strings"
)

// NamePolicy decides which identifiers an ordinary ACME provisioner may
// certify. It is the one function crank-ca asks at every place a name can
// enter a certificate: at new-order on the request as crank-ca decodes it,
// again on the order as smallstep parsed it, and at finalize on the
// certificate about to be signed. A bug in one decoder is then not enough to
// obtain a name outside the policy.
//
// Denials take precedence over allowances; the worker-attestation
// namespaces are denied this way, so the ad-hoc directory can never issue a
// worker's name.
type NamePolicy struct {
	// AllowAnyDNS allows every syntactically valid DNS name not denied.
	AllowAnyDNS bool
	// AllowedDNSSuffixes and DeniedDNSSuffixes match a name equal to the
	// suffix or ending in "." + suffix, at any depth. A leading "." is
	// ignored. A wildcard "*.x" is judged by x.
	AllowedDNSSuffixes []string
	DeniedDNSSuffixes  []string
	// AllowedIPRanges admit IP identifiers; DeniedIPs take precedence.
	AllowedIPRanges []netip.Prefix
	DeniedIPs       []netip.Addr
}

// Check returns nil when the policy admits the ACME identifier (typ "dns"
// or "ip"), and otherwise an error wrapping ErrNameNotAllowed that says why.
// Any other identifier type is refused: a policy cannot admit what it does
// not understand.
func (p NamePolicy) Check(typ, value string) error {
	switch typ {
	case "dns":
		if len(value) > 253 {
			return fmt.Errorf("%w: %q is longer than 253 characters", ErrNameNotAllowed, truncate(value))
		}
		for i := 0; i < len(value); i++ {
			// Unicode case folding would map e.g. the Kelvin sign onto
			// "k"; DNS names in certificates are ASCII (IDNs as A-labels).
			if value[i] >= 0x80 {
				return fmt.Errorf("%w: %q is not an ASCII DNS name (use the xn-- form)", ErrNameNotAllowed, truncate(value))
			}
		}
		name := strings.ToLower(value)
		base := strings.TrimPrefix(name, "*.")
		if err := validateDNSName(base); err != nil {
			return fmt.Errorf("%w: %q: %w", ErrNameNotAllowed, truncate(value), err)
		}
		for _, d := range p.DeniedDNSSuffixes {
			if withinSuffix(base, d) {
				return fmt.Errorf("%w: %q is in a denied namespace (%s)", ErrNameNotAllowed, value, strings.TrimPrefix(d, "."))
			}
		}
		if p.AllowAnyDNS {
			return nil
		}
		for _, a := range p.AllowedDNSSuffixes {
			if withinSuffix(base, a) {
				return nil
			}
		}
		return fmt.Errorf("%w: %q is outside the allowed DNS suffixes", ErrNameNotAllowed, value)
	case "ip":
		addr, err := netip.ParseAddr(value)
		if err != nil || addr.Zone() != "" {
			return fmt.Errorf("%w: %q is not an IP address", ErrNameNotAllowed, truncate(value))
		}
		addr = addr.Unmap()
		for _, d := range p.DeniedIPs {
			if d.Unmap() == addr {
				return fmt.Errorf("%w: %s belongs to a worker identity", ErrNameNotAllowed, addr)
			}
		}
		for _, r := range p.AllowedIPRanges {
			if r.Contains(addr) {
				return nil
			}
		}
		return fmt.Errorf("%w: %s is outside the allowed IP ranges", ErrNameNotAllowed, addr)
	default:
		return fmt.Errorf("%w: identifier type %q is not supported", ErrNameNotAllowed, truncate(typ))
	}
}

// CheckCertificate applies Check to every name of a certificate about to be
// signed. An ordinary ACME provisioner certifies DNS names and IPs only:
// URIs (a SPIFFE ID would make the holder a worker) and e-mail addresses
// are refused, and a common name must repeat one of the SANs.
func (p NamePolicy) CheckCertificate(cert *x509.Certificate) error {
	if len(cert.URIs) > 0 {
		return fmt.Errorf("%w: URI SANs (%s) are not issued here", ErrNameNotAllowed, truncate(cert.URIs[0].String()))
	}
	if len(cert.EmailAddresses) > 0 {
		return fmt.Errorf("%w: e-mail SANs are not issued here", ErrNameNotAllowed)
	}
	if len(cert.DNSNames)+len(cert.IPAddresses) == 0 {
		return fmt.Errorf("%w: the certificate names nothing", ErrNameNotAllowed)
	}
	for _, n := range cert.DNSNames {
		if err := p.Check("dns", n); err != nil {
			return err
		}
	}
	for _, ip := range cert.IPAddresses {
		if err := p.Check("ip", ip.String()); err != nil {
			return err
		}
	}
	if cn := cert.Subject.CommonName; cn != "" {
		for _, n := range cert.DNSNames {
			if strings.EqualFold(n, cn) {
				return nil
			}
		}
		for _, ip := range cert.IPAddresses {
			if a, err := netip.ParseAddr(cn); err == nil && a.Unmap().String() == ip.String() {
				return nil
			}
		}
		return fmt.Errorf("%w: common name %q is not one of the certificate's names", ErrNameNotAllowed, truncate(cn))
	}
	return nil
}

// withinSuffix reports whether name equals suffix or lies under it.
func withinSuffix(name, suffix string) bool {
	suffix = strings.ToLower(strings.TrimPrefix(suffix, "."))
	return suffix != "" && (name == suffix || strings.HasSuffix(name, "."+suffix))
}

// truncate bounds attacker-chosen text quoted in errors.
func truncate(s string) string {
	const n = 80
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
