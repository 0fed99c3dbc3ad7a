package provisioner

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Identity is what a worker is allowed to be: the only names a certificate
// issued to it may carry. It is the unit of authorization; everything a
// worker asks for is checked against it.
type Identity struct {
	Worker   string
	SPIFFEID spiffeid.ID
	DNSNames []string     // lower-case, sorted, unique
	IPs      []netip.Addr // sorted, unique, IPv4-mapped addresses unmapped
}

// Covers reports whether an ACME identifier (typ "dns" or "ip", value as
// sent by the client) is within the identity.
//
// DNS names compare case-insensitively because DNS does. Wildcards are never
// covered: an identity lists concrete names, and a wildcard would let one
// worker answer for names it was never given. IPs compare as parsed values
// so that "::1" and "0:0::1" (or "::ffff:10.0.0.1" and "10.0.0.1", which
// x509 encodes identically) match.
func (id Identity) Covers(typ, value string) bool {
	switch typ {
	case "dns":
		if value == "" || strings.Contains(value, "*") {
			return false
		}
		for _, n := range id.DNSNames {
			if strings.EqualFold(n, value) {
				return true
			}
		}
		return false
	case "ip":
		addr, err := netip.ParseAddr(value)
		if err != nil || addr.Zone() != "" {
			return false
		}
		addr = addr.Unmap()
		for _, ip := range id.IPs {
			if ip.Unmap() == addr {
				return true
			}
		}
		return false
	default:
		return false
	}
}

// CheckIdentifier is Covers as an error, wrapping ErrNameNotAllowed with the
// identifier and worker so the refusal can be logged and returned as is.
func (id Identity) CheckIdentifier(typ, value string) error {
	if id.Covers(typ, value) {
		return nil
	}
	return fmt.Errorf("%w: %s identifier %q is not allowed for worker %q", ErrNameNotAllowed, typ, value, id.Worker)
}

// clone returns a deep copy so callers cannot mutate shared state held by
// Identities.
func (id Identity) clone() Identity {
	id.DNSNames = slices.Clone(id.DNSNames)
	id.IPs = slices.Clone(id.IPs)
	return id
}

// normalizeDNS lower-cases, sorts and de-duplicates, establishing the
// Identity invariant.
func normalizeDNS(names []string) []string {
	if len(names) == 0 {
		return nil
	}
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = strings.ToLower(n)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// normalizeIPs sorts and de-duplicates, establishing the Identity invariant.
func normalizeIPs(ips []netip.Addr) []netip.Addr {
	if len(ips) == 0 {
		return nil
	}
	out := slices.Clone(ips)
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}
