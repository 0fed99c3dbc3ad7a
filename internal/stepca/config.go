package stepca

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/crank-platform/crank-ca/internal/ari"
	"github.com/crank-platform/crank-ca/provisioner"
)

// Kind says which flavour of ACME provisioner a Provisioner is.
type Kind int

const (
	// KindWorkers is the worker-attestation provisioner: EAB with join tokens,
	// pre-authorized orders, SPIFFE leaves.
	KindWorkers Kind = iota + 1
	// KindACME is an ordinary ACME provisioner with real challenges.
	KindACME
)

func (k Kind) String() string {
	switch k {
	case KindWorkers:
		return "worker-attestation"
	case KindACME:
		return "acme"
	default:
		return fmt.Sprintf("Kind(%d)", int(k))
	}
}

// Provisioner describes one ACME directory served at /acme/<Name>/directory.
type Provisioner struct {
	Name string
	Kind Kind

	// Lifetime claims: MinDuration <= DefaultDuration <= MaxDuration.
	MinDuration     time.Duration
	DefaultDuration time.Duration
	MaxDuration     time.Duration

	// Identities is required for KindWorkers.
	Identities *provisioner.Identities
	// Attestors names the JWT attestors of a worker provisioner: accounts
	// bound through one stay usable only while it is configured, and for
	// MaxBindingAge after binding.
	Attestors     []string
	MaxBindingAge time.Duration

	// Limits bound what one client can make the CA do.
	Limits Limits

	// The fields below apply to KindACME.
	Challenges []string // http-01, tls-alpn-01, dns-01
	RequireEAB bool
	// Policy is checked at new-order (twice) and at finalize; it already
	// denies the worker-attestation namespaces.
	Policy provisioner.NamePolicy
	// DeniedURIDomains are URI hosts (the trust domain) smallstep's own
	// policy engine refuses too.
	DeniedURIDomains []string
	// HTTP01Port and TLSALPN01Port move the ports the CA dials when it
	// validates challenges. Zero means 80 and 443. Development and tests only.
	HTTP01Port    int
	TLSALPN01Port int
	// EgressAllowed are ranges the validation client may dial although
	// they are in its deny list (loopback, link-local, private, ...).
	EgressAllowed []netip.Prefix
}

// Limits are the per-provisioner bounds of issue 7: identifiers per order,
// pending orders per account, and per-client-address rates.
type Limits struct {
	MaxIdentifiersPerOrder     int
	MaxPendingOrdersPerAccount int
	NewAccountsPerMinute       int
	NewOrdersPerMinute         int
}

// identity resolves the identity of a token or binding: the attested
// identity it carries (while its attestor is still configured), or else the
// configured worker it names.
func (p *Provisioner) identity(worker, attestor, spiffeID string, dnsNames, ips []string) (provisioner.Identity, error) {
	if spiffeID == "" {
		id, err := p.Identities.Lookup(worker)
		if err != nil {
			return provisioner.Identity{}, fmt.Errorf("worker %q is not a known identity", worker)
		}
		return id, nil
	}
	if !slices.Contains(p.Attestors, attestor) {
		return provisioner.Identity{}, fmt.Errorf("attestor %q is no longer configured on provisioner %q", attestor, p.Name)
	}
	id, err := provisioner.AttestedIdentity(worker, spiffeID, dnsNames, ips)
	if err != nil {
		return provisioner.Identity{}, fmt.Errorf("the attested identity of %q is not valid: %w", worker, err)
	}
	return id, nil
}

// usesTokens reports whether accounts of p register with crank-ca's
// stateless EAB credentials (and must therefore be bound before ordering).
func (p *Provisioner) usesTokens() bool {
	return p.Kind == KindWorkers || p.RequireEAB
}

// id is the provisioner ID smallstep stores in orders and EAB keys. It is set
// explicitly because smallstep's EAB code reads the raw field while new-order
// calls GetID(); a mismatch would turn every order into a 401.
func (p *Provisioner) id() string { return "acme/" + p.Name }

