package config

import (
	"strings"
	"testing"
	"time"
)

// pgBase returns a valid configuration using PostgreSQL storage.
func pgBase() *Config {
	c := Default(InitOptions{})
	c.Storage = Storage{Type: StoragePostgreSQL, DSN: "postgresql://u:secret@db:5432/ca?sslmode=disable"}
	c.ApplyDefaults()
	return c
}

func TestValidate(t *testing.T) {
	t.Parallel()
	const (
		w = "provisioners[0]" // the worker-attestation provisioner of Default
		a = "provisioners[1]" // the acme provisioner of Default
	)
	tests := []struct {
		name   string
		base   func() *Config // default: Default(InitOptions{})
		mutate func(c *Config)
		want   []string // every expected error, in order; nil = valid
	}{
		{name: "default is valid", mutate: func(c *Config) {}},
		{name: "postgresql is valid", base: pgBase, mutate: func(c *Config) {}},
		{name: "listen all interfaces is valid", mutate: func(c *Config) { c.Listen = ":9090" }},
		{name: "listen IPv6 is valid", mutate: func(c *Config) { c.Listen = "[::1]:9090" }},
		{name: "listen without port", mutate: func(c *Config) { c.Listen = "127.0.0.1" },
			want: []string{`listen: must be host:port such as "127.0.0.1:9090"`}},
		{name: "listen port zero", mutate: func(c *Config) { c.Listen = "127.0.0.1:0" },
			want: []string{`listen: port must be a number 1-65535; got "0"`}},
		{name: "listen port too big", mutate: func(c *Config) { c.Listen = "localhost:65536" },
			want: []string{`listen: port must be a number 1-65535; got "65536"`}},
		{name: "listen named port", mutate: func(c *Config) { c.Listen = "localhost:https" },
			want: []string{`listen: port must be a number 1-65535; got "https"`}},
		{name: "dnsNames empty", mutate: func(c *Config) { c.DNSNames = nil },
			want: []string{"dnsNames: at least one name is required"}},
		{name: "dnsNames invalid", mutate: func(c *Config) {
			c.DNSNames = []string{"ok.example", "Upper.example", "a..b", "-a.example", "127.0.0.1", "*.example", "ok.example", "", strings.Repeat("a", 64) + ".x"}
		}, want: []string{
			"dnsNames[1]: \"Upper.example\" is not a valid DNS name",
			"dnsNames[2]: \"a..b\" has an empty label",
			"dnsNames[3]: \"-a.example\" has a label starting or ending with '-'",
			"dnsNames[4]: \"127.0.0.1\" is an IP address, not a DNS name",
			"dnsNames[5]: \"*.example\" is not a valid DNS name",
			"dnsNames[6]: duplicate name \"ok.example\"",
			"dnsNames[7]: must not be empty",
			"dnsNames[8]: ",
		}},
		{name: "trustDomain with scheme", mutate: func(c *Config) { c.TrustDomain = "spiffe://crank.internal" },
			want: []string{"trustDomain: must be a bare name without a scheme"}},
		{name: "trustDomain with port", mutate: func(c *Config) { c.TrustDomain = "crank.internal:8443" },
			want: []string{"trustDomain: must be a bare name without a port"}},
		{name: "trustDomain upper case", mutate: func(c *Config) { c.TrustDomain = "Crank.internal" },
			want: []string{"trustDomain: only lower-case"}},
		{name: "trustDomain underscore is valid", mutate: func(c *Config) { c.TrustDomain = "my_domain.internal" }},
		{name: "trustDomain empty", mutate: func(c *Config) { c.TrustDomain = "" },
			want: []string{"trustDomain: required"}},
		{name: "pki paths required", mutate: func(c *Config) {
			c.PKI.RootCert, c.PKI.IntermediateCert, c.PKI.IntermediateKey, c.TokenKeyFile = "", "", "", ""
		},
			want: []string{"pki.rootCert: required", "pki.intermediateCert: required", "pki.intermediateKey: required", "tokenKeyFile: required"}},
		{name: "serverCertLifetime too short", mutate: func(c *Config) { c.PKI.ServerCertLifetime = Dur(time.Minute) },
			want: []string{"pki.serverCertLifetime: must be at least 5m0s"}},
		{name: "serverCertLifetime minimum is valid", mutate: func(c *Config) { c.PKI.ServerCertLifetime = Dur(5 * time.Minute) }},
		{name: "retention", mutate: func(c *Config) {
			c.Retention = Retention{ExpiredCertificates: Dur(-time.Hour), Interval: Dur(30 * time.Second)}
		}, want: []string{"retention.expiredCertificates: must not be negative", "retention.interval: must be at least 1m0s", "retention.unusedAccounts: must be at least 1m0s"}},
		{name: "log", mutate: func(c *Config) { c.Log = Log{Level: "trace", Format: "xml"} },
			want: []string{`log.level: must be one of debug, info, warn, error; got "trace"`, `log.format: must be json or text; got "xml"`}},
		{name: "storage type unknown", mutate: func(c *Config) { c.Storage.Type = "postgres" },
			want: []string{`storage.type: must be "bbolt" or "postgresql"; got "postgres"`}},
		{name: "bbolt with postgresql fields", mutate: func(c *Config) {
			c.Storage = Storage{Type: StorageBolt, DSN: "host=db", MaxConns: 4}
		}, want: []string{"storage.path: required", `storage.dsn: only valid for storage type "postgresql"`, `storage.maxConns: only valid for storage type "postgresql"`}},
		{name: "postgresql pool size out of range", base: pgBase, mutate: func(c *Config) { c.Storage.MaxConns = 1001 },
			want: []string{"storage.maxConns: must be 1 to 1000; got 1001"}},
		{name: "postgresql with bbolt fields", base: pgBase, mutate: func(c *Config) {
			c.Storage.Path, c.Storage.DSN = "x.db", ""
		}, want: []string{`storage.path: only valid for storage type "bbolt"`, `storage.dsn: required for storage type "postgresql"`}},
		{name: "postgresql key=value DSN is valid", base: pgBase, mutate: func(c *Config) {
			c.Storage.DSN = "host=db port=5432 user=ca password='p w\\'d' dbname=ca sslmode=verify-full"
		}},
		{name: "postgresql socket URL is valid", base: pgBase, mutate: func(c *Config) { c.Storage.DSN = "postgres:///ca?host=/run/postgresql" }},
		{name: "postgresql wrong scheme", base: pgBase, mutate: func(c *Config) { c.Storage.DSN = "mysql://u:p@db/ca" },
			want: []string{`storage.dsn: URL scheme must be "postgresql" or "postgres", not "mysql"`}},
		{name: "postgresql bad URL does not leak", base: pgBase, mutate: func(c *Config) { c.Storage.DSN = "postgresql://u:hunter2@db:port/ca" },
			want: []string{"storage.dsn: not a valid URL"}},
		{name: "postgresql bad key=value", base: pgBase, mutate: func(c *Config) { c.Storage.DSN = "host=db password='hunter2" },
			want: []string{`storage.dsn: unterminated quoted value for key "password"`}},
		{name: "postgresql garbage", base: pgBase, mutate: func(c *Config) { c.Storage.DSN = "just-a-hostname" },
			want: []string{`storage.dsn: missing "=" after key "just"`}},
		{name: "no provisioners", mutate: func(c *Config) { c.Provisioners = nil },
			want: []string{"provisioners: at least one provisioner is required"}},
		{name: "provisioner names", mutate: func(c *Config) {
			c.Provisioners[0].Name = "Workers"
			c.Provisioners[1].Name = strings.Repeat("a", 64)
		}, want: []string{`provisioners[0].name: must be a DNS label`, `provisioners[1].name: must be a DNS label`}},
		{name: "provisioner name hyphen at either end", mutate: func(c *Config) {
			c.Provisioners[0].Name = "-workers"
			c.Provisioners[1].Name = "adhoc-"
		}, want: []string{`provisioners[0].name: must be a DNS label ([a-z0-9], '-' inside, at most 63); got "-workers"`, `provisioners[1].name: must be a DNS label`}},
		{name: "provisioner name edge cases are valid", mutate: func(c *Config) {
			c.Provisioners[0].Name = "a"
			c.Provisioners[1].Name = "a-" + strings.Repeat("b", 60) + "9"
		}},
		{name: "provisioner name empty", mutate: func(c *Config) { c.Provisioners[1].Name = "" },
			want: []string{`provisioners[1].name: must be a DNS label`}},
		{name: "duplicate provisioner names", mutate: func(c *Config) { c.Provisioners[1].Name = "workers" },
			want: []string{`provisioners[1].name: duplicate name "workers" (also provisioners[0])`}},
		{name: "unknown provisioner type", mutate: func(c *Config) { c.Provisioners[1].Type = "jwk" },
			want: []string{`provisioners[1].type: must be "worker-attestation" or "acme"; got "jwk"`}},
		{name: "claims min zero", mutate: func(c *Config) { c.Provisioners[0].Claims.MinCertDuration = Dur(0) },
			want: []string{w + ".claims.minCertDuration: must be > 0"}},
		{name: "claims default below min", mutate: func(c *Config) { c.Provisioners[0].Claims.DefaultCertDuration = Dur(time.Minute) },
			want: []string{w + ".claims.defaultCertDuration: must be >= minCertDuration (5m0s)"}},
		{name: "claims max below default", mutate: func(c *Config) { c.Provisioners[1].Claims.MaxCertDuration = Dur(time.Hour) },
			want: []string{a + ".claims.maxCertDuration: must be >= defaultCertDuration (24h0m0s)"}},
		{name: "claims all equal is valid", mutate: func(c *Config) { c.Provisioners[0].Claims = Claims{Dur(time.Hour), Dur(time.Hour), Dur(time.Hour)} }},
		{name: "acme fields on worker-attestation", mutate: func(c *Config) {
			p := &c.Provisioners[0]
			p.Challenges = []string{"http-01"}
			p.RequireEAB = true
			p.Policy = &NamePolicy{AllowAnyDNS: true}
			p.ValidationPorts = &ValidationPorts{HTTP01: 80, TLSALPN01: 443}
		}, want: []string{
			w + `.challenges: only valid for provisioner type "acme"`,
			w + `.requireEAB: only valid for provisioner type "acme"`,
			w + `.policy: only valid for provisioner type "acme"`,
			w + `.validationPorts: only valid for provisioner type "acme"`,
		}},
		{name: "worker fields on acme", mutate: func(c *Config) {
			p := &c.Provisioners[1]
			p.Workers = &WorkerPattern{Pattern: "x"}
			p.Identities = []WorkerIdentity{{Name: "x"}}
			p.JoinTokens = &JoinTokens{}
		}, want: []string{
			a + `.workers: only valid for provisioner type "worker-attestation"`,
			a + `.identities: only valid for provisioner type "worker-attestation"`,
			a + `.joinTokens: only valid for provisioner type "worker-attestation"`,
		}},
		{name: "worker-attestation needs workers or identities", mutate: func(c *Config) { c.Provisioners[0].Workers = nil },
			want: []string{w + `: a worker-attestation provisioner needs "workers", "identities" or both`}},
		{name: "identities alone are valid", mutate: func(c *Config) {
			c.Provisioners[0].Workers = nil
			c.Provisioners[0].Identities = []WorkerIdentity{{Name: "gw", DNSNames: []string{"gw.example"}, IPs: []string{"10.0.0.1", "::2"}, SPIFFEID: "spiffe://crank.internal/gw"}}
		}},
		{name: "worker pattern", mutate: func(c *Config) {
			c.Provisioners[0].Workers = &WorkerPattern{
				Pattern:          "web-[0-9",
				DNSTemplates:     []string{"{worker}.workers.{trustDomain}", "{name}.x", "{worker.x", "x}", ""},
				IPs:              []string{"10.0.0.1", "10.0.0.300"},
				SPIFFEIDTemplate: "https://{trustDomain}/{worker}",
			}
		}, want: []string{
			w + ".workers.pattern: invalid regexp",
			w + ".workers.dnsTemplates[1]: unknown placeholder {name}",
			w + ".workers.dnsTemplates[2]: unclosed '{'",
			w + ".workers.dnsTemplates[3]: unmatched '}'",
			w + ".workers.dnsTemplates[4]: must not be empty",
			w + `.workers.ips[1]: not an IP address: "10.0.0.300"`,
			w + `.workers.spiffeIDTemplate: must start with "spiffe://"`,
		}},
		{name: "admin, ari and crl", mutate: func(c *Config) {
			c.Admin.SPIFFEIDs = []string{"https://crank.internal/admin", "spiffe://crank.internal/worker/api", "spiffe://crank.internal/admin/ops"}
			c.Admin.KeyFile = ""
			c.ARI = ARI{BandStartPercent: 80, BandEndPercent: 50, WindowPercent: 0, MinRetryAfter: Dur(time.Minute), MaxRetryAfter: Dur(time.Second)}
			c.CRL.Interval = Dur(time.Second)
		}, want: []string{
			`admin.spiffeIDs[0]: must be a SPIFFE ID`,
			`admin.spiffeIDs[1]: "spiffe://crank.internal/worker/api" is a worker identity`,
			`admin.keyFile: required`,
			`ari: need 1 <= bandStartPercent < bandEndPercent <= 100, got 80 and 50`,
			`ari.windowPercent: must be at least 1`,
			`ari: need 1s <= minRetryAfter <= maxRetryAfter`,
			`crl.interval: must be at least 1m0s`,
		}},
		{name: "worker pattern empty", mutate: func(c *Config) { c.Provisioners[0].Workers.Pattern = "" },
			want: []string{w + ".workers.pattern: required"}},
		{name: "spiffeIDTemplate placeholder", mutate: func(c *Config) { c.Provisioners[0].Workers.SPIFFEIDTemplate = "spiffe://{td}/{worker}" },
			want: []string{w + ".workers.spiffeIDTemplate: unknown placeholder {td}"}},
		{name: "identities", mutate: func(c *Config) {
			c.Provisioners[0].Identities = []WorkerIdentity{
				{Name: "gw", DNSNames: []string{"gw.example"}},
				{Name: "gw", DNSNames: []string{"GW"}},
				{Name: "-bad", IPs: []string{"nope"}},
				{Name: "x", DNSNames: []string{"x.example"}, SPIFFEID: "gw"},
			}
		}, want: []string{
			w + `.identities[1].name: duplicate identity "gw" (also identities[0])`,
			w + `.identities[1].dnsNames[0]: "GW" is not a valid DNS name`,
			w + `.identities[2].name: must be a DNS label`,
			w + `.identities[2].ips[0]: not an IP address: "nope"`,
			w + `.identities[3].spiffeID: must start with "spiffe://"`,
		}},
		{name: "identity that can order nothing", mutate: func(c *Config) {
			c.Provisioners[0].Identities = []WorkerIdentity{
				{Name: "gw", DNSNames: []string{"gw.example"}},
				{Name: "empty", SPIFFEID: "spiffe://crank.internal/empty"},
				{Name: "ip-only", IPs: []string{"10.0.0.1"}},
			}
		}, want: []string{w + ".identities[1]: needs at least one dnsName or ip"}},
		{name: "worker pattern that can order nothing", mutate: func(c *Config) { c.Provisioners[0].Workers.DNSTemplates = nil },
			want: []string{w + ".workers: needs at least one dnsTemplate or ip"}},
		{name: "worker pattern with IPs only is valid", mutate: func(c *Config) {
			c.Provisioners[0].Workers.DNSTemplates = nil
			c.Provisioners[0].Workers.IPs = []string{"10.0.0.1"}
		}},
		{name: "identity name 63 chars is valid", mutate: func(c *Config) {
			c.Provisioners[0].Identities = []WorkerIdentity{{Name: strings.Repeat("a", 63), IPs: []string{"10.0.0.1"}}}
		}},
		{name: "join tokens", mutate: func(c *Config) {
			c.Provisioners[0].JoinTokens = &JoinTokens{DefaultTTL: Dur(2 * time.Hour), MaxTTL: Dur(time.Hour)}
		},
			want: []string{w + ".joinTokens.maxTTL: must be >= defaultTTL (2h0m0s)"}},
		{name: "join tokens zero", mutate: func(c *Config) { c.Provisioners[0].JoinTokens = &JoinTokens{} },
			want: []string{w + ".joinTokens.defaultTTL: must be > 0"}},
		{name: "challenges", mutate: func(c *Config) { c.Provisioners[1].Challenges = []string{"http-01", "tls-sni-01", "http-01"} },
			want: []string{a + `.challenges[1]: must be one of http-01, tls-alpn-01, dns-01; got "tls-sni-01"`, a + `.challenges[2]: duplicate challenge "http-01"`}},
		{name: "policy missing", mutate: func(c *Config) { c.Provisioners[1].Policy = nil },
			want: []string{a + ".policy: must allow something"}},
		{name: "policy empty", mutate: func(c *Config) { c.Provisioners[1].Policy = &NamePolicy{} },
			want: []string{a + ".policy: must allow something"}},
		{name: "policy allowAnyDNS alone is valid beside no workers", mutate: func(c *Config) {
			c.Provisioners = c.Provisioners[1:]
			c.Provisioners[0].Policy = &NamePolicy{AllowAnyDNS: true}
		}},
		{name: "policy IP ranges alone are valid", mutate: func(c *Config) { c.Provisioners[1].Policy = &NamePolicy{AllowedIPRanges: []string{"10.0.0.0/8"}} }},
		{name: "policy", mutate: func(c *Config) {
			c.Provisioners[1].Policy = &NamePolicy{
				AllowAnyDNS:        true,
				AllowedDNSSuffixes: []string{".internal", "internal", ".", "bad_suffix", "Example"},
				AllowedIPRanges:    []string{"10.0.0.0/8", "10.1.2.3/8", "10.0.0.0", "::1/129"},
			}
		}, want: []string{
			a + ".policy.allowedDNSSuffixes: has no effect together with allowAnyDNS",
			a + `.policy.allowedDNSSuffixes[1]: duplicate suffix "internal"`,
			a + ".policy.allowedDNSSuffixes[2]: must not be empty",
			a + `.policy.allowedDNSSuffixes[3]: "bad_suffix" is not a valid DNS name`,
			a + `.policy.allowedDNSSuffixes[4]: "Example" is not a valid DNS name`,
			a + `.policy.allowedIPRanges[1]: "10.1.2.3/8" has host bits set; did you mean "10.0.0.0/8"?`,
			a + ".policy.allowedIPRanges[2]: not a CIDR",
			a + ".policy.allowedIPRanges[3]: not a CIDR",
			a + `.policy.deniedDNSSuffixes: must contain "workers.crank.internal": the policy allows names under it`,
		}},
		{name: "policy allowAnyDNS must deny worker names", mutate: func(c *Config) {
			c.Provisioners[1].Policy = &NamePolicy{AllowAnyDNS: true}
		}, want: []string{a + `.policy.deniedDNSSuffixes: must contain "workers.crank.internal"`}},
		{name: "policy allowAnyDNS denying worker names is valid", mutate: func(c *Config) {
			c.Provisioners[1].Policy = &NamePolicy{AllowAnyDNS: true, DeniedDNSSuffixes: []string{"crank.internal"}}
		}},
		{name: "policy allowing a suffix inside the worker namespace", mutate: func(c *Config) {
			c.Provisioners[1].Policy = &NamePolicy{AllowedDNSSuffixes: []string{"api.workers.crank.internal"}}
		}, want: []string{a + `.policy.deniedDNSSuffixes: must contain "workers.crank.internal"`}},
		{name: "policy beside worker identities and IPs", mutate: func(c *Config) {
			c.Provisioners[0].Identities = []WorkerIdentity{{Name: "gw", DNSNames: []string{"gw.localhost"}, IPs: []string{"127.0.0.9"}}}
		}, want: []string{
			a + `.policy.deniedDNSSuffixes: must contain "gw.localhost": the policy allows it and worker-attestation provisioner "workers" issues it`,
			a + `.policy.allowedIPRanges[0]: contains 127.0.0.9, an IP address of worker-attestation provisioner "workers"`,
		}},
		{name: "worker DNS template under its own suffix", mutate: func(c *Config) {
			c.Provisioners[0].Workers.DNSTemplates = []string{"{worker}-svc.apps.{trustDomain}"}
		}, want: []string{a + `.policy.deniedDNSSuffixes: must contain "apps.crank.internal"`}},
		{name: "denied suffixes", mutate: func(c *Config) {
			c.Provisioners[1].Policy.DeniedDNSSuffixes = []string{"workers.crank.internal", "Bad_", ".workers.crank.internal"}
		}, want: []string{
			a + `.policy.deniedDNSSuffixes[1]: "Bad_" is not a valid DNS name`,
			a + `.policy.deniedDNSSuffixes[2]: duplicate suffix ".workers.crank.internal"`,
		}},
		{name: "two worker provisioners sharing SPIFFE IDs", mutate: func(c *Config) {
			c.Provisioners = append(c.Provisioners, Provisioner{Name: "more", Type: TypeWorkerAttestation,
				Workers: &WorkerPattern{Pattern: "x-[a-z]+", DNSTemplates: []string{"{worker}.more.{trustDomain}"}, SPIFFEIDTemplate: "spiffe://{trustDomain}/worker/x-{worker}"}})
			c.Provisioners[1].Policy.DeniedDNSSuffixes = append(c.Provisioners[1].Policy.DeniedDNSSuffixes, "more.crank.internal")
			c.ApplyDefaults()
		}, want: []string{`provisioners: worker-attestation provisioners "workers" and "more" could both issue SPIFFE ID spiffe://crank.internal/worker/x-...`}},
		{name: "two worker provisioners with distinct SPIFFE namespaces are valid", mutate: func(c *Config) {
			c.Provisioners = append(c.Provisioners, Provisioner{Name: "more", Type: TypeWorkerAttestation,
				Workers: &WorkerPattern{Pattern: "x-[a-z]+", DNSTemplates: []string{"{worker}.more.{trustDomain}"}, SPIFFEIDTemplate: "spiffe://{trustDomain}/more/{worker}"}})
			c.Provisioners[1].Policy.DeniedDNSSuffixes = append(c.Provisioners[1].Policy.DeniedDNSSuffixes, "more.crank.internal")
			c.ApplyDefaults()
		}},
		{name: "explicit identity inside another provisioner's SPIFFE namespace", mutate: func(c *Config) {
			c.Provisioners = append(c.Provisioners, Provisioner{Name: "more", Type: TypeWorkerAttestation,
				Identities: []WorkerIdentity{{Name: "gw", DNSNames: []string{"gw.more.crank.internal"}, SPIFFEID: "spiffe://crank.internal/worker/gw"}}})
			c.Provisioners[1].Policy.DeniedDNSSuffixes = append(c.Provisioners[1].Policy.DeniedDNSSuffixes, "more.crank.internal")
			c.ApplyDefaults()
		}, want: []string{`provisioners: worker-attestation provisioners "workers" and "more" could both issue SPIFFE ID spiffe://crank.internal/worker/gw`}},
		{name: "admin ID inside a custom worker SPIFFE namespace", mutate: func(c *Config) {
			c.Provisioners[0].Workers.SPIFFEIDTemplate = "spiffe://{trustDomain}/svc/{worker}"
			c.Admin.SPIFFEIDs = []string{"spiffe://crank.internal/svc/admin"}
		}, want: []string{`admin.spiffeIDs[0]: "spiffe://crank.internal/svc/admin" is inside the SPIFFE namespace of worker provisioner "workers"`}},
		{name: "limits", mutate: func(c *Config) {
			c.Provisioners[0].Limits = &Limits{MaxIdentifiersPerOrder: 0, MaxPendingOrdersPerAccount: -1, NewAccountsPerMinute: 1, NewOrdersPerMinute: 1}
			c.Provisioners[1].Limits.MaxIdentifiersPerOrder = 5000
		}, want: []string{
			w + ".limits.maxIdentifiersPerOrder: must be at least 1; got 0",
			w + ".limits.maxPendingOrdersPerAccount: must be at least 1; got -1",
			a + ".limits.maxIdentifiersPerOrder: must be at most 1000; got 5000",
		}},
		{name: "egress", mutate: func(c *Config) {
			c.Provisioners[1].Egress = &Egress{AllowedIPRanges: []string{"10.0.0.0/8", "10.0.0.1/8"}}
			c.Provisioners[0].Egress = &Egress{AllowedIPRanges: []string{"10.0.0.0/8"}}
		}, want: []string{
			w + `.egress: only valid for provisioner type "acme"`,
			a + `.egress.allowedIPRanges[1]: "10.0.0.1/8" has host bits set`,
		}},
		{name: "validation ports", mutate: func(c *Config) { c.Provisioners[1].ValidationPorts = &ValidationPorts{HTTP01: -1, TLSALPN01: 70000} },
			want: []string{a + ".validationPorts.http01: must be a port 1-65535; got -1", a + ".validationPorts.tlsalpn01: must be a port 1-65535; got 70000"}},
		{name: "validation ports valid", mutate: func(c *Config) { c.Provisioners[1].ValidationPorts = &ValidationPorts{HTTP01: 5002, TLSALPN01: 5001} }},
		{name: "controllers valid", mutate: func(c *Config) {
			c.Admin.Controllers = []Controller{
				{SPIFFEID: "spiffe://crank.internal/controller/crank", Provisioner: "workers", WorkerPattern: "build-[0-9]+", MaxTTL: Dur(time.Hour)},
				{SPIFFEID: "spiffe://ci.example/launcher", Provisioner: "workers", WorkerPattern: "ci-[a-z0-9]+", MaxTTL: Dur(24 * time.Hour)},
				{SPIFFEID: "spiffe://crank.internal/controller/default-ttl", Provisioner: "workers", WorkerPattern: "x"},
			}
		}},
		{name: "controllers", mutate: func(c *Config) {
			c.Admin.Controllers = []Controller{
				{},
				{SPIFFEID: "spiffe://crank.internal/admin/operator", Provisioner: "adhoc", WorkerPattern: "build-("},
				{SPIFFEID: "spiffe://crank.internal/worker/ctl", Provisioner: "nope", WorkerPattern: "a", MaxTTL: Dur(48 * time.Hour)},
				{SPIFFEID: "https://crank.internal/controller", Provisioner: "workers", WorkerPattern: "a", MaxTTL: Dur(48 * time.Hour)},
				{SPIFFEID: "spiffe://crank.internal/controller/a", Provisioner: "workers", WorkerPattern: "a", MaxTTL: Dur(-time.Minute)},
				{SPIFFEID: "spiffe://crank.internal/controller/a", Provisioner: "workers", WorkerPattern: "b"},
			}
		}, want: []string{
			"admin.controllers[0].spiffeID: required",
			"admin.controllers[0].provisioner: required",
			"admin.controllers[0].workerPattern: required",
			`admin.controllers[1].spiffeID: "spiffe://crank.internal/admin/operator" is also in admin.spiffeIDs; a controller must not be an admin`,
			`admin.controllers[1].provisioner: "adhoc" is not a worker-attestation provisioner`,
			"admin.controllers[1].workerPattern: not a valid regexp",
			`admin.controllers[2].spiffeID: "spiffe://crank.internal/worker/ctl" is a worker identity; controller IDs must not be workers`,
			`admin.controllers[2].provisioner: no provisioner named "nope"`,
			`admin.controllers[3].spiffeID: must be a SPIFFE ID such as spiffe://crank.internal/controller/crank, got "https://crank.internal/controller"`,
			`admin.controllers[3].maxTTL: 48h0m0s exceeds joinTokens.maxTTL (24h0m0s) of provisioner "workers"`,
			"admin.controllers[4].maxTTL: must not be negative",
			`admin.controllers[5].spiffeID: duplicate controller "spiffe://crank.internal/controller/a" (also admin.controllers[4])`,
		}},
		{name: "controller maxTTL bounded by a custom joinTokens.maxTTL", mutate: func(c *Config) {
			c.Provisioners[0].JoinTokens = &JoinTokens{DefaultTTL: Dur(10 * time.Minute), MaxTTL: Dur(30 * time.Minute)}
			c.Admin.Controllers = []Controller{{SPIFFEID: "spiffe://crank.internal/controller/crank", Provisioner: "workers", WorkerPattern: "build-[0-9]+", MaxTTL: Dur(time.Hour)}}
		}, want: []string{`admin.controllers[0].maxTTL: 1h0m0s exceeds joinTokens.maxTTL (30m0s) of provisioner "workers"`}},
		{name: "controller ID inside a custom worker SPIFFE namespace", mutate: func(c *Config) {
			c.Provisioners[0].Workers.SPIFFEIDTemplate = "spiffe://{trustDomain}/svc/{worker}"
			c.Admin.Controllers = []Controller{{SPIFFEID: "spiffe://crank.internal/svc/crank", Provisioner: "workers", WorkerPattern: "build-[0-9]+"}}
		}, want: []string{`admin.controllers[0].spiffeID: "spiffe://crank.internal/svc/crank" is inside the SPIFFE namespace of worker provisioner "workers"; controller IDs must not be workers`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			base := tt.base
			if base == nil {
				base = func() *Config { return Default(InitOptions{}) }
			}
			c := base()
			tt.mutate(c)
			got := errorLines(c.Validate())
			if len(got) != len(tt.want) {
				t.Fatalf("Validate errors:\n%s\nwant %d errors:\n%s", strings.Join(got, "\n"), len(tt.want), strings.Join(tt.want, "\n"))
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tt.want[i]) {
					t.Errorf("error %d = %q, want prefix %q", i, got[i], tt.want[i])
				}
				if strings.Contains(got[i], "hunter2") || strings.Contains(got[i], "secret") {
					t.Errorf("error %d leaks the DSN password: %q", i, got[i])
				}
			}
		})
	}
}

