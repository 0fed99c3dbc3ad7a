package config

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestApplyDefaults(t *testing.T) {
	t.Parallel()
	workerClaims, _ := DefaultClaims(TypeWorkerAttestation)
	acmeClaims, _ := DefaultClaims(TypeACME)
	tests := []struct {
		name string
		in   *Config
		want *Config
	}{
		{
			name: "everything from nothing",
			in: &Config{Provisioners: []Provisioner{
				{Name: "w", Type: TypeWorkerAttestation, Workers: &WorkerPattern{Pattern: "x"}},
				{Name: "a", Type: TypeACME, ValidationPorts: &ValidationPorts{}},
				{Name: "u", Type: "unknown"},
			}},
			want: &Config{
				Listen:      "127.0.0.1:9090",
				DNSNames:    []string{"localhost"},
				TrustDomain: "crank.internal",
				PKI: PKI{
					RootCert: "pki/root.crt", IntermediateCert: "pki/intermediate.crt", IntermediateKey: "pki/intermediate.key",
					ServerCertLifetime: Dur(24 * time.Hour),
				},
				Storage:      Storage{Type: "bbolt", Path: "db/crank-ca.db"},
				TokenKeyFile: "secrets/token.key",
				Retention:    Retention{ExpiredCertificates: Dur(24 * time.Hour), Interval: Dur(time.Hour), UnusedAccounts: Dur(24 * time.Hour)},
				Log:          Log{Level: "info", Format: "text"},
				Admin:        Admin{SPIFFEIDs: []string{"spiffe://crank.internal/admin/operator"}, CertFile: "admin/operator.crt", KeyFile: "admin/operator.key"},
				ARI:          ARI{BandStartPercent: 50, BandEndPercent: 80, WindowPercent: 5, MinRetryAfter: Dur(5 * time.Second), MaxRetryAfter: Dur(time.Hour)},
				CRL:          CRL{Interval: Dur(time.Hour)},
				Provisioners: []Provisioner{
					{
						Name: "w", Type: TypeWorkerAttestation,
						Claims:        Claims{Dur(5 * time.Minute), Dur(24 * time.Hour), Dur(168 * time.Hour)},
						Workers:       &WorkerPattern{Pattern: "x", SPIFFEIDTemplate: "spiffe://{trustDomain}/worker/{worker}"},
						JoinTokens:    &JoinTokens{DefaultTTL: Dur(time.Hour), MaxTTL: Dur(24 * time.Hour)},
						MaxBindingAge: Dur(24 * time.Hour),
						Limits:        defaultLimits(),
					},
					{
						Name: "a", Type: TypeACME,
						Claims:          Claims{Dur(5 * time.Minute), Dur(24 * time.Hour), Dur(2160 * time.Hour)},
						Challenges:      []string{"http-01", "tls-alpn-01", "dns-01"},
						ValidationPorts: &ValidationPorts{HTTP01: 80, TLSALPN01: 443},
						Limits:          defaultLimits(),
					},
					{Name: "u", Type: "unknown"},
				},
			},
		},
		{
			name: "set values are kept, partial claims completed",
			in: &Config{
				Listen:   ":1",
				DNSNames: []string{"ca.example"},
				Storage:  Storage{Type: StoragePostgreSQL, DSN: "host=db"},
				Log:      Log{Level: "debug"},
				Provisioners: []Provisioner{{
					Name: "w", Type: TypeWorkerAttestation,
					Claims:     Claims{MaxCertDuration: Dur(48 * time.Hour)},
					JoinTokens: &JoinTokens{MaxTTL: Dur(2 * time.Hour)},
				}, {
					Name: "a", Type: TypeACME, Challenges: []string{"dns-01"},
					ValidationPorts: &ValidationPorts{HTTP01: 5002},
				}},
			},
			want: &Config{
				Listen:      ":1",
				DNSNames:    []string{"ca.example"},
				TrustDomain: "crank.internal",
				PKI: PKI{
					RootCert: "pki/root.crt", IntermediateCert: "pki/intermediate.crt", IntermediateKey: "pki/intermediate.key",
					ServerCertLifetime: Dur(24 * time.Hour),
				},
				Storage:      Storage{Type: "postgresql", DSN: "host=db", MaxConns: 16},
				TokenKeyFile: "secrets/token.key",
				Retention:    Retention{ExpiredCertificates: Dur(24 * time.Hour), Interval: Dur(time.Hour), UnusedAccounts: Dur(24 * time.Hour)},
				Log:          Log{Level: "debug", Format: "text"},
				Admin:        Admin{SPIFFEIDs: []string{"spiffe://crank.internal/admin/operator"}, CertFile: "admin/operator.crt", KeyFile: "admin/operator.key"},
				ARI:          ARI{BandStartPercent: 50, BandEndPercent: 80, WindowPercent: 5, MinRetryAfter: Dur(5 * time.Second), MaxRetryAfter: Dur(time.Hour)},
				CRL:          CRL{Interval: Dur(time.Hour)},
				Provisioners: []Provisioner{{
					Name: "w", Type: TypeWorkerAttestation,
					Claims:        Claims{workerClaims.MinCertDuration, workerClaims.DefaultCertDuration, Dur(48 * time.Hour)},
					JoinTokens:    &JoinTokens{DefaultTTL: Dur(time.Hour), MaxTTL: Dur(2 * time.Hour)},
					MaxBindingAge: Dur(24 * time.Hour),
					Limits:        defaultLimits(),
				}, {
					Name: "a", Type: TypeACME, Challenges: []string{"dns-01"},
					Claims:          acmeClaims,
					ValidationPorts: &ValidationPorts{HTTP01: 5002, TLSALPN01: 443},
					Limits:          defaultLimits(),
				}},
			},
		},
		{
			name: "postgresql gets a pool size and no bbolt path",
			in:   &Config{Storage: Storage{Type: StoragePostgreSQL}},
			want: func() *Config {
				c := &Config{}
				c.ApplyDefaults()
				c.Storage = Storage{Type: StoragePostgreSQL, MaxConns: DefaultMaxConns}
				return c
			}(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.in.ApplyDefaults()
			if diff := cmp.Diff(tt.want, tt.in); diff != "" {
				t.Errorf("ApplyDefaults mismatch (-want +got):\n%s", diff)
			}
			again := *tt.in
			again.ApplyDefaults()
			if diff := cmp.Diff(tt.in, &again); diff != "" {
				t.Errorf("ApplyDefaults not idempotent (-first +second):\n%s", diff)
			}
		})
	}
}

