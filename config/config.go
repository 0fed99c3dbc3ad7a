package config

import (
	"log/slog"
	"path/filepath"
	"time"
)

// Storage types.
const (
	StorageBolt       = "bbolt"
	StoragePostgreSQL = "postgresql"
)

// Provisioner types.
const (
	TypeWorkerAttestation = "worker-attestation"
	TypeACME              = "acme"
)

// ACME challenge types accepted in Provisioner.Challenges.
const (
	ChallengeHTTP01    = "http-01"
	ChallengeTLSALPN01 = "tls-alpn-01"
	ChallengeDNS01     = "dns-01"
)

// Config is the whole operator configuration of one crank-ca instance.
//
// Field comments give the default ApplyDefaults fills in; see Validate for
// the rules.
type Config struct {
	// Listen is the host:port the CA's HTTPS server binds. Default
	// "127.0.0.1:9090": loopback-only until an operator opts into exposure.
	Listen string `json:"listen"`
	// DNSNames are the names in the server's own TLS certificate; clients
	// must reach the CA by one of them. Default ["localhost"].
	DNSNames []string `json:"dnsNames"`
	// TrustDomain is the SPIFFE trust domain and the base of default worker
	// DNS names. Default "crank.internal".
	TrustDomain string  `json:"trustDomain"`
	PKI         PKI     `json:"pki"`
	Storage     Storage `json:"storage"`
	// TokenKeyFile holds the HMAC secret that signs join tokens and EAB
	// credentials. Default "secrets/token.key".
	TokenKeyFile string    `json:"tokenKeyFile"`
	Retention    Retention `json:"retention"`
	Log          Log       `json:"log"`
	Admin        Admin     `json:"admin"`
	ARI          ARI       `json:"ari"`
	CRL          CRL       `json:"crl"`
	Metrics      Metrics   `json:"metrics,omitzero"`
	// Provisioners decide who may obtain which certificates. At least one is
	// required; names are unique.
	Provisioners []Provisioner `json:"provisioners"`

	// Dir is the directory of the loaded file. Relative paths in the file
	// resolve against it (see Resolve) so a configuration directory can be
	// moved or mounted anywhere without editing it.
	Dir string `json:"-"`
}

// PKI locates the CA's key material. Paths may be relative to Config.Dir.
type PKI struct {
	RootCert         string `json:"rootCert"`         // default "pki/root.crt"
	IntermediateCert string `json:"intermediateCert"` // default "pki/intermediate.crt"
	IntermediateKey  string `json:"intermediateKey"`  // default "pki/intermediate.key"
	// ServerCertLifetime is the lifetime of the CA server's own TLS
	// certificate, which it renews itself. Default 24h; at least 5m so
	// renewal does not spin.
	ServerCertLifetime Duration `json:"serverCertLifetime"`
}

// Storage selects the database behind the CA (certificates, ACME accounts,
// orders). Its DSN may hold a password: String, GoString and LogValue redact
// it.
type Storage struct {
	// Type is "bbolt" (default; a single local file) or "postgresql".
	Type string `json:"type"`
	// Path is the bbolt file. Default "db/crank-ca.db"; must be empty for
	// postgresql.
	Path string `json:"path,omitempty"`
	// DSN is required for postgresql, either as a URL
	// ("postgresql://user:pass@host:5432/db?sslmode=verify-full") or in
	// libpq key=value form. Must be empty for bbolt.
	DSN string `json:"dsn,omitempty"`
	// MaxConns sizes the PostgreSQL connection pool of each replica.
	// Default 16 for postgresql; must be absent for bbolt.
	MaxConns int `json:"maxConns,omitempty"`
}

// Retention controls the cleanup of data that is no longer needed.
type Retention struct {
	// ExpiredCertificates is how long data of expired certificates and
	// orders is kept after expiry, for audit and debugging. Default 24h.
	ExpiredCertificates Duration `json:"expiredCertificates"`
	// UnusedAccounts is how long an ACME account that never ordered (or,
	// on a provisioner with join tokens or EAB, never bound) is kept
	// before it is removed. Default 24h; at least 1m.
	UnusedAccounts Duration `json:"unusedAccounts"`
	// Interval is how often the cleanup runs. Default 1h; at least 1m so
	// cleanup cannot hammer the database.
	Interval Duration `json:"interval"`
}

