package config

import "time"

// Defaults. ApplyDefaults fills these into unset (zero) fields; they are
// exported so documentation and other packages can refer to them.
const (
	DefaultListen           = "127.0.0.1:9090"
	DefaultDNSName          = "localhost"
	DefaultTrustDomain      = "crank.internal"
	DefaultRootCert         = "pki/root.crt"
	DefaultIntermediateCert = "pki/intermediate.crt"
	DefaultIntermediateKey  = "pki/intermediate.key"
	DefaultTokenKeyFile     = "secrets/token.key"
	DefaultBoltPath         = "db/crank-ca.db"
	DefaultMaxConns         = 16
	DefaultLogLevel         = "info"
	DefaultLogFormat        = "text"
	DefaultSPIFFEIDTemplate = "spiffe://{trustDomain}/worker/{worker}"
	DefaultAdminName        = "operator"
	DefaultAdminCertFile    = "admin/operator.crt"
	DefaultAdminKeyFile     = "admin/operator.key"
	DefaultARIBandStart     = 50
	DefaultARIBandEnd       = 80
	DefaultARIWindow        = 5
	DefaultARIMinRetryAfter = 5 * time.Second
	DefaultARIMaxRetryAfter = time.Hour
	DefaultCRLInterval      = time.Hour
	MinCRLInterval          = time.Minute
	// DefaultWorkerPattern is the worker pattern Default writes. It admits
	// exactly the valid worker names (a DNS label, no '-' at either end).
	DefaultWorkerPattern = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"

	DefaultServerCertLifetime  = 24 * time.Hour
	DefaultRetentionExpired    = 24 * time.Hour
	DefaultRetentionInterval   = time.Hour
	DefaultJoinTokenDefaultTTL = time.Hour
	DefaultJoinTokenMaxTTL     = 24 * time.Hour
	DefaultRetentionUnused     = 24 * time.Hour

	DefaultMaxIdentifiersPerOrder     = 100
	DefaultMaxPendingOrdersPerAccount = 100
	DefaultNewAccountsPerMinute       = 60
	DefaultNewOrdersPerMinute         = 600
)

// DefaultClaims returns the claims defaults for a provisioner type, and
// false for an unknown type. Workers renew continuously through the agent,
// so their certificates stay short (max 7 days); ACME clients commonly
// request up to 90 days.
func DefaultClaims(provisionerType string) (Claims, bool) {
	switch provisionerType {
	case TypeWorkerAttestation:
		return Claims{Dur(5 * time.Minute), Dur(24 * time.Hour), Dur(168 * time.Hour)}, true
	case TypeACME:
		return Claims{Dur(5 * time.Minute), Dur(24 * time.Hour), Dur(2160 * time.Hour)}, true
	}
	return Claims{}, false
}

// AllChallenges returns the ACME challenge types crank-ca supports, which
// is also the default for Provisioner.Challenges. It returns a new slice on
// every call.
func AllChallenges() []string {
	return []string{ChallengeHTTP01, ChallengeTLSALPN01, ChallengeDNS01}
}

// ApplyDefaults fills every unset field with its default, so that the rest
// of crank-ca never interprets zero values. It never overrides a value that
// is set, even an invalid one (Validate reports those), and it is
// idempotent.
//
// Defaults that depend on a choice are only applied once the choice is
// known: the storage path by storage type, claims, join tokens and
// challenges by provisioner type. Provisioners themselves are never
// defaulted: an operator must decide who may obtain certificates.
//
// Top level: listen "127.0.0.1:9090", dnsNames ["localhost"], trustDomain
// "crank.internal", tokenKeyFile "secrets/token.key"; pki: rootCert
// "pki/root.crt", intermediateCert "pki/intermediate.crt", intermediateKey
// "pki/intermediate.key", serverCertLifetime 24h; storage: type "bbolt",
// bbolt path "db/crank-ca.db"; retention:
// expiredCertificates 24h, interval 1h, unusedAccounts 24h; log: level
// "info", format "text". Provisioners of both types get limits 100
// identifiers per order, 100 pending orders per account, 60 new accounts
// and 600 new orders per minute per client address.
//
// Provisioners: claims per DefaultClaims; worker-attestation: joinTokens
// 1h/24h (also when absent), workers.spiffeIDTemplate
// "spiffe://{trustDomain}/worker/{worker}"; acme: challenges all three,
// present validationPorts get 80/443 for unset ports.
func (c *Config) ApplyDefaults() {
	setString(&c.Listen, DefaultListen)
	if len(c.DNSNames) == 0 {
		c.DNSNames = []string{DefaultDNSName}
	}
	setString(&c.TrustDomain, DefaultTrustDomain)

	setString(&c.PKI.RootCert, DefaultRootCert)
	setString(&c.PKI.IntermediateCert, DefaultIntermediateCert)
	setString(&c.PKI.IntermediateKey, DefaultIntermediateKey)
	setDuration(&c.PKI.ServerCertLifetime, DefaultServerCertLifetime)

	setString(&c.Storage.Type, StorageBolt)
	switch c.Storage.Type {
	case StorageBolt:
		setString(&c.Storage.Path, DefaultBoltPath)
	case StoragePostgreSQL:
		setInt(&c.Storage.MaxConns, DefaultMaxConns)
	}

	setString(&c.TokenKeyFile, DefaultTokenKeyFile)
	setDuration(&c.Retention.ExpiredCertificates, DefaultRetentionExpired)
	setDuration(&c.Retention.Interval, DefaultRetentionInterval)
	setDuration(&c.Retention.UnusedAccounts, DefaultRetentionUnused)
	setString(&c.Log.Level, DefaultLogLevel)
	setString(&c.Log.Format, DefaultLogFormat)

	if len(c.Admin.SPIFFEIDs) == 0 {
		c.Admin.SPIFFEIDs = []string{"spiffe://" + c.TrustDomain + "/admin/" + DefaultAdminName}
	}
	setString(&c.Admin.CertFile, DefaultAdminCertFile)
	setString(&c.Admin.KeyFile, DefaultAdminKeyFile)
	setInt(&c.ARI.BandStartPercent, DefaultARIBandStart)
	setInt(&c.ARI.BandEndPercent, DefaultARIBandEnd)
	setInt(&c.ARI.WindowPercent, DefaultARIWindow)
	setDuration(&c.ARI.MinRetryAfter, DefaultARIMinRetryAfter)
	setDuration(&c.ARI.MaxRetryAfter, DefaultARIMaxRetryAfter)
	setDuration(&c.CRL.Interval, DefaultCRLInterval)

	for i := range c.Provisioners {
		c.Provisioners[i].applyDefaults()
	}
}

