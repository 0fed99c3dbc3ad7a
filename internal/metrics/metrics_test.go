package metrics

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func newTestCA(t *testing.T, cfg CAConfig) *CA {
	t.Helper()
	if cfg.Provisioners == nil {
		cfg.Provisioners = []string{"workers", "adhoc"}
	}
	if cfg.AttestorMethods == nil {
		cfg.AttestorMethods = map[string]string{"workers/k8s": "kubernetes"}
	}
	m, err := NewCA(cfg)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return m
}

// series reads every sample of one metric family as "label=value,..." ->
// value (counters, gauges, and histogram sample counts).
func series(t *testing.T, reg prometheus.Gatherer, name string) map[string]float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			out[labelKey(m)] = sampleValue(m)
		}
	}
	return out
}

func labelKey(m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	return strings.Join(parts, ",")
}

func sampleValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return 0
}

// TestAuditHandlerCounts: each audited decision moves exactly its counter,
// with labels from the fixed sets only.
func TestAuditHandlerCounts(t *testing.T) {
	t.Parallel()
	type rec struct {
		level slog.Level
		msg   string
		args  []any
	}
	tests := []struct {
		name   string
		with   []any // logger.With before the record
		recs   []rec
		metric string
		want   map[string]float64
	}{
		{
			name: "issuances by provisioner, unknown names folded",
			recs: []rec{
				{slog.LevelInfo, EventIssued, []any{"serial", "1", "provisioner", "workers"}},
				{slog.LevelInfo, EventIssued, []any{"serial", "2", "provisioner", "workers"}},
				{slog.LevelInfo, EventIssued, []any{"serial", "3", "provisioner", "evil-name"}},
			},
			metric: "crank_ca_certificates_issued_total",
			want:   map[string]float64{"provisioner=workers": 2, "provisioner=adhoc": 0, "provisioner=other": 1},
		},
		{
			name: "refusals by provisioner and problem type",
			recs: []rec{
				{slog.LevelInfo, EventRefused, []any{"provisioner", "workers", "type", "urn:ietf:params:acme:error:unauthorized", "status", 401}},
				{slog.LevelInfo, EventRefused, []any{"provisioner", "adhoc", "type", "urn:ietf:params:acme:error:rejectedIdentifier"}},
				{slog.LevelInfo, EventRefused, []any{"provisioner", "", "type", "urn:ietf:params:acme:error:malformed"}},
				{slog.LevelInfo, EventRefused, []any{"provisioner", "adhoc", "type", "urn:example:made-up"}},
			},
			metric: "crank_ca_acme_refusals_total",
			want: map[string]float64{
				"provisioner=workers,reason=unauthorized":     1,
				"provisioner=adhoc,reason=rejectedIdentifier": 1,
				"provisioner=none,reason=malformed":           1,
				"provisioner=adhoc,reason=other":              1,
			},
		},
		{
			name: "attestations by method, outcome and check",
			recs: []rec{
				{slog.LevelInfo, EventAttestation, []any{"provisioner", "workers", "attestor", "k8s", "outcome", "accepted", "worker", "api"}},
				{slog.LevelWarn, EventAttestation, []any{"provisioner", "workers", "attestor", "k8s", "outcome", "refused", "check", "jti"}},
				{slog.LevelWarn, EventAttestation, []any{"provisioner", "workers", "outcome", "refused", "check", "issuer"}},
				{slog.LevelWarn, EventAttestation, []any{"provisioner", "workers", "attestor", "gone", "outcome", "refused", "check", "made-up"}},
			},
			metric: "crank_ca_attestations_total",
			want: map[string]float64{
				"check=none,method=kubernetes,outcome=accepted,provisioner=workers": 1,
				"check=jti,method=kubernetes,outcome=refused,provisioner=workers":   1,
				"check=issuer,method=none,outcome=refused,provisioner=workers":      1,
				"check=other,method=other,outcome=refused,provisioner=workers":      1,
			},
		},
		{
			name: "binds by method, provisioner from the logger's With",
			with: []any{"provisioner", "workers"},
			recs: []rec{
				{slog.LevelInfo, EventBound, []any{"worker", "api", "account", "a1"}},
				{slog.LevelInfo, EventBound, []any{"worker", "api", "attestor", "k8s"}},
			},
			metric: "crank_ca_token_binds_total",
			want: map[string]float64{
				"method=join-token,provisioner=workers": 1,
				"method=kubernetes,provisioner=workers": 1,
			},
		},
		{
			name: "token refusals by reason",
			recs: []rec{
				{slog.LevelWarn, EventTokenRefused, []any{"provisioner", "workers", "reason", "the join token has expired; mint a new one"}},
				{slog.LevelWarn, EventTokenRefused, []any{"provisioner", "workers", "reason", "the join token has already been used"}},
				{slog.LevelWarn, EventTokenReuse, []any{"provisioner", "workers", "worker", "api"}},
				{slog.LevelWarn, EventTokenRefused, []any{"provisioner", "workers", "reason", `worker "api" is disabled`}},
			},
			metric: "crank_ca_token_refusals_total",
			want: map[string]float64{
				"provisioner=workers,reason=expired":  1,
				"provisioner=workers,reason=used":     2,
				"provisioner=workers,reason=disabled": 1,
			},
		},
		{
			name: "revocations by way",
			recs: []rec{
				{slog.LevelWarn, EventRevoked, []any{"serial", "1", "reason", "key compromise"}},
				{slog.LevelWarn, EventRevoked, []any{"serial", "2", "via", "acme revokeCert"}},
			},
			metric: "crank_ca_revocations_total",
			want:   map[string]float64{"via=admin": 1, "via=acme": 1},
		},
		{
			name: "debug records and other messages count nothing",
			recs: []rec{
				{slog.LevelDebug, EventIssued, []any{"provisioner", "workers"}},
				{slog.LevelInfo, "admin request", []any{"provisioner", "workers"}},
			},
			metric: "crank_ca_certificates_issued_total",
			want:   map[string]float64{"provisioner=workers": 0, "provisioner=adhoc": 0},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := newTestCA(t, CAConfig{})
			log := slog.New(m.AuditHandler(slog.DiscardHandler)).With(tc.with...)
			for _, r := range tc.recs {
				log.Log(t.Context(), r.level, r.msg, r.args...)
			}
			if diff := cmp.Diff(tc.want, series(t, m.Registry(), tc.metric)); diff != "" {
				t.Errorf("%s (-want +got):\n%s", tc.metric, diff)
			}
		})
	}
}

