package server

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/stepca"
	"github.com/crank-platform/crank-ca/provisioner"
)

// Identities builds the worker identities of a worker-attestation
// provisioner from its configuration.
func Identities(cfg *config.Config, p *config.Provisioner) (*provisioner.Identities, error) {
	ic := provisioner.IdentitiesConfig{TrustDomain: cfg.TrustDomain}
	if p.Workers != nil {
		ic.Pattern = p.Workers.Pattern
		ic.DNSTemplates = p.Workers.DNSTemplates
		ic.IPs = p.Workers.IPs
		ic.SPIFFEIDTemplate = p.Workers.SPIFFEIDTemplate
	}
	for _, w := range p.Identities {
		ic.Workers = append(ic.Workers, provisioner.WorkerConfig{Name: w.Name, DNSNames: w.DNSNames, IPs: w.IPs, SPIFFEID: w.SPIFFEID})
	}
	ids, err := provisioner.NewIdentities(ic)
	if err != nil {
		return nil, fmt.Errorf("provisioner %q: %w", p.Name, err)
	}
	return ids, nil
}

// Provisioners translates the configured provisioners for the adapter,
// reporting every problem at once.
func Provisioners(cfg *config.Config) ([]stepca.Provisioner, error) {
	var (
		out  []stepca.Provisioner
		errs []error
	)
	for i := range cfg.Provisioners {
		p := &cfg.Provisioners[i]
		sp := stepca.Provisioner{
			Name:            p.Name,
			MinDuration:     p.Claims.MinCertDuration.Duration,
			DefaultDuration: p.Claims.DefaultCertDuration.Duration,
			MaxDuration:     p.Claims.MaxCertDuration.Duration,
		}
		switch p.Type {
		case config.TypeWorkerAttestation:
			sp.Kind = stepca.KindWorkers
			ids, err := Identities(cfg, p)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			sp.Identities = ids
		case config.TypeACME:
			sp.Kind = stepca.KindACME
			sp.Challenges = p.Challenges
			sp.RequireEAB = p.RequireEAB
			pol, err := namePolicy(cfg, p)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			sp.Policy = pol
			sp.DeniedURIDomains = []string{cfg.TrustDomain}
			if vp := p.ValidationPorts; vp != nil {
				sp.HTTP01Port, sp.TLSALPN01Port = vp.HTTP01, vp.TLSALPN01
			}
			// Validation may dial what the policy may certify, plus what
			// the egress policy allows.
			sp.EgressAllowed = append(sp.EgressAllowed, sp.Policy.AllowedIPRanges...)
			if e := p.Egress; e != nil {
				for _, r := range e.AllowedIPRanges {
					pfx, err := netip.ParsePrefix(r)
					if err != nil {
						errs = append(errs, fmt.Errorf("provisioner %q: egress.allowedIPRanges: %w", p.Name, err))
						continue
					}
					sp.EgressAllowed = append(sp.EgressAllowed, pfx)
				}
			}
		default:
			errs = append(errs, fmt.Errorf("provisioner %q: unknown type %q", p.Name, p.Type))
			continue
		}
		if l := p.Limits; l != nil {
			sp.Limits = stepca.Limits{
				MaxIdentifiersPerOrder:     l.MaxIdentifiersPerOrder,
				MaxPendingOrdersPerAccount: l.MaxPendingOrdersPerAccount,
				NewAccountsPerMinute:       l.NewAccountsPerMinute,
				NewOrdersPerMinute:         l.NewOrdersPerMinute,
			}
		}
		out = append(out, sp)
	}
	return out, errors.Join(errs...)
}

// namePolicy is an acme provisioner's configured policy plus, denied, every
// worker-attestation namespace: validation already refuses a policy that
// overlaps one, and this keeps the run-time check fail-closed should an
// overlap slip past it.
func namePolicy(cfg *config.Config, p *config.Provisioner) (provisioner.NamePolicy, error) {
	var pol provisioner.NamePolicy
	if c := p.Policy; c != nil {
		pol.AllowAnyDNS = c.AllowAnyDNS
		pol.AllowedDNSSuffixes = append(pol.AllowedDNSSuffixes, c.AllowedDNSSuffixes...)
		pol.DeniedDNSSuffixes = append(pol.DeniedDNSSuffixes, c.DeniedDNSSuffixes...)
		for _, r := range c.AllowedIPRanges {
			pfx, err := netip.ParsePrefix(r)
			if err != nil {
				return pol, fmt.Errorf("provisioner %q: allowedIPRanges: %w", p.Name, err)
			}
			pol.AllowedIPRanges = append(pol.AllowedIPRanges, pfx)
		}
	}
	for _, ns := range cfg.WorkerNamespaces() {
		for _, s := range ns.DNSSuffixes {
			if s == "" {
				return pol, fmt.Errorf("provisioner %q: worker-attestation provisioner %q may issue any DNS name", p.Name, ns.Provisioner)
			}
			pol.DeniedDNSSuffixes = append(pol.DeniedDNSSuffixes, s)
		}
		pol.DeniedDNSSuffixes = append(pol.DeniedDNSSuffixes, ns.DNSNames...)
		pol.DeniedIPs = append(pol.DeniedIPs, ns.IPs...)
	}
	return pol, nil
}

// Storage translates the storage settings for the adapter.
func Storage(cfg *config.Config) stepca.Storage {
	switch cfg.Storage.Type {
	case config.StoragePostgreSQL:
		return stepca.Storage{Type: "postgresql", DataSource: cfg.Storage.DSN}
	default:
		return stepca.Storage{Type: "bbolt", DataSource: cfg.Resolve(cfg.Storage.Path)}
	}
}

// LoadTokenKey reads the join-token secret named by the configuration.
func LoadTokenKey(cfg *config.Config) (*provisioner.TokenKey, error) {
	path := cfg.Resolve(cfg.TokenKeyFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token key: %w", err)
	}
	k, err := provisioner.ParseTokenKey(b)
	if err != nil {
		return nil, fmt.Errorf("token key %s: %w", path, err)
	}
	return k, nil
}