// Admin configures the operator API (/admin/v1 over mutual TLS on the
// listen address).
type Admin struct {
	// SPIFFEIDs may use the API with a client certificate issued by this
	// CA. Default ["spiffe://<trustDomain>/admin/operator"], the identity
	// of the certificate `crank-ca init` writes.
	SPIFFEIDs []string `json:"spiffeIDs"`
	// CertFile and KeyFile are the credentials the crank-ca operator
	// commands present. Default "admin/operator.crt" and
	// "admin/operator.key".
	CertFile string `json:"certFile"`
	KeyFile  string `json:"keyFile"`
	// Controllers are restricted clients of the API: each may only mint
	// join tokens, for one worker-attestation provisioner and worker names
	// matching a pattern, so that a launcher (the Crank controller) can
	// hand each worker it starts its token with no operator in the loop
	// and no way to mint outside its pattern. Default none.
	Controllers []Controller `json:"controllers,omitempty"`
}

// Controller delegates minting join tokens for a family of workers to the
// holder of one client certificate.
type Controller struct {
	// SPIFFEID is the controller's identity, the single URI SAN of its
	// client certificate (`crank-ca admin cert --spiffe-id`). Same rules
	// as admin.spiffeIDs; it must not be an admin ID too, so a credential
	// has exactly one role.
	SPIFFEID string `json:"spiffeID"`
	// Provisioner is the worker-attestation provisioner it mints for.
	Provisioner string `json:"provisioner"`
	// WorkerPattern is a Go regexp over worker names, implicitly anchored
	// (^(?:pattern)$) like workers.pattern, so "build-[0-9]+" cannot match
	// "evil-build-1-x".
	WorkerPattern string `json:"workerPattern"`
	// MaxTTL bounds the lifetime of the tokens it mints. Default, and at
	// most, the provisioner's joinTokens.maxTTL.
	MaxTTL Duration `json:"maxTTL,omitzero"`
}

// ARI shapes the renewal windows the CA suggests (RFC 9773). Each
// certificate's window is placed at a deterministic, per-certificate point
// inside a band of its lifetime, so a fleet issued at once renews spread out.
type ARI struct {
	// BandStartPercent and BandEndPercent bound the band, in percent of the
	// lifetime. Defaults 50 and 80.
	BandStartPercent int `json:"bandStartPercent"`
	BandEndPercent   int `json:"bandEndPercent"`
	// WindowPercent is the width of each window. Default 5.
	WindowPercent int `json:"windowPercent"`
	// Retry-After is a twentieth of the lifetime, clamped to
	// [MinRetryAfter, MaxRetryAfter]. Defaults 5s and 1h. Forced rotation
	// reaches ARI-driven workers within one Retry-After.
	MinRetryAfter Duration `json:"minRetryAfter"`
	MaxRetryAfter Duration `json:"maxRetryAfter"`
}

// CRL configures the certificate revocation list served at /crl.
type CRL struct {
	// Interval is the validity of each CRL (its nextUpdate); the CRL is
	// regenerated at 2/3 of it and on every revocation. Default 1h; at
	// least 1m.
	Interval Duration `json:"interval"`
}

// Metrics configures the Prometheus metrics endpoint, off by default.
type Metrics struct {
	// Listen is the host:port of a plain-HTTP listener of its own serving
	// GET /metrics, never the ACME port. Empty (the default) serves no
	// metrics. It has no TLS and no authentication: keep it on loopback
	// or a private monitoring network ("127.0.0.1:9091").
	Listen string `json:"listen,omitempty"`
}

// Log configures the process logger.
type Log struct {
	Level  string `json:"level"`  // debug|info|warn|error; default info
	Format string `json:"format"` // json|text; default text
}

