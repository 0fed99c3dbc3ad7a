package config

import (
	"fmt"
	"net/netip"
	"strings"
)

// Namespace is everything a worker-attestation provisioner can put in a
// certificate. ACME provisioners must never issue inside it (a certificate
// for a worker's name from the ad-hoc directory would let anyone with an
// http-01 responder impersonate a worker), and two worker provisioners must
// not mint the same SPIFFE ID.
type Namespace struct {
	// Provisioner is the worker-attestation provisioner's name.
	Provisioner string
	// DNSSuffixes: every name strictly under a suffix may be a worker name
	// ("workers.crank.internal" for "{worker}.workers.{trustDomain}"). The
	// empty suffix stands for every name.
	DNSSuffixes []string
	// DNSNames are exact worker names (identities, templates without
	// {worker}).
	DNSNames []string
	IPs      []netip.Addr
	// SPIFFEPrefixes: every ID starting with a prefix may be a worker's
	// ("spiffe://crank.internal/worker/"); SPIFFEIDs are exact IDs.
	SPIFFEPrefixes []string
	SPIFFEIDs      []string
}

// WorkerNamespaces returns the namespace of every worker-attestation
// provisioner, rendered for the configured trust domain. Validation uses it
// to refuse overlaps; the server uses it to deny those names at run time
// too, so an overlap that slipped past validation is still refused.
func (c *Config) WorkerNamespaces() []Namespace {
	var out []Namespace
	for _, p := range c.Provisioners {
		if p.Type != TypeWorkerAttestation {
			continue
		}
		ns := Namespace{Provisioner: p.Name}
		render := func(t, worker string) string {
			t = strings.ReplaceAll(t, "{trustDomain}", c.TrustDomain)
			if worker != "" {
				t = strings.ReplaceAll(t, "{worker}", worker)
			}
			return t
		}
		idTemplate := DefaultSPIFFEIDTemplate
		if w := p.Workers; w != nil {
			if w.SPIFFEIDTemplate != "" {
				idTemplate = w.SPIFFEIDTemplate
			}
			for _, t := range w.DNSTemplates {
				ns.addDNSTemplate(render(t, ""))
			}
			ns.IPs = appendAddrs(ns.IPs, w.IPs)
			if prefix, _, ok := strings.Cut(render(idTemplate, ""), "{worker}"); ok {
				ns.SPIFFEPrefixes = append(ns.SPIFFEPrefixes, prefix)
			}
		}
		for _, a := range p.Attestors {
			if a.Type != AttestorKubernetes {
				continue // OIDC attestors map to the workers above
			}
			ns.SPIFFEPrefixes = append(ns.SPIFFEPrefixes, "spiffe://"+c.TrustDomain+"/ns/")
			for _, t := range a.DNSTemplates {
				ns.addDNSTemplate(render(t, ""))
			}
		}
		for _, id := range p.Identities {
			ns.DNSNames = append(ns.DNSNames, id.DNSNames...)
			ns.IPs = appendAddrs(ns.IPs, id.IPs)
			t := id.SPIFFEID
			if t == "" {
				t = idTemplate
			}
			ns.SPIFFEIDs = append(ns.SPIFFEIDs, render(t, id.Name))
		}
		out = append(out, ns)
	}
	return out
}

// addDNSTemplate adds what a DNS template (trust domain rendered) can
// produce: every name under the labels after its last placeholder, or the
// name itself when it has none.
func (ns *Namespace) addDNSTemplate(t string) {
	labels := strings.Split(t, ".")
	at := -1
	for i, l := range labels {
		if strings.Contains(l, "{") {
			at = i
		}
	}
	if at < 0 {
		ns.DNSNames = append(ns.DNSNames, t)
		return
	}
	ns.DNSSuffixes = append(ns.DNSSuffixes, strings.Join(labels[at+1:], "."))
}

func appendAddrs(dst []netip.Addr, ips []string) []netip.Addr {
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil {
			dst = append(dst, a.Unmap())
		}
	}
	return dst
}

// dnsWithin reports whether name equals suffix or lies under it; the empty
// suffix contains every name.
func dnsWithin(name, suffix string) bool {
	name, suffix = strings.TrimPrefix(name, "."), strings.TrimPrefix(suffix, ".")
	return suffix == "" || name == suffix || strings.HasSuffix(name, "."+suffix)
}

