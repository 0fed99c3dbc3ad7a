package integration

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/challenge/http01"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/crank-platform/crank-ca/config"
)

// scrape is one parsed /metrics answer.
type scrape map[string]*dto.MetricFamily

// scrapeMetrics GETs http://addr/metrics and parses the text exposition.
func scrapeMetrics(t *testing.T, addr string) scrape {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %d %v\n%s", resp.StatusCode, err, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse the exposition: %v\n%s", err, body)
	}
	return fams
}

// value is the sample of name whose labels include want (all given labels
// equal): a counter's or gauge's value, a histogram's sample count. Several
// matching samples are added up; none is 0 (ok false).
func (s scrape) value(name string, want ...string) (float64, bool) {
	f := s[name]
	if f == nil {
		return 0, false
	}
	var (
		sum   float64
		found bool
	)
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for i := 0; i+1 < len(want); i += 2 {
			if labels[want[i]] != want[i+1] {
				match = false
			}
		}
		if !match {
			continue
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum, found
}

// moved is one expected change between two scrapes.
type moved struct {
	name   string
	labels []string
	delta  float64
}

// checkMoved asserts each expectation's exact delta.
func checkMoved(t *testing.T, what string, before, after scrape, want []moved) {
	t.Helper()
	for _, w := range want {
		b, _ := before.value(w.name, w.labels...)
		a, _ := after.value(w.name, w.labels...)
		if a-b != w.delta {
			t.Errorf("%s: %s{%s} moved by %v (%v -> %v), want %v", what, w.name, strings.Join(w.labels, ","), a-b, b, a, w.delta)
		}
	}
}

// TestMetrics scrapes crank-ca's /metrics before and after a worker flow
// (lego library, join token), a refused reuse of the token, an ad-hoc flow
// (http-01), a refused name and an ACME revocation, and checks that each
// counter and histogram moved by exactly what the flow did.
func TestMetrics(t *testing.T) {
	t.Parallel()
	httpPort, metricsPort := freePort(t), freePort(t)
	c := newCA(t, func(cfg *config.Config) {
		adhoc(cfg).ValidationPorts = &config.ValidationPorts{HTTP01: httpPort}
		cfg.Metrics.Listen = "127.0.0.1:" + strconv.Itoa(metricsPort)
	})
	c.start()
	addr := c.srv.MetricsAddr()
	if addr != c.cfg.Metrics.Listen {
		t.Fatalf("metrics on %q, configured %q", addr, c.cfg.Metrics.Listen)
	}
	// Not on the ACME port.
	if resp, err := c.httpClient().Get(c.url + "/metrics"); err != nil {
		t.Fatal(err)
	} else if _ = resp.Body.Close(); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /metrics on the ACME port: %d, want 404", resp.StatusCode)
	}
	// The live-certificate gauge is cached for a minute; moving the CA's
	// clock past that makes a scrape recount.
	recount := func() scrape {
		t.Helper()
		c.clock.Advance(2 * time.Minute)
		return scrapeMetrics(t, addr)
	}
	const (
		requests = "crank_ca_http_requests_total"
		latency  = "crank_ca_http_request_duration_seconds"
		issued   = "crank_ca_certificates_issued_total"
		refusals = "crank_ca_acme_refusals_total"
		binds    = "crank_ca_token_binds_total"
		tokens   = "crank_ca_token_refusals_total"
		revoked  = "crank_ca_revocations_total"
		live     = "crank_ca_live_certificates"
		storeOps = "crank_ca_store_operation_duration_seconds"
	)
	route := func(r string) string { return "/acme/{provisioner}/" + r }

	s0 := recount()
	if v, ok := s0.value(live); ok && v != 0 {
		t.Errorf("live certificates before any issuance: %v", v)
	}
	for _, name := range []string{"root", "intermediate"} {
		b, err := os.ReadFile(filepath.Join(c.dir, "pki", name+".crt"))
		if err != nil {
			t.Fatal(err)
		}
		want := float64(parseChain(t, b)[0].NotAfter.Unix())
		if got, _ := s0.value("crank_ca_certificate_not_after_timestamp_seconds", "certificate", name); got != want {
			t.Errorf("%s notAfter gauge = %v, want %v", name, got, want)
		}
	}

	// Worker flow: bind with a join token, order, finalize.
	tok := c.token("api")
	cl, u := c.newLego("workers", nil)
	if err := c.register(cl, u, tok); err != nil {
		t.Fatalf("register: %v\n%s", err, c.logs)
	}
	key := newKey(t)
	if _, err := cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{
		CSR: csrFor(t, key, "", []string{"api.workers.crank.internal"}, nil), PrivateKey: key, Bundle: true,
	}); err != nil {
		t.Fatalf("obtain: %v\n%s", err, c.logs)
	}
	s1 := recount()
	checkMoved(t, "worker flow", s0, s1, []moved{
		{binds, []string{"provisioner", "workers", "method", "join-token"}, 1},
		{issued, []string{"provisioner", "workers"}, 1},
		{issued, []string{"provisioner", "adhoc"}, 0},
		{requests, []string{"route", route("new-account"), "code", "201"}, 1},
		{requests, []string{"route", route("new-order"), "code", "201"}, 1},
		{requests, []string{"route", route("order/{ordID}/finalize"), "code", "200"}, 1},
		{latency, []string{"route", route("order/{ordID}/finalize")}, 1},
		{latency, []string{"route", route("new-order")}, 1},
		{refusals, nil, 0},
		{tokens, nil, 0},
		{live, []string{"provisioner", "workers"}, 1},
	})
	// smallstep's reads of accounts, orders and authorizations, and
	// crank-ca's own transactions (account and binding, order, finalize).
	// Nonce spends ("nonce") reach the store only on PostgreSQL: bbolt's
	// replay set is in memory.
	for _, op := range []string{"get", "txn"} {
		b, _ := s0.value(storeOps, "operation", op)
		a, _ := s1.value(storeOps, "operation", op)
		if a <= b {
			t.Errorf("store operation %q not observed during the worker flow (%v -> %v)", op, b, a)
		}
	}

	// The same token again: refused as used, counted with its reason.
	cl2, u2 := c.newLego("workers", nil)
	err := c.register(cl2, u2, tok)
	wantProblem(t, err, "unauthorized", http.StatusUnauthorized)
	s2 := scrapeMetrics(t, addr)
	checkMoved(t, "reused token", s1, s2, []moved{
		{refusals, []string{"provisioner", "workers", "reason", "unauthorized"}, 1},
		{refusals, nil, 1},
		{tokens, []string{"provisioner", "workers", "reason", "used"}, 1},
		{requests, []string{"route", route("new-account"), "code", "401"}, 1},
		{binds, nil, 0},
		{issued, nil, 0},
	})

	// Ad-hoc flow: a real http-01 validation.
	acl, au := c.newLego("adhoc", nil)
	reg, err := acl.Registration.Register(registrationOptions())
	if err != nil {
		t.Fatal(err)
	}
	au.reg = reg
	if err := acl.Challenge.SetHTTP01Provider(http01.NewProviderServer("127.0.0.1", strconv.Itoa(httpPort))); err != nil {
		t.Fatal(err)
	}
	res, err := acl.Certificate.Obtain(certificate.ObtainRequest{Domains: []string{"localhost"}, Bundle: true})
	if err != nil {
		t.Fatalf("obtain: %v\n%s", err, c.logs)
	}
	s3 := recount()
	checkMoved(t, "ad-hoc flow", s2, s3, []moved{
		{issued, []string{"provisioner", "adhoc"}, 1},
		{issued, []string{"provisioner", "workers"}, 0},
		{binds, nil, 0},
		{requests, []string{"route", route("new-account"), "code", "201"}, 1},
		{requests, []string{"route", route("challenge/{authzID}/{chID}"), "code", "200"}, 1},
		{requests, []string{"route", route("order/{ordID}/finalize"), "code", "200"}, 1},
		{refusals, nil, 0},
		{live, []string{"provisioner", "adhoc"}, 1},
		{live, []string{"provisioner", "workers"}, 0},
	})

	// A name outside the policy: refused with its problem type.
	_, err = obtain(t, c, acl.Certificate, "example.com")
	wantProblem(t, err, "rejectedIdentifier", http.StatusBadRequest)
	// An ACME revocation of the ad-hoc certificate.
	if err := acl.Certificate.Revoke(res.Certificate); err != nil {
		t.Fatalf("revoke: %v\n%s", err, c.logs)
	}
	s4 := recount()
	checkMoved(t, "refusal and revocation", s3, s4, []moved{
		{refusals, []string{"provisioner", "adhoc", "reason", "rejectedIdentifier"}, 1},
		{refusals, nil, 1},
		{revoked, []string{"via", "acme"}, 1},
		{revoked, []string{"via", "admin"}, 0},
		{requests, []string{"route", route("revoke-cert"), "code", "200"}, 1},
		{live, []string{"provisioner", "adhoc"}, -1},
		{issued, nil, 0},
	})

	// No label carries a worker name, an account or a serial.
	for name, f := range s4 {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if v := l.GetValue(); strings.Contains(v, "api") || strings.Contains(v, "localhost") || regexp.MustCompile(`[0-9]{8,}`).MatchString(v) {
					t.Errorf("%s has label %s=%q", name, l.GetName(), v)
				}
			}
		}
	}
}