// TestAuditHandlerForwards: records reach the wrapped handler exactly as
// its level allows, and are counted whatever that level.
func TestAuditHandlerForwards(t *testing.T) {
	t.Parallel()
	m := newTestCA(t, CAConfig{})
	var buf bytes.Buffer
	inner := slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn})
	log := slog.New(m.AuditHandler(inner)).With("log", "audit").WithGroup("g")
	log.Info(EventIssued, "provisioner", "workers")
	log.Warn(EventRevoked, "serial", "1")
	out := buf.String()
	if strings.Contains(out, EventIssued) {
		t.Errorf("an info record reached a warn-level handler:\n%s", out)
	}
	if !strings.Contains(out, EventRevoked) || !strings.Contains(out, "log=audit") || !strings.Contains(out, "g.serial=1") {
		t.Errorf("the warn record did not reach the handler intact:\n%s", out)
	}
	// Inside a group the provisioner attribute is not the event's own.
	if got := series(t, m.Registry(), "crank_ca_certificates_issued_total")["provisioner=none"]; got != 1 {
		t.Errorf("issued{provisioner=none} = %v, want 1", got)
	}
	if got := series(t, m.Registry(), "crank_ca_revocations_total")["via=admin"]; got != 1 {
		t.Errorf("revocations{via=admin} = %v, want 1", got)
	}
}