func (p *Provisioner) applyDefaults() {
	if d, ok := DefaultClaims(p.Type); ok {
		setDuration(&p.Claims.MinCertDuration, d.MinCertDuration.Duration)
		setDuration(&p.Claims.DefaultCertDuration, d.DefaultCertDuration.Duration)
		setDuration(&p.Claims.MaxCertDuration, d.MaxCertDuration.Duration)
	}
	if p.Type == TypeWorkerAttestation || p.Type == TypeACME {
		if p.Limits == nil {
			p.Limits = &Limits{}
		}
		setInt(&p.Limits.MaxIdentifiersPerOrder, DefaultMaxIdentifiersPerOrder)
		setInt(&p.Limits.MaxPendingOrdersPerAccount, DefaultMaxPendingOrdersPerAccount)
		setInt(&p.Limits.NewAccountsPerMinute, DefaultNewAccountsPerMinute)
		setInt(&p.Limits.NewOrdersPerMinute, DefaultNewOrdersPerMinute)
	}
	switch p.Type {
	case TypeWorkerAttestation:
		if p.Workers != nil {
			setString(&p.Workers.SPIFFEIDTemplate, DefaultSPIFFEIDTemplate)
		}
		if p.JoinTokens == nil {
			p.JoinTokens = &JoinTokens{}
		}
		setDuration(&p.MaxBindingAge, DefaultMaxBindingAge)
		for i := range p.Attestors {
			a := &p.Attestors[i]
			setString(&a.KeySource, KeySourceDiscovery)
			setDuration(&a.MaxTokenAge, DefaultAttestorMaxTokenAge)
			switch a.Type {
			case AttestorKubernetes:
				if len(a.DNSTemplates) == 0 {
					a.DNSTemplates = []string{DefaultK8sDNSTemplate}
				}
			case AttestorOIDC:
				setString(&a.Worker, DefaultOIDCWorker)
			}
		}
		setDuration(&p.JoinTokens.DefaultTTL, DefaultJoinTokenDefaultTTL)
		setDuration(&p.JoinTokens.MaxTTL, DefaultJoinTokenMaxTTL)
	case TypeACME:
		if len(p.Challenges) == 0 {
			p.Challenges = AllChallenges()
		}
		if v := p.ValidationPorts; v != nil {
			if v.HTTP01 == 0 {
				v.HTTP01 = DefaultHTTP01Port
			}
			if v.TLSALPN01 == 0 {
				v.TLSALPN01 = DefaultTLSALPN01Port
			}
		}
	}
}

func setString(p *string, def string) {
	if *p == "" {
		*p = def
	}
}

func setInt(p *int, def int) {
	if *p == 0 {
		*p = def
	}
}

func setDuration(p *Duration, def time.Duration) {
	if p.Duration == 0 {
		p.Duration = def
	}
}

// InitOptions are the choices `crank-ca init` takes from its flags; empty
// fields get the usual defaults.
type InitOptions struct {
	Listen      string
	TrustDomain string
	DNSNames    []string
}

// Default returns the configuration `crank-ca init` writes: all defaults
// applied, plus two provisioners so a fresh install works end to end:
//
//   - "workers" (worker-attestation): any worker whose name is a DNS
//     label, [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])? (DefaultWorkerPattern),
//     gets {worker}.workers.{trustDomain} and a SPIFFE ID.
//   - "adhoc" (acme): all challenges, limited to localhost and names under
//     the trust domain except the workers' namespace workers.{trustDomain},
//     and loopback IPs, so it cannot issue for public names or worker
//     names out of the box.
//
// The result is not validated: opts may be invalid, and Write followed by
// Load reports that.
func Default(opts InitOptions) *Config {
	c := &Config{
		Listen:      opts.Listen,
		TrustDomain: opts.TrustDomain,
		DNSNames:    append([]string(nil), opts.DNSNames...),
	}
	setString(&c.TrustDomain, DefaultTrustDomain)
	c.Provisioners = []Provisioner{
		{
			Name: "workers",
			Type: TypeWorkerAttestation,
			Workers: &WorkerPattern{
				Pattern:          DefaultWorkerPattern,
				DNSTemplates:     []string{"{worker}.workers.{trustDomain}"},
				SPIFFEIDTemplate: DefaultSPIFFEIDTemplate,
			},
		},
		{
			Name:       "adhoc",
			Type:       TypeACME,
			Challenges: AllChallenges(),
			Policy: &NamePolicy{
				AllowedDNSSuffixes: []string{"localhost", c.TrustDomain},
				DeniedDNSSuffixes:  []string{"workers." + c.TrustDomain},
				AllowedIPRanges:    []string{"127.0.0.0/8", "::1/128"},
			},
		},
	}
	c.ApplyDefaults()
	return c
}