// Claims bound the lifetime of certificates a provisioner issues. They must
// satisfy 0 < MinCertDuration <= DefaultCertDuration <= MaxCertDuration.
// Defaults depend on the provisioner type: worker-attestation 5m/24h/168h
// (short-lived, renewed by the agent), acme 5m/24h/2160h (ACME clients
// commonly ask for up to 90 days).
type Claims struct {
	MinCertDuration     Duration `json:"minCertDuration"`
	DefaultCertDuration Duration `json:"defaultCertDuration"`
	MaxCertDuration     Duration `json:"maxCertDuration"`
}

// Provisioner is one way of obtaining certificates. Some fields apply to one
// type only; setting them on the other type is an error rather than being
// ignored, because an ignored policy is a silent security bug.
type Provisioner struct {
	// Name is unique and a DNS label, [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?
	// (no '-' at either end); it appears in URLs.
	Name string `json:"name"`
	// Type is "worker-attestation" or "acme".
	Type   string `json:"type"`
	Claims Claims `json:"claims"`

	// Worker-attestation only. Workers, Identities or both are required,
	// and each must be able to order something: a pattern needs at least
	// one DNS template or IP, an identity at least one DNS name or IP.
	Workers    *WorkerPattern   `json:"workers,omitempty"`
	Identities []WorkerIdentity `json:"identities,omitempty"`
	// JoinTokens defaults to 1h/24h when absent.
	JoinTokens *JoinTokens `json:"joinTokens,omitempty"`
	// Attestors let workers join with a JWT their platform already gives
	// them (a Kubernetes service-account token, an OIDC identity token)
	// instead of a join token: POST /attest/<provisioner> exchanges it for
	// one-time EAB credentials. Names are unique DNS labels.
	Attestors []Attestor `json:"attestors,omitempty"`
	// MaxBindingAge bounds how long an account bound through an attestor
	// may order; afterwards the worker attests again, so a stolen account
	// key dies with it. Accounts bound by join tokens are not affected.
	// Default 24h; at least 5m.
	MaxBindingAge Duration `json:"maxBindingAge"`

	// Both types. Limits bound what one client can make the CA do; every
	// field has a default (see Limits), also when the object is absent.
	Limits *Limits `json:"limits,omitempty"`

	// ACME only.

	// Challenges is a subset of http-01, tls-alpn-01, dns-01 without
	// duplicates. Default all three.
	Challenges []string `json:"challenges,omitempty"`
	// RequireEAB makes new ACME accounts present External Account Binding
	// credentials issued by crank-ca.
	RequireEAB bool `json:"requireEAB,omitempty"`
	// Policy limits the identifiers that may be ordered. It must allow
	// something: an ACME provisioner without a policy is rejected rather
	// than silently issuing for any name.
	Policy *NamePolicy `json:"policy,omitempty"`
	// ValidationPorts is for development and tests only.
	ValidationPorts *ValidationPorts `json:"validationPorts,omitempty"`
	// Egress widens where the CA may connect when it validates http-01
	// and tls-alpn-01 challenges (see Egress).
	Egress *Egress `json:"egress,omitempty"`
}

// Limits bound the work one client can cause (RFC 8555 section 6.6:
// refusals are rateLimited problems with Retry-After). Rates are counted per
// client address (IPv4 address or IPv6 /64) and per provisioner, in the
// memory of each replica.
type Limits struct {
	// MaxIdentifiersPerOrder bounds the identifiers of one new-order.
	// Default 100.
	MaxIdentifiersPerOrder int `json:"maxIdentifiersPerOrder"`
	// MaxPendingOrdersPerAccount bounds the orders of one account that are
	// neither finalized nor expired. Default 100.
	MaxPendingOrdersPerAccount int `json:"maxPendingOrdersPerAccount"`
	// NewAccountsPerMinute and NewOrdersPerMinute are per client address;
	// each is also the burst. Defaults 60 and 600.
	NewAccountsPerMinute int `json:"newAccountsPerMinute"`
	NewOrdersPerMinute   int `json:"newOrdersPerMinute"`
}

