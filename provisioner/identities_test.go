package provisioner_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/crank-platform/crank-ca/provisioner"
	"github.com/google/go-cmp/cmp"
)

func TestNewIdentitiesLookup(t *testing.T) {
	t.Parallel()
	withWorkers := defaultConfig()
	withWorkers.IPs = []string{"10.1.0.1"}
	withWorkers.Workers = []provisioner.WorkerConfig{
		{Name: "db", DNSNames: []string{"db.crank.internal", "db.crank.internal", "a.crank.internal"}, IPs: []string{"10.0.0.5", "::ffff:10.0.0.4", "fd00::1"}},
		{Name: "api", SPIFFEID: "spiffe://{trustDomain}/svc/api"},
	}
	explicitOnly := provisioner.IdentitiesConfig{
		TrustDomain:      "spiffe://crank.internal",
		SPIFFEIDTemplate: "spiffe://{trustDomain}/w/{worker}",
		Workers:          []provisioner.WorkerConfig{{Name: "x"}},
	}

	tests := []struct {
		name    string
		cfg     provisioner.IdentitiesConfig
		worker  string
		want    provisioner.Identity
		wantErr error
	}{
		{
			name: "pattern worker", cfg: defaultConfig(), worker: "api",
			want: provisioner.Identity{Worker: "api", SPIFFEID: mustID(t, "spiffe://crank.internal/worker/api"), DNSNames: []string{"api.workers.crank.internal"}},
		},
		{
			name: "pattern worker gets shared IPs", cfg: withWorkers, worker: "web-1",
			want: provisioner.Identity{Worker: "web-1", SPIFFEID: mustID(t, "spiffe://crank.internal/worker/web-1"), DNSNames: []string{"web-1.workers.crank.internal"}, IPs: []netip.Addr{netip.MustParseAddr("10.1.0.1")}},
		},
		{
			name: "explicit worker with IPs, sorted and unique", cfg: withWorkers, worker: "db",
			want: provisioner.Identity{
				Worker: "db", SPIFFEID: mustID(t, "spiffe://crank.internal/worker/db"),
				DNSNames: []string{"a.crank.internal", "db.crank.internal"},
				IPs:      []netip.Addr{netip.MustParseAddr("10.0.0.4"), netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::1")},
			},
		},
		{
			name: "explicit worker overrides pattern", cfg: withWorkers, worker: "api",
			want: provisioner.Identity{Worker: "api", SPIFFEID: mustID(t, "spiffe://crank.internal/svc/api")},
		},
		{
			name: "explicit only", cfg: explicitOnly, worker: "x",
			want: provisioner.Identity{Worker: "x", SPIFFEID: mustID(t, "spiffe://crank.internal/w/x")},
		},
		{name: "explicit only: no pattern", cfg: explicitOnly, worker: "y", wantErr: provisioner.ErrUnknownWorker},
		{name: "upper case", cfg: defaultConfig(), worker: "API", wantErr: provisioner.ErrUnknownWorker},
		{name: "empty", cfg: defaultConfig(), worker: "", wantErr: provisioner.ErrUnknownWorker},
		{name: "dot", cfg: defaultConfig(), worker: "a.b", wantErr: provisioner.ErrUnknownWorker},
		{name: "traversal", cfg: defaultConfig(), worker: "../x", wantErr: provisioner.ErrUnknownWorker},
		{name: "leading hyphen", cfg: defaultConfig(), worker: "-a", wantErr: provisioner.ErrUnknownWorker},
		{name: "too long", cfg: defaultConfig(), worker: strings.Repeat("a", 64), wantErr: provisioner.ErrUnknownWorker},
		{
			name:    "rendered name too long",
			cfg:     provisioner.IdentitiesConfig{TrustDomain: "crank.internal", Pattern: "a+", DNSTemplates: []string{"{worker}.{worker}.{worker}.{worker}.x"}},
			worker:  strings.Repeat("a", 63),
			wantErr: provisioner.ErrUnknownWorker,
		},
		{
			name:    "implicit anchoring",
			cfg:     provisioner.IdentitiesConfig{TrustDomain: "crank.internal", Pattern: "web|db"},
			worker:  "webx",
			wantErr: provisioner.ErrUnknownWorker,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ids := mustIdentities(t, tt.cfg)
			got, err := ids.Lookup(tt.worker)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Lookup(%q) error = %v, want %v", tt.worker, err, tt.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), tt.worker) {
					t.Errorf("error %q does not name the worker %q", err, tt.worker)
				}
				return
			}
			if diff := cmp.Diff(tt.want, got, cmpOpts); diff != "" {
				t.Errorf("Lookup(%q) mismatch (-want +got):\n%s", tt.worker, diff)
			}
		})
	}
}

func TestLookupReturnsCopy(t *testing.T) {
	t.Parallel()
	cfg := defaultConfig()
	cfg.Workers = []provisioner.WorkerConfig{{Name: "db", DNSNames: []string{"db.crank.internal"}}}
	ids := mustIdentities(t, cfg)
	a, err := ids.Lookup("db")
	if err != nil {
		t.Fatal(err)
	}
	a.DNSNames[0] = "evil.example"
	b, err := ids.Lookup("db")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"db.crank.internal"}, b.DNSNames); diff != "" {
		t.Errorf("internal state mutated through Lookup result (-want +got):\n%s", diff)
	}
}

