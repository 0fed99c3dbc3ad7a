package provisioner

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// workerNameRE is the shape every worker name must have. Names end up in DNS
// labels and SPIFFE ID path segments, so they are restricted to a single
// lower-case DNS label; that rules out path traversal, dots and case games.
var workerNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func validWorkerName(name string) bool {
	return len(name) <= 63 && workerNameRE.MatchString(name)
}

// validateDNSName accepts lower-case LDH host names only. Wildcards,
// trailing dots, upper case and all-numeric top labels (which look like IP
// addresses) are refused, so that a name in an Identity always means exactly
// one host.
func validateDNSName(name string) error {
	if name == "" {
		return errors.New("empty DNS name")
	}
	if len(name) > 253 {
		return fmt.Errorf("DNS name %q is longer than 253 characters", name)
	}
	if strings.Contains(name, "*") {
		return fmt.Errorf("DNS name %q: wildcards are not allowed", name)
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if l == "" {
			return fmt.Errorf("DNS name %q has an empty label", name)
		}
		if len(l) > 63 {
			return fmt.Errorf("DNS name %q has a label longer than 63 characters", name)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("DNS name %q: label %q starts or ends with '-'", name, l)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("DNS name %q: invalid character %q (only lower-case letters, digits and '-')", name, c)
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return fmt.Errorf("DNS name %q: last label is numeric", name)
	}
	return nil
}

// parseIP parses a configured IP. Zones are refused because they cannot be
// put in a certificate; IPv4-mapped IPv6 is unmapped because x509 encodes it
// as IPv4 anyway.
func parseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	return a.Unmap(), nil
}

// Template placeholders. Only these two exist so that a template can never
// pull in anything a worker controls other than its (validated) name.
const (
	phWorker      = "{worker}"
	phTrustDomain = "{trustDomain}"
)

// checkTemplate reports unknown or unbalanced placeholders.
func checkTemplate(t string) error {
	rest := t
	for {
		open := strings.IndexByte(rest, '{')
		if cl := strings.IndexByte(rest, '}'); cl >= 0 && (open < 0 || cl < open) {
			return fmt.Errorf("unbalanced %q in %q", "}", t)
		}
		if open < 0 {
			return nil
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return fmt.Errorf("unterminated placeholder in %q", t)
		}
		ph := rest[open : open+end+1]
		if strings.Contains(ph[1:], "{") {
			return fmt.Errorf("unbalanced %q in %q", "{", t)
		}
		if ph != phWorker && ph != phTrustDomain {
			return fmt.Errorf("unknown placeholder %q", ph)
		}
		rest = rest[open+end+1:]
	}
}

func renderTemplate(t, worker, trustDomain string) string {
	return strings.NewReplacer(phWorker, worker, phTrustDomain, trustDomain).Replace(t)
}
