package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

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
			sp.MaxBindingAge = p.MaxBindingAge.Duration
			for _, a := range p.Attestors {
				sp.Attestors = append(sp.Attestors, a.Name)
			}
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

// Attestors builds the JWT attestors of a worker-attestation provisioner.
// Files (keys, roots, the TokenReview token) are read here, so a missing
// one fails start-up rather than the first attestation.
func Attestors(cfg *config.Config, p *config.Provisioner, ids *provisioner.Identities, now func() time.Time) ([]*provisioner.JWTAttestor, error) {
	var (
		out  []*provisioner.JWTAttestor
		errs []error
	)
	for i, a := range p.Attestors {
		path := fmt.Sprintf("provisioners %q attestors[%d]", p.Name, i)
		client, err := httpsClient(cfg.Resolve(a.CAFile))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.caFile: %w", path, err))
			continue
		}
		ac := provisioner.JWTAttestorConfig{
			Name: a.Name, Issuer: a.Issuer, Audience: a.Audience,
			MaxTokenAge: a.MaxTokenAge.Duration, TrustDomain: cfg.TrustDomain,
			DNSTemplates: a.DNSTemplates, WorkerTemplate: a.Worker, Identities: ids, Now: now,
		}
		switch a.KeySource {
		case config.KeySourceDiscovery:
			ac.Keys, err = provisioner.NewJWKS(provisioner.JWKSConfig{Discovery: a.Issuer, Client: client, Now: now})
		case config.KeySourceJWKSURL:
			ac.Keys, err = provisioner.NewJWKS(provisioner.JWKSConfig{URL: a.JWKSURL, Client: client, Now: now})
		case config.KeySourceJWKSFile:
			ac.Keys, err = provisioner.NewJWKS(provisioner.JWKSConfig{File: cfg.Resolve(a.JWKSFile), Now: now})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
			continue
		}
		switch a.Type {
		case config.AttestorKubernetes:
			ac.Kind = provisioner.JWTKubernetes
			for _, r := range a.Allow {
				ac.Allow = append(ac.Allow, provisioner.ServiceAccountRule{Namespace: r.Namespace, ServiceAccount: r.ServiceAccount})
			}
		case config.AttestorOIDC:
			ac.Kind = provisioner.JWTOIDC
		}
		if tr := a.TokenReview; tr != nil {
			rc, err := httpsClient(cfg.Resolve(tr.CAFile))
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.tokenReview.caFile: %w", path, err))
				continue
			}
			tok, err := os.ReadFile(cfg.Resolve(tr.TokenFile))
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.tokenReview.tokenFile: %w", path, err))
				continue
			}
			rv, err := provisioner.NewKubernetesTokenReviewer(provisioner.TokenReviewConfig{URL: tr.URL, BearerToken: strings.TrimSpace(string(tok)), Client: rc})
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", path, err))
				continue
			}
			ac.Reviewer = rv
		}
		att, err := provisioner.NewJWTAttestor(ac)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
			continue
		}
		out = append(out, att)
	}
	return out, errors.Join(errs...)
}

// httpsClient fetches keys and asks API servers: bounded in time, TLS 1.2+,
// the roots of caFile or the system's, no proxy from the environment.
func httpsClient(caFile string) (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
		}
		tc.RootCAs = pool
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, Proxy: nil}}, nil
}

// Storage translates the storage settings for the adapter.
func Storage(cfg *config.Config) stepca.Storage {
	switch cfg.Storage.Type {
	case config.StoragePostgreSQL:
		return stepca.Storage{Type: "postgresql", DataSource: cfg.Storage.DSN, MaxConns: int32(cfg.Storage.MaxConns)} //nolint:gosec // validated to 1..1000
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