// TestCrankAgentMetrics runs the crank-agent binary with --metrics-listen
// against a CA issuing 20s certificates: its /metrics reports the expiry
// of the certificate it wrote, the CA's answer to its renewalInfo poll, and
// then a renewal (and the new expiry), with no failures.
func TestCrankAgentMetrics(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs the crank-agent binary through a renewal")
	}
	bin := binary(t, "crank-agent")
	c := newCA(t, shortLived(20*time.Second))
	c.start()
	state := filepath.Join(t.TempDir(), "state")
	var logs syncBuffer
	cmd := exec.Command(bin, "--ca-url", c.url, "--fingerprint", c.fingerprint(), "--worker", "api", "--state", state,
		"--metrics-listen", "127.0.0.1:0", "--log-level", "debug")
	cmd.Env = append(os.Environ(), "CRANK_TOKEN="+c.token("api").Encode())
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
	})
	waitFor := func(what string, limit time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(limit)
		for !cond() {
			select {
			case err := <-exited:
				t.Fatalf("crank-agent exited (%v) while waiting for %s\n%s", err, what, logs.String())
			case <-time.After(100 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s within %s\n%s", what, limit, logs.String())
			}
		}
	}
	var addr string
	addrRE := regexp.MustCompile(`msg="metrics serving" addr=(127\.0\.0\.1:[0-9]+)`)
	waitFor("metrics listener", 30*time.Second, func() bool {
		if m := addrRE.FindStringSubmatch(logs.String()); m != nil {
			addr = m[1]
		}
		return addr != ""
	})
	certFile := filepath.Join(state, "tls", "cert.pem")
	notAfter := func() float64 {
		b, err := os.ReadFile(certFile)
		if err != nil || len(b) == 0 {
			return 0
		}
		return float64(parseChain(t, b)[0].NotAfter.Unix())
	}
	const (
		expiry   = "crank_agent_certificate_not_after_timestamp_seconds"
		renewals = "crank_agent_renewals_total"
		failures = "crank_agent_renewal_failures_total"
		ariPoll  = "crank_agent_last_renewal_info_poll_timestamp_seconds"
	)
	var s scrape
	// The agent holds its certificate (and exports its expiry) a moment
	// before it has written cert.pem: wait for both.
	waitFor("certificate expiry in /metrics and cert.pem written", 30*time.Second, func() bool {
		s = scrapeMetrics(t, addr)
		_, ok := s.value(expiry)
		return ok && notAfter() != 0
	})
	first, _ := s.value(expiry)
	if want := notAfter(); first != want {
		t.Errorf("%s = %v, want the notAfter of cert.pem %v", expiry, first, want)
	}
	waitFor("a renewalInfo poll in /metrics", 30*time.Second, func() bool {
		v, _ := scrapeMetrics(t, addr).value(ariPoll)
		return v > 0
	})
	waitFor("a renewal in /metrics", 60*time.Second, func() bool {
		s = scrapeMetrics(t, addr)
		v, _ := s.value(renewals)
		return v >= 1
	})
	if v, _ := s.value(failures); v != 0 {
		t.Errorf("%s = %v with the CA up\n%s", failures, v, logs.String())
	}
	if v, _ := s.value(expiry); v <= first {
		t.Errorf("after a renewal %s = %v, not later than the first certificate's %v", expiry, v, first)
	}
	if v, ok := s.value("crank_agent_next_renewal_timestamp_seconds"); !ok || v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("next renewal = %v (%v)", v, ok)
	}
	// The expiry shown is the certificate on disk once the files are
	// rewritten (they are written right after the swap).
	waitFor("cert.pem rewritten", 10*time.Second, func() bool {
		v, _ := scrapeMetrics(t, addr).value(expiry)
		return v == notAfter()
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("crank-agent exit: %v\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("crank-agent did not stop on SIGTERM")
	}
}

// TestCrankAgentMetricsUsage: a bad --metrics-listen is a usage error
// naming the flag, and --once refuses it.
func TestCrankAgentMetricsUsage(t *testing.T) {
	t.Parallel()
	bin := binary(t, "crank-agent")
	base := []string{"--ca-url", "https://127.0.0.1:1", "--worker", "api", "--state", t.TempDir()}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--metrics-listen", "nonsense"}, `--metrics-listen "nonsense": want host:port`},
		{[]string{"--metrics-listen", "127.0.0.1:99999"}, `--metrics-listen "127.0.0.1:99999": want host:port`},
		{[]string{"--metrics-listen", "127.0.0.1:9102", "--once"}, "--metrics-listen has no use with --once"},
	}
	for _, tc := range tests {
		_, stderr, code := runCmd(t, bin, append(append([]string{}, base...), tc.args...)...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("crank-agent %v: exit %d, stderr %q; want 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
}