func TestReasons(t *testing.T) {
	t.Parallel()
	tests := []struct {
		fn   func(string) string
		in   string
		want string
	}{
		{ProblemReason, "urn:ietf:params:acme:error:badNonce", "badNonce"},
		{ProblemReason, "urn:ietf:params:acme:error:alreadyReplaced", "alreadyReplaced"},
		{ProblemReason, "urn:ietf:params:acme:error:", "other"},
		{ProblemReason, "badNonce", "other"},
		{ProblemReason, "urn:ietf:params:acme:error:" + strings.Repeat("x", 300), "other"},
		{TokenReason, "the join token has expired; mint a new one", "expired"},
		{TokenReason, "the join token is not valid for this CA (tampered or minted elsewhere)", "forged"},
		{TokenReason, "the external account binding kid is not a crank-ca token", "malformed"},
		{TokenReason, `the token was minted for provisioner "a", not "b"`, "wrong-provisioner"},
		{TokenReason, `the join token was minted before worker "api" was disabled; mint a new one`, "disabled"},
		{TokenReason, "the join token has already been used", "used"},
		{TokenReason, "something new", "other"},
	}
	for _, tc := range tests {
		if got := tc.fn(tc.in); got != tc.want {
			t.Errorf("reason(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestLiveCertificatesCached: the store is counted at most once per cache
// period whatever the scrape rate, a failed count keeps the last good one,
// and before any good count nothing (not a false zero) is exported.
func TestLiveCertificatesCached(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	var (
		calls  int
		counts = map[string]int{"workers": 3, "adhoc": 1, "removed-since": 2}
		fail   = errors.New("store down")
		err    = fail
	)
	m := newTestCA(t, CAConfig{
		LiveCacheTTL: time.Minute, Now: clk.Now,
		LiveCertificates: func(context.Context) (map[string]int, error) {
			calls++
			return counts, err
		},
	})
	const name = "crank_ca_live_certificates"
	if got := series(t, m.Registry(), name); len(got) != 0 {
		t.Fatalf("before a good count: %v, want nothing", got)
	}
	err = nil
	want := map[string]float64{"provisioner=workers": 3, "provisioner=adhoc": 1, "provisioner=other": 2}
	for range 5 {
		if diff := cmp.Diff(want, series(t, m.Registry(), name)); diff != "" {
			t.Fatalf("live (-want +got):\n%s", diff)
		}
	}
	if calls != 2 {
		t.Errorf("store counted %d times for 1 failed and 5 scrapes within the period, want 2", calls)
	}
	counts = map[string]int{"workers": 4}
	err = fail
	clk.Advance(time.Minute)
	if diff := cmp.Diff(want, series(t, m.Registry(), name)); diff != "" {
		t.Errorf("after a failed recount the last good count stays (-want +got):\n%s", diff)
	}
	err = nil
	if diff := cmp.Diff(map[string]float64{"provisioner=workers": 4, "provisioner=adhoc": 0}, series(t, m.Registry(), name)); diff != "" {
		t.Errorf("after a good recount (-want +got):\n%s", diff)
	}
	if calls != 4 {
		t.Errorf("store counted %d times, want 4", calls)
	}
}

func TestCACertExpiry(t *testing.T) {
	t.Parallel()
	root, inter := time.Unix(2_000_000_000, 0), time.Unix(1_900_000_000, 0)
	m := newTestCA(t, CAConfig{CACerts: func() []CACert {
		return []CACert{{Name: "root", NotAfter: root}, {Name: "intermediate", NotAfter: inter}}
	}})
	want := map[string]float64{"certificate=root": 2e9, "certificate=intermediate": 1.9e9}
	if diff := cmp.Diff(want, series(t, m.Registry(), "crank_ca_certificate_not_after_timestamp_seconds")); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestRequestsAndStore(t *testing.T) {
	t.Parallel()
	m := newTestCA(t, CAConfig{})
	m.ObserveRequest("/acme/{provisioner}/new-order", 201, 3*time.Millisecond)
	m.ObserveRequest("/acme/{provisioner}/new-order", 201, 2*time.Second)
	m.ObserveRequest("/acme/{provisioner}/new-order", 403, time.Millisecond)
	m.ObserveStore("get", time.Millisecond)
	checks := []struct {
		metric string
		want   map[string]float64
	}{
		{"crank_ca_http_requests_total", map[string]float64{
			"code=201,route=/acme/{provisioner}/new-order": 2, "code=403,route=/acme/{provisioner}/new-order": 1}},
		{"crank_ca_http_request_duration_seconds", map[string]float64{"route=/acme/{provisioner}/new-order": 3}},
		{"crank_ca_store_operation_duration_seconds", map[string]float64{"operation=get": 1}},
	}
	for _, c := range checks {
		if diff := cmp.Diff(c.want, series(t, m.Registry(), c.metric)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", c.metric, diff)
		}
	}
}

// TestRegistriesIndependent: two instances in one process share nothing
// (no global registry).
func TestRegistriesIndependent(t *testing.T) {
	t.Parallel()
	a, b := newTestCA(t, CAConfig{}), newTestCA(t, CAConfig{})
	slog.New(a.AuditHandler(nil)).Info(EventIssued, "provisioner", "workers")
	if got := series(t, b.Registry(), "crank_ca_certificates_issued_total")["provisioner=workers"]; got != 0 {
		t.Errorf("second instance counted the first's issuance: %v", got)
	}
	if got := series(t, a.Registry(), "crank_ca_certificates_issued_total")["provisioner=workers"]; got != 1 {
		t.Errorf("first instance: %v, want 1", got)
	}
}

func TestAgent(t *testing.T) {
	t.Parallel()
	var (
		mu       sync.Mutex
		notAfter time.Time
	)
	m, err := NewAgent(AgentConfig{NotAfter: func() (time.Time, bool) {
		mu.Lock()
		defer mu.Unlock()
		return notAfter, !notAfter.IsZero()
	}})
	if err != nil {
		t.Fatal(err)
	}
	const expiry = "crank_agent_certificate_not_after_timestamp_seconds"
	if got := series(t, m.Registry(), expiry); len(got) != 0 {
		t.Errorf("expiry before a certificate: %v, want none", got)
	}
	mu.Lock()
	notAfter = time.Unix(1_800_000_123, 0)
	mu.Unlock()
	m.Renewal(nil)
	m.Renewal(errors.New("CA down"))
	m.Renewal(errors.New("CA down"))
	m.RenewalInfoPolled(time.Unix(1_800_000_000, 0))
	checks := map[string]map[string]float64{
		expiry:                               {"": 1_800_000_123},
		"crank_agent_renewals_total":         {"": 1},
		"crank_agent_renewal_failures_total": {"": 2},
		"crank_agent_last_renewal_info_poll_timestamp_seconds": {"": 1_800_000_000},
	}
	for name, want := range checks {
		if diff := cmp.Diff(want, series(t, m.Registry(), name)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}
	if _, err := NewAgent(AgentConfig{}); err == nil {
		t.Error("NewAgent without NotAfter: no error")
	}
}

// TestServe: the listener serves the exposition format at /metrics only,
// and stops when its context ends.
func TestServe(t *testing.T) {
	t.Parallel()
	m := newTestCA(t, CAConfig{})
	slog.New(m.AuditHandler(nil)).Info(EventIssued, "provisioner", "adhoc")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, m.Handler()) }()
	t.Cleanup(cancel)
	client := &http.Client{Timeout: 5 * time.Second}
	base := "http://" + ln.Addr().String()

	resp, err := client.Get(base + Path)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", Path, resp.StatusCode)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, body)
	}
	f := fams["crank_ca_certificates_issued_total"]
	if f == nil {
		t.Fatalf("no issued counter in:\n%s", body)
	}
	got := map[string]float64{}
	for _, mt := range f.GetMetric() {
		got[labelKey(mt)] = sampleValue(mt)
	}
	if diff := cmp.Diff(map[string]float64{"provisioner=adhoc": 1, "provisioner=workers": 0}, got); diff != "" {
		t.Errorf("scraped (-want +got):\n%s", diff)
	}
	for _, p := range []string{"/", "/metrics/x", "/debug/pprof/"} {
		resp, err := client.Get(base + p)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

// TestSetLabels: after a reload adds a provisioner, its events carry its
// name rather than "other".
func TestSetLabels(t *testing.T) {
	t.Parallel()
	m := newTestCA(t, CAConfig{})
	log := slog.New(m.AuditHandler(nil))
	log.Info(EventIssued, "provisioner", "batch")
	m.SetLabels([]string{"workers", "adhoc", "batch"}, map[string]string{"batch/oidc": "oidc"})
	log.Info(EventIssued, "provisioner", "batch")
	log.Info(EventBound, "provisioner", "batch", "attestor", "oidc")
	want := map[string]float64{"provisioner=workers": 0, "provisioner=adhoc": 0, "provisioner=other": 1, "provisioner=batch": 1}
	if diff := cmp.Diff(want, series(t, m.Registry(), "crank_ca_certificates_issued_total")); diff != "" {
		t.Errorf("issued (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]float64{"method=oidc,provisioner=batch": 1}, series(t, m.Registry(), "crank_ca_token_binds_total")); diff != "" {
		t.Errorf("binds (-want +got):\n%s", diff)
	}
}