func TestExplicit(t *testing.T) {
	t.Parallel()
	cfg := defaultConfig()
	cfg.Workers = []provisioner.WorkerConfig{{Name: "zeta"}, {Name: "alpha"}, {Name: "mid"}}
	got := mustIdentities(t, cfg).Explicit()
	if diff := cmp.Diff([]string{"alpha", "mid", "zeta"}, got); diff != "" {
		t.Errorf("Explicit() mismatch (-want +got):\n%s", diff)
	}
}

func TestNewIdentitiesErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		cfg   provisioner.IdentitiesConfig
		wants []string // every fragment must appear
	}{
		{
			name: "many problems at once",
			cfg: provisioner.IdentitiesConfig{
				TrustDomain:      "crank.internal",
				Pattern:          "(",
				DNSTemplates:     []string{"{worker}.ok.{trustDomain}", "{foo}.x", "*.{worker}", "{worker"},
				IPs:              []string{"1.2.3.4", "nope"},
				SPIFFEIDTemplate: "spiffe://{trustDomain}/static",
				Workers: []provisioner.WorkerConfig{
					{Name: "db"},
					{Name: "db"},
					{Name: "x", IPs: []string{"10.0.0.1", "10.0.0.300"}},
					{Name: "Bad_Name"},
					{Name: "y", DNSNames: []string{"UPPER.example", "ok.example", "*.example", "10.0.0.1"}},
					{Name: "z", SPIFFEID: "spiffe://other.domain/z"},
					{Name: "w", SPIFFEID: "not a uri"},
				},
			},
			wants: []string{
				"pattern: error parsing regexp",
				`dnsTemplates[1]: unknown placeholder "{foo}"`,
				"dnsTemplates[2]: renders an invalid name",
				"dnsTemplates[3]: unterminated placeholder",
				`ips[1]: "nope" is not an IP address`,
				"spiffeIDTemplate: must contain {worker}",
				`workers[1].name: duplicate "db"`,
				`workers[2].ips[1]: "10.0.0.300" is not an IP address`,
				`workers[3].name: "Bad_Name" is not a valid worker name`,
				"workers[4].dnsNames[0]",
				"workers[4].dnsNames[2]: DNS name \"*.example\": wildcards",
				"workers[4].dnsNames[3]",
				`workers[5].spiffeID: "spiffe://other.domain/z" is not in trust domain`,
				"workers[6].spiffeID",
			},
		},
		{
			name:  "bad trust domain",
			cfg:   provisioner.IdentitiesConfig{TrustDomain: "Crank.Internal", Pattern: "a"},
			wants: []string{"trustDomain: "},
		},
		{
			name:  "missing trust domain",
			cfg:   provisioner.IdentitiesConfig{Pattern: "a", DNSTemplates: []string{"{bar}"}},
			wants: []string{"trustDomain: ", `dnsTemplates[0]: unknown placeholder "{bar}"`},
		},
		{
			name: "spiffe template problems",
			cfg: provisioner.IdentitiesConfig{
				TrustDomain: "crank.internal", Pattern: "a",
				SPIFFEIDTemplate: "spiffe://elsewhere/{worker}",
				Workers:          []provisioner.WorkerConfig{{Name: "q", SPIFFEID: "spiffe://{trustDomain}/{nope}"}},
			},
			wants: []string{"spiffeIDTemplate: \"spiffe://elsewhere/sample-worker-0\" is not in trust domain", `workers[0].spiffeID: unknown placeholder "{nope}"`},
		},
		{
			name: "duplicate SPIFFE IDs",
			cfg: provisioner.IdentitiesConfig{
				TrustDomain: "crank.internal",
				Workers: []provisioner.WorkerConfig{
					{Name: "a"},
					{Name: "b", SPIFFEID: "spiffe://crank.internal/worker/a"},
				},
			},
			wants: []string{`workers[1].spiffeID: SPIFFE ID "spiffe://crank.internal/worker/a" already used by worker "a"`},
		},
		{
			name:  "unbalanced brace",
			cfg:   provisioner.IdentitiesConfig{TrustDomain: "crank.internal", DNSTemplates: []string{"a}.{worker}"}},
			wants: []string{`dnsTemplates[0]: unbalanced "}"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ids, err := provisioner.NewIdentities(tt.cfg)
			if err == nil {
				t.Fatalf("NewIdentities() = %v, nil; want error", ids)
			}
			if !errors.Is(err, provisioner.ErrInvalidConfig) {
				t.Errorf("error does not wrap ErrInvalidConfig: %v", err)
			}
			msg := err.Error()
			for _, w := range tt.wants {
				if !strings.Contains(msg, w) {
					t.Errorf("error lacks %q; got:\n%s", w, msg)
				}
			}
			var fe *provisioner.FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error has no *FieldError: %v", err)
			}
		})
	}
}