// TestValidateReportsEverything loads one file with many unrelated problems
// and expects every one of them in the single error.
func TestValidateReportsEverything(t *testing.T) {
	t.Parallel()
	const bad = `{
  "listen": "localhost",
  "trustDomain": "https://crank.internal",
  "storage": {"type": "postgresql"},
  "log": {"level": "verbose"},
  "provisioners": [
    {"name": "w", "type": "worker-attestation", "challenges": ["http-01"],
     "claims": {"maxCertDuration": "1h"}},
    {"name": "w", "type": "acme", "policy": {"allowedIPRanges": ["10.0.0.1/8"]}}
  ]
}`
	path := writeTemp(t, "bad.json", bad)
	_, err := Load(path)
	if err == nil {
		t.Fatal("Load succeeded, want errors")
	}
	msg := err.Error()
	for _, want := range []string{
		path,
		"listen: must be host:port",
		"trustDomain: must be a bare name without a scheme",
		`storage.dsn: required for storage type "postgresql"`,
		`log.level: must be one of debug, info, warn, error; got "verbose"`,
		`provisioners[0].challenges: only valid for provisioner type "acme"`,
		`provisioners[0]: a worker-attestation provisioner needs "workers", "identities" or both`,
		"provisioners[0].claims.maxCertDuration: must be >= defaultCertDuration (24h0m0s)",
		`provisioners[1].policy.allowedIPRanges[0]: "10.0.0.1/8" has host bits set`,
		`provisioners[1].name: duplicate name "w" (also provisioners[0])`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not mention %q; got:\n%s", want, msg)
		}
	}
	if n := len(errorLines(errorsUnwrapOnce(err))); n != 9 {
		t.Errorf("got %d problems, want 9:\n%s", n, msg)
	}
}