// Egress is the validation egress policy of an ACME provisioner. The CA
// never connects to loopback, link-local (169.254.0.0/16 incl. cloud
// metadata, fe80::/10), private (10/8, 172.16/12, 192.168/16, 100.64/10),
// unique-local (fc00::/7), unspecified or multicast addresses, nor to its
// own listen address, unless a range here or in policy.allowedIPRanges
// contains the address. Redirects are followed only to http/https on the
// validation ports, at most 3.
type Egress struct {
	// AllowedIPRanges are CIDRs the CA may dial although they are in the
	// deny list, e.g. "10.0.0.0/8" for an internal network whose hosts
	// answer http-01.
	AllowedIPRanges []string `json:"allowedIPRanges,omitempty"`
}

// Attestor types.
const (
	AttestorKubernetes = "kubernetes"
	AttestorOIDC       = "oidc"
)

// Key sources of an attestor.
const (
	KeySourceDiscovery   = "discovery"
	KeySourceJWKSURL     = "jwksURL"
	KeySourceJWKSFile    = "jwksFile"
	KeySourceTokenReview = "tokenReview"
)

// Attestor verifies one issuer's JWTs and maps them to worker identities.
type Attestor struct {
	// Name is a DNS label, unique in the provisioner; it names the
	// attestor in bindings and audit lines.
	Name string `json:"name"`
	// Type is "kubernetes" or "oidc".
	Type string `json:"type"`
	// Issuer is the exact "iss" of the tokens (an https URL).
	Issuer string `json:"issuer"`
	// Audience must be one of the token's "aud"; e.g. "crank-ca".
	Audience string `json:"audience"`
	// KeySource is where the signing keys come from: "discovery"
	// (default; <issuer>/.well-known/openid-configuration -> jwks_uri),
	// "jwksURL", "jwksFile", or "tokenReview" (no keys: every token is
	// checked by the API server; kubernetes only).
	KeySource string `json:"keySource"`
	JWKSURL   string `json:"jwksURL,omitempty"`
	JWKSFile  string `json:"jwksFile,omitempty"`
	// CAFile holds the PEM roots for fetching discovery and keys; default
	// the system roots.
	CAFile string `json:"caFile,omitempty"`
	// MaxTokenAge bounds how old (iat) a token may be. Default 1h.
	MaxTokenAge Duration `json:"maxTokenAge"`

	// Kubernetes: the service accounts that may attest (required), and
	// the DNS names of their certificates (placeholders {namespace},
	// {serviceAccount}, {trustDomain}; default
	// ["{serviceAccount}.{namespace}.workers.{trustDomain}"]). Their
	// SPIFFE ID is spiffe://<trustDomain>/ns/<namespace>/sa/<name>.
	Allow        []ServiceAccountRule `json:"allow,omitempty"`
	DNSTemplates []string             `json:"dnsTemplates,omitempty"`
	// TokenReview asks the API server about every token too (required
	// with keySource "tokenReview").
	TokenReview *TokenReview `json:"tokenReview,omitempty"`

	// OIDC: Worker renders the worker name from the token ({sub},
	// {claim:NAME}); it must be a worker of this provisioner. Default
	// "{sub}".
	Worker string `json:"worker,omitempty"`
}

// ServiceAccountRule admits service accounts of one namespace: a name, or
// "*" for all.
type ServiceAccountRule struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
}

// TokenReview reaches a Kubernetes API server's TokenReview API.
type TokenReview struct {
	URL string `json:"url"`
	// CAFile holds the API server's roots; TokenFile the CA's own bearer
	// token (it needs the system:auth-delegator role).
	CAFile    string `json:"caFile,omitempty"`
	TokenFile string `json:"tokenFile"`
}

// Default attestor settings.
const (
	DefaultAttestorMaxTokenAge = time.Hour
	DefaultK8sDNSTemplate      = "{serviceAccount}.{namespace}.workers.{trustDomain}"
	DefaultOIDCWorker          = "{sub}"
	DefaultMaxBindingAge       = 24 * time.Hour
)

// WorkerPattern admits a family of workers by name and derives their
// certificate names from templates.
type WorkerPattern struct {
	// Pattern is a Go regexp over worker names, implicitly anchored
	// (^(?:pattern)$) so "web-[0-9]+" cannot match "evil-web-1-x".
	Pattern string `json:"pattern"`
	// DNSTemplates may use the placeholders {worker} and {trustDomain}.
	DNSTemplates []string `json:"dnsTemplates"`
	IPs          []string `json:"ips,omitempty"`
	// SPIFFEIDTemplate may use {worker} and {trustDomain}. Default
	// "spiffe://{trustDomain}/worker/{worker}".
	SPIFFEIDTemplate string `json:"spiffeIDTemplate"`
}