func defaultLimits() *Limits {
	return &Limits{MaxIdentifiersPerOrder: 100, MaxPendingOrdersPerAccount: 100, NewAccountsPerMinute: 60, NewOrdersPerMinute: 600}
}

func TestDefaultIsValidAndHasInitProvisioners(t *testing.T) {
	t.Parallel()
	c := Default(InitOptions{TrustDomain: "example.test", DNSNames: []string{"ca.example.test"}})
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Listen != DefaultListen || c.DNSNames[0] != "ca.example.test" {
		t.Errorf("listen/dnsNames = %q/%q", c.Listen, c.DNSNames)
	}
	adhoc, ok := c.Provisioner("adhoc")
	if !ok {
		t.Fatal("no adhoc provisioner")
	}
	want := &NamePolicy{AllowedDNSSuffixes: []string{"localhost", "example.test"}, DeniedDNSSuffixes: []string{"workers.example.test"}, AllowedIPRanges: []string{"127.0.0.0/8", "::1/128"}}
	if diff := cmp.Diff(want, adhoc.Policy); diff != "" {
		t.Errorf("adhoc policy (-want +got):\n%s", diff)
	}
	if _, ok := c.Provisioner("workers"); !ok {
		t.Error("no workers provisioner")
	}
}

func TestDefaultCopiesDNSNames(t *testing.T) {
	t.Parallel()
	names := []string{"a.example"}
	c := Default(InitOptions{DNSNames: names})
	c.DNSNames[0] = "changed.example"
	if names[0] != "a.example" {
		t.Error("Default aliases opts.DNSNames")
	}
}

func TestResolve(t *testing.T) {
	t.Parallel()
	abs := filepath.Join(string(filepath.Separator), "etc", "crank-ca")
	tests := []struct {
		dir, in, want string
	}{
		{abs, "pki/root.crt", filepath.Join(abs, "pki", "root.crt")},
		{abs, "../x", filepath.Join(string(filepath.Separator), "etc", "x")},
		{abs, "/var/lib/ca.db", "/var/lib/ca.db"},
		{abs, "", ""},
		{"", "pki/root.crt", "pki/root.crt"},
	}
	for _, tt := range tests {
		t.Run(tt.dir+"|"+tt.in, func(t *testing.T) {
			t.Parallel()
			c := &Config{Dir: tt.dir}
			if got := c.Resolve(tt.in); got != tt.want {
				t.Errorf("Resolve(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestProvisionerLookup(t *testing.T) {
	t.Parallel()
	c := Default(InitOptions{})
	p, ok := c.Provisioner("adhoc")
	if !ok || p.Type != TypeACME {
		t.Fatalf("Provisioner(adhoc) = %v, %v", p, ok)
	}
	p.RequireEAB = true
	if !c.Provisioners[1].RequireEAB {
		t.Error("Provisioner does not point into the config")
	}
	if p, ok := c.Provisioner("nope"); ok || p != nil {
		t.Errorf("Provisioner(nope) = %v, %v; want nil, false", p, ok)
	}
}

// TestDefaultWorkerPatternAdmitsOnlyValidNames keeps the pattern Default
// writes in line with the worker name syntax: every name it admits must be
// a valid worker name (no '-' at either end), and every valid name admitted.
func TestDefaultWorkerPatternAdmitsOnlyValidNames(t *testing.T) {
	t.Parallel()
	re := regexp.MustCompile("^(?:" + DefaultWorkerPattern + ")$")
	for _, name := range []string{
		"a", "0", "hello", "web-1", "a--b", strings.Repeat("a", 63), "a" + strings.Repeat("-", 61) + "b",
		"", "-", "-a", "a-", "-a-", "A", "a_b", "a.b", strings.Repeat("a", 64),
	} {
		if got, want := re.MatchString(name), isDNSLabel(name); got != want {
			t.Errorf("pattern matches %q = %v, but valid name = %v", name, got, want)
		}
	}
	w, ok := Default(InitOptions{}).Provisioner("workers")
	if !ok || w.Workers == nil || w.Workers.Pattern != DefaultWorkerPattern {
		t.Errorf("Default workers provisioner = %+v, want pattern %q", w, DefaultWorkerPattern)
	}
}