// validateNamespaces refuses ACME policies that would allow a worker name
// or IP, and worker provisioners whose SPIFFE IDs could collide.
func (c *Config) validateNamespaces(ps *problems) {
	spaces := c.WorkerNamespaces()
	for i, p := range c.Provisioners {
		if p.Type != TypeACME || p.Policy == nil {
			continue
		}
		path := fmt.Sprintf("provisioners[%d].policy", i)
		pol := p.Policy
		denied := func(name string) bool {
			for _, d := range pol.DeniedDNSSuffixes {
				if dnsWithin(name, d) {
					return true
				}
			}
			return false
		}
		for _, ns := range spaces {
			for _, s := range ns.DNSSuffixes {
				if s == "" {
					ps.addf(path, "worker-attestation provisioner %q may issue any DNS name (a DNS template is only {worker}); no acme provisioner can be configured beside it", ns.Provisioner)
					continue
				}
				if denied(s) {
					continue
				}
				overlaps := pol.AllowAnyDNS
				for _, a := range pol.AllowedDNSSuffixes {
					// a contains the worker names, or lies inside them.
					if dnsWithin(s, a) || (dnsWithin(a, s) && !denied(a)) {
						overlaps = true
					}
				}
				if overlaps {
					ps.addf(path+".deniedDNSSuffixes", "must contain %q: the policy allows names under it, which worker-attestation provisioner %q issues", s, ns.Provisioner)
				}
			}
			for _, n := range ns.DNSNames {
				if denied(n) {
					continue
				}
				allowed := pol.AllowAnyDNS
				for _, a := range pol.AllowedDNSSuffixes {
					allowed = allowed || dnsWithin(n, a)
				}
				if allowed {
					ps.addf(path+".deniedDNSSuffixes", "must contain %q: the policy allows it and worker-attestation provisioner %q issues it", n, ns.Provisioner)
				}
			}
			for _, ip := range ns.IPs {
				for j, r := range pol.AllowedIPRanges {
					if pfx, err := netip.ParsePrefix(r); err == nil && pfx.Contains(ip) {
						ps.addf(fmt.Sprintf("%s.allowedIPRanges[%d]", path, j), "contains %s, an IP address of worker-attestation provisioner %q; narrow the range", ip, ns.Provisioner)
					}
				}
			}
		}
	}
	for i := range spaces {
		for j := i + 1; j < len(spaces); j++ {
			if id, ok := spiffeOverlap(spaces[i], spaces[j]); ok {
				ps.addf("provisioners", "worker-attestation provisioners %q and %q could both issue SPIFFE ID %s; give them distinct spiffeIDTemplate prefixes", spaces[i].Provisioner, spaces[j].Provisioner, id)
			}
		}
	}
}

// spiffeOverlap reports an ID (or ID prefix) both namespaces may mint.
func spiffeOverlap(a, b Namespace) (string, bool) {
	for _, pa := range a.SPIFFEPrefixes {
		for _, pb := range b.SPIFFEPrefixes {
			if strings.HasPrefix(pa, pb) || strings.HasPrefix(pb, pa) {
				return longer(pa, pb) + "...", true
			}
		}
	}
	for _, x := range [][2]Namespace{{a, b}, {b, a}} {
		for _, id := range x[1].SPIFFEIDs {
			for _, p := range x[0].SPIFFEPrefixes {
				if strings.HasPrefix(id, p) {
					return id, true
				}
			}
		}
	}
	for _, ia := range a.SPIFFEIDs {
		for _, ib := range b.SPIFFEIDs {
			if ia == ib {
				return ia, true
			}
		}
	}
	return "", false
}

func longer(a, b string) string {
	if len(a) >= len(b) {
		return a
	}
	return b
}

// workerSPIFFEOwner names the worker provisioner whose namespace holds id.
func (c *Config) workerSPIFFEOwner(id string) (string, bool) {
	for _, ns := range c.WorkerNamespaces() {
		for _, p := range ns.SPIFFEPrefixes {
			if strings.HasPrefix(id, p) {
				return ns.Provisioner, true
			}
		}
		for _, x := range ns.SPIFFEIDs {
			if x == id {
				return ns.Provisioner, true
			}
		}
	}
	return "", false
}