// WorkerIdentity is one explicitly configured worker with fixed names.
type WorkerIdentity struct {
	// Name is a DNS label: [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?.
	Name     string   `json:"name"`
	DNSNames []string `json:"dnsNames,omitempty"`
	IPs      []string `json:"ips,omitempty"`
	SPIFFEID string   `json:"spiffeID,omitempty"`
}

// JoinTokens bounds the lifetime of join tokens operators mint for workers.
type JoinTokens struct {
	DefaultTTL Duration `json:"defaultTTL"` // default 1h
	MaxTTL     Duration `json:"maxTTL"`     // default 24h; >= DefaultTTL
}

// NamePolicy limits the identifiers an ACME provisioner issues for.
type NamePolicy struct {
	// AllowedDNSSuffixes: a name is allowed if it equals a suffix (without
	// its optional leading dot) or ends with "." + suffix. So "internal"
	// and ".internal" both allow "internal" and "a.b.internal" but not
	// "xinternal".
	AllowedDNSSuffixes []string `json:"allowedDNSSuffixes,omitempty"`
	// AllowAnyDNS allows every DNS name; it cannot be combined with
	// AllowedDNSSuffixes, which would then be meaningless.
	AllowAnyDNS bool `json:"allowAnyDNS,omitempty"`
	// DeniedDNSSuffixes take precedence over the allowed ones, with the
	// same matching. A policy must deny every name a worker-attestation
	// provisioner can issue (its DNS templates and identities) that it
	// would otherwise allow; validation says which suffix to add.
	DeniedDNSSuffixes []string `json:"deniedDNSSuffixes,omitempty"`
	// AllowedIPRanges are CIDRs in canonical form (no host bits set).
	AllowedIPRanges []string `json:"allowedIPRanges,omitempty"`
}

// Standard ACME validation ports, used when ValidationPorts is absent.
const (
	DefaultHTTP01Port    = 80
	DefaultTLSALPN01Port = 443
)

// ValidationPorts moves the ports the CA dials to validate challenges.
// DEVELOPMENT AND TESTS ONLY: real ACME clients answer on 80 and 443.
type ValidationPorts struct {
	HTTP01    int `json:"http01,omitempty"`    // default 80
	TLSALPN01 int `json:"tlsalpn01,omitempty"` // default 443
}

// Resolve returns p resolved against the directory of the loaded file.
// Absolute paths, the empty string and paths in a Config without Dir are
// returned unchanged.
func (c *Config) Resolve(p string) string {
	if p == "" || filepath.IsAbs(p) || c.Dir == "" {
		return p
	}
	return filepath.Join(c.Dir, p)
}

// Provisioner returns the provisioner with the given name. The pointer
// refers into c.Provisioners.
func (c *Config) Provisioner(name string) (*Provisioner, bool) {
	for i := range c.Provisioners {
		if c.Provisioners[i].Name == name {
			return &c.Provisioners[i], true
		}
	}
	return nil, false
}

// LogValue makes slog.Any("config", cfg) safe and readable: it summarizes
// the configuration with the storage DSN redacted (a JSON log handler would
// otherwise marshal the DSN verbatim). It has a value receiver so that
// logging a Config value is as safe as logging a *Config.
func (c Config) LogValue() slog.Value {
	names := make([]string, 0, len(c.Provisioners))
	for _, p := range c.Provisioners {
		names = append(names, p.Name+"("+p.Type+")")
	}
	return slog.GroupValue(
		slog.String("dir", c.Dir),
		slog.String("listen", c.Listen),
		slog.Any("dnsNames", c.DNSNames),
		slog.String("trustDomain", c.TrustDomain),
		slog.Any("storage", c.Storage),
		slog.String("logLevel", c.Log.Level),
		slog.Any("provisioners", names),
	)
}