// errorsUnwrapOnce strips Load's file-name wrapper to reach the joined
// validation errors.
func errorsUnwrapOnce(err error) error {
	if u, ok := err.(interface{ Unwrap() error }); ok {
		return u.Unwrap()
	}
	return err
}

// TestControllerTTLs: a controller's token lifetimes never exceed its own
// bound or its provisioner's, whichever is tighter, and the default follows.
func TestControllerTTLs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name             string
		joinTokens       *JoinTokens
		maxTTL           time.Duration
		wantDef, wantMax time.Duration
	}{
		{name: "provisioner defaults", wantDef: DefaultJoinTokenDefaultTTL, wantMax: DefaultJoinTokenMaxTTL},
		{name: "own bound below the default", maxTTL: 10 * time.Minute, wantDef: 10 * time.Minute, wantMax: 10 * time.Minute},
		{name: "own bound above the default", maxTTL: 2 * time.Hour, wantDef: DefaultJoinTokenDefaultTTL, wantMax: 2 * time.Hour},
		{name: "custom provisioner", joinTokens: &JoinTokens{DefaultTTL: Dur(5 * time.Minute), MaxTTL: Dur(20 * time.Minute)}, wantDef: 5 * time.Minute, wantMax: 20 * time.Minute},
		{name: "own bound above the provisioner's", joinTokens: &JoinTokens{DefaultTTL: Dur(5 * time.Minute), MaxTTL: Dur(20 * time.Minute)}, maxTTL: time.Hour, wantDef: 5 * time.Minute, wantMax: 20 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default(InitOptions{})
			if tt.joinTokens != nil {
				c.Provisioners[0].JoinTokens = tt.joinTokens
			}
			def, maxTTL := c.ControllerTTLs(Controller{Provisioner: c.Provisioners[0].Name, MaxTTL: Dur(tt.maxTTL)})
			if def != tt.wantDef || maxTTL != tt.wantMax {
				t.Errorf("ControllerTTLs = %v, %v; want %v, %v", def, maxTTL, tt.wantDef, tt.wantMax)
			}
		})
	}
}