// Storage selects the nosql driver smallstep opens.
type Storage struct {
	// Type is a smallstep/nosql driver name: "bbolt", "postgresql" (and, for
	// measurements only, "badgerv2").
	Type string
	// DataSource is a file path for embedded stores or a DSN for PostgreSQL.
	DataSource string
	// MaxConns sizes the PostgreSQL connection pool.
	MaxConns int32
}

// Config is everything New needs.
type Config struct {
	Root         *x509.Certificate
	Intermediate *x509.Certificate
	Signer       crypto.Signer
	Storage      Storage
	Provisioners []Provisioner
	// TokenKey verifies join tokens and EAB credentials.
	TokenKey *provisioner.TokenKey
	// Logger receives operational logs (nil discards); Audit receives
	// issuance and binding decisions (nil discards).
	Logger *slog.Logger
	Audit  *slog.Logger
	// Now is the clock for token expiry; nil means time.Now.
	Now func() time.Time
	// ARI places renewal windows (zero: ari.DefaultBand); CRLInterval is
	// the validity of each CRL, which is regenerated at 2/3 of it and on
	// every revocation (zero: smallstep's default of 24h).
	ARI         ari.Band
	CRLInterval time.Duration
	// CRLURL is where the CRL is served, named in its Issuing
	// Distribution Point (smallstep would name its own default path).
	CRLURL string
	// Listen is the CA's own listen address (host:port); challenge
	// validation never connects to it.
	Listen string
	// ObserveStore, if set, is told the duration of every store operation
	// (metrics): smallstep's ACME and authority layers' record operations
	// and crank-ca's own transactions and nonce spends; op is one of the
	// Store* names.
	ObserveStore func(op string, d time.Duration)
}

func (c *Config) validate() error {
	if c.ARI == (ari.Band{}) {
		c.ARI = ari.DefaultBand
	}
	var errs []error
	if c.Root == nil || c.Intermediate == nil || c.Signer == nil {
		errs = append(errs, errors.New("root, intermediate and signer are required"))
	}
	if c.Storage.Type == "" || c.Storage.DataSource == "" {
		errs = append(errs, errors.New("storage type and data source are required"))
	}
	if len(c.Provisioners) == 0 {
		errs = append(errs, errors.New("at least one provisioner is required"))
	}
	if b := c.ARI; !(0 <= b.Start && b.Start+b.Width <= b.End && b.End <= 1 && b.Width > 0 && b.MinRetryAfter > 0 && b.MinRetryAfter <= b.MaxRetryAfter) {
		errs = append(errs, fmt.Errorf("ARI band %+v is not within [0, 1] with a positive width and Retry-After", b))
	}
	seen := map[string]bool{}
	for i, p := range c.Provisioners {
		if seen[p.Name] {
			errs = append(errs, fmt.Errorf("provisioners[%d]: duplicate name %q", i, p.Name))
		}
		seen[p.Name] = true
		if p.Kind == KindWorkers && p.Identities == nil {
			errs = append(errs, fmt.Errorf("provisioners[%d]: worker provisioner %q without identities", i, p.Name))
		}
		if p.usesTokens() && c.TokenKey == nil {
			errs = append(errs, fmt.Errorf("provisioners[%d]: %q needs a token key", i, p.Name))
		}
		if l := p.Limits; l.MaxIdentifiersPerOrder < 1 || l.MaxPendingOrdersPerAccount < 1 || l.NewAccountsPerMinute < 1 || l.NewOrdersPerMinute < 1 {
			errs = append(errs, fmt.Errorf("provisioners[%d]: every limit must be at least 1, got %+v", i, l))
		}
		if !(0 < p.MinDuration && p.MinDuration <= p.DefaultDuration && p.DefaultDuration <= p.MaxDuration) {
			errs = append(errs, fmt.Errorf("provisioners[%d]: lifetimes must satisfy 0 < min <= default <= max", i))
		}
	}
	return errors.Join(errs...)
}
