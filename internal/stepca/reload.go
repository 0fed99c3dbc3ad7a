package stepca

import (
	"context"
	"errors"
	"fmt"

	"github.com/smallstep/certificates/acme"
	"github.com/smallstep/certificates/authority"
	authconfig "github.com/smallstep/certificates/authority/config"

	"github.com/crank-platform/crank-ca/internal/limit"
)

// A configuration reload builds a second CA on the store the first one
// opened (Rebuild) and swaps the HTTP handler; requests already inside the
// old CA finish there. What the two share is what must not exist twice for
// one store: the database handle and crank-ca's store over it, the nonce
// replay set (a nonce spent at either is spent), the authority's held
// certificate records, the pending-order counts and the background loops.
// What is new is what the configuration decides: the provisioners and their
// limits, the token key, the signing intermediate, ARI and CRL settings.

// CRLReasonIssuer is the reason RefreshIssuerCRL gives: the stored CRL is
// signed by another intermediate than the one this CA signs with (the
// intermediate was rotated).
const CRLReasonIssuer = "issuer changed"

// Rebuild returns a CA that serves cfg on c's open store. cfg's Storage,
// Logger, Audit and Now are not used: those are c's; cfg.Listen must be
// the address the server listens on. c keeps
// working for the requests that use it; once none does, Retire it. Close
// only the last CA built (it releases the shared store for all of them).
func (c *CA) Rebuild(ctx context.Context, cfg Config) (*CA, error) {
	cfg.Storage = Storage{Type: "-", DataSource: "-"} // c's; only validated
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("stepca: %w", err)
	}
	provs, specs := stepProvisioners(cfg.Provisioners)
	auth, err := authority.NewEmbedded(
		authority.WithConfig(&authconfig.Config{
			CRL: crlConfig(cfg),
			AuthorityConfig: &authconfig.AuthConfig{
				Provisioners:         provs,
				DisableIssuedAtCheck: true,
			},
		}),
		authority.WithDatabase(c.db.held),
		authority.WithX509RootCerts(cfg.Root),
		authority.WithX509Signer(cfg.Intermediate, cfg.Signer),
		authority.WithX509Enforcers(issuerLifetimeEnforcer{issuer: cfg.Intermediate}),
		authority.WithQuietInit(),
	)
	if err != nil {
		return nil, fmt.Errorf("stepca: build authority: %w", err)
	}
	if err := ctx.Err(); err != nil {
		_ = auth.Shutdown()
		return nil, err
	}
	tokens := *c.linker.tokens
	tokens.key = cfg.TokenKey
	db := *c.db
	db.specs = specsByID(specs)
	db.tokens = &tokens
	db.isRevoked = func(serial string) bool { r, _ := auth.IsRevoked(serial); return r }
	lk := *c.linker
	lk.Linker = acme.NewLinker("", "acme")
	lk.specs = specs
	lk.clients = validationClients(cfg.Provisioners, cfg.Listen, c.log)
	lk.tokens = &tokens
	lk.db = &db
	if !sameRates(c.linker.specs, specs) {
		// Buckets keep the size they were made with: changed rates need
		// new buckets (which start full).
		lk.rates = limit.NewRates(c.now)
	}
	n := *c
	n.ari = cfg.ARI
	n.auth = auth
	n.db = &db
	n.linker = &lk
	n.handler = n.routes()
	return &n, nil
}

// sameRates reports whether every provisioner keeps its per-minute rates.
func sameRates(old, cur map[string]*Provisioner) bool {
	for name, p := range cur {
		o := old[name]
		if o == nil || o.Limits.NewAccountsPerMinute != p.Limits.NewAccountsPerMinute || o.Limits.NewOrdersPerMinute != p.Limits.NewOrdersPerMinute {
			return false
		}
	}
	return true
}

// Retire shuts down the authority of a CA that Rebuild replaced, leaving
// the shared store open. Call it once no request uses c any more.
func (c *CA) Retire() error {
	return c.auth.Shutdown()
}

// RefreshIssuerCRL generates a CRL signed by c's intermediate when the
// stored one was signed by another (after a rotation), so that workers
// holding certificates of the new intermediate get a CRL they accept at
// once rather than when the old one is due. Otherwise it changes nothing.
func (c *CA) RefreshIssuerCRL(ctx context.Context) (CRLRefresh, error) {
	if err := ctx.Err(); err != nil {
		return CRLRefresh{}, err
	}
	issuer := c.auth.GetIntermediateCertificate()
	if issuer == nil {
		return CRLRefresh{}, errors.New("crl: the authority has no intermediate")
	}
	stored, err := c.readStoredCRL()
	if err != nil || stored.crl == nil || stored.crl.CheckSignatureFrom(issuer) == nil {
		return CRLRefresh{}, err
	}
	now := c.now()
	entries, err := c.listable(now)
	if err != nil {
		return CRLRefresh{}, err
	}
	validity, idp := c.crlSettings()
	r, err := c.generateCRL(stored, entries, now, validity, idp)
	if err != nil {
		return CRLRefresh{}, err
	}
	r.Reason = CRLReasonIssuer
	return r, nil
}
