package integration

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/server"
	"github.com/crank-platform/crank-ca/internal/stepca"
)

// TestClusterDuties runs two replicas on one PostgreSQL database with a
// short retention interval and CRL validity. Each cluster duty (retention
// pass, CRL generation) runs at exactly one replica while both are up; CRL
// numbers strictly increase and what replica A revokes is in the CRL
// replica B serves right away; when the holder stops, the other replica
// takes both duties over, after the last run of the old holder.
func TestClusterDuties(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	dsn := startPostgres(t, "crank_ca_cluster")
	a := newCA(t, func(cfg *config.Config) {
		cfg.Storage = config.Storage{Type: config.StoragePostgreSQL, DSN: dsn, MaxConns: config.DefaultMaxConns}
	})
	// Shorter than validation allows, so that the test sees many runs.
	a.cfg.Retention.Interval.Duration = 200 * time.Millisecond
	a.cfg.CRL.Interval.Duration = 3 * time.Second
	a.start()
	// A holds both leases before B starts, so stopping A hands both over.
	waitDuty(ctx, t, a, "cluster duty lease acquired", "crank-ca/retention")
	waitDuty(ctx, t, a, "cluster duty lease acquired", "crank-ca/crl")
	b := a.replica(t)

	// A certificate issued and revoked at A is in the CRL B serves at once.
	tok := a.token("api")
	cl, u := a.newLego("workers", nil)
	if err := a.register(cl, u, tok); err != nil {
		t.Fatalf("register: %v\n%s", err, a.logs)
	}
	res, err := obtain(t, a, cl.Certificate, "api.workers.crank.internal")
	if err != nil {
		t.Fatalf("obtain: %v\n%s", err, a.logs)
	}
	leaf := parseChain(t, res.Certificate)[0]
	var rr admin.RevokeResult
	if st := a.admin(t, http.MethodPost, "/revoke", admin.RevokeRequest{Serial: leaf.SerialNumber.String(), Reason: "keyCompromise"}, &rr); st != http.StatusOK {
		t.Fatalf("revoke at A: %d", st)
	}
	revoked := time.Now()
	crl := b.fetchCRL(t)
	latency := time.Since(revoked)
	if !crlHas(crl, leaf.SerialNumber) {
		t.Fatalf("the CRL B served %s after the revocation at A (number %d) does not list it\nA:\n%s\nB:\n%s", latency, crl.Number, a.logs, b.logs)
	}
	t.Logf("revoked at A, listed in B's CRL %d after %s (bound: %s check + one generation)", crl.Number, latency.Round(time.Millisecond), stepca.CRLCheckInterval)

	// Both up for a while: every run happens at A, none at B; the CRL both
	// serve never goes backwards.
	var served []int64
	for until := time.Now().Add(4 * time.Second); time.Now().Before(until); time.Sleep(250 * time.Millisecond) {
		for _, r := range []*ca{a, b} {
			served = append(served, r.fetchCRL(t).Number.Int64())
		}
	}
	for i := 1; i < len(served); i++ {
		if served[i] < served[i-1] {
			t.Errorf("CRL numbers served went backwards: %v", served)
			break
		}
	}
	passesA, crlsA := logRecords(a, "retention pass"), logRecords(a, "CRL generated")
	if len(passesA) < 5 || len(crlsA) < 2 {
		t.Errorf("A (the holder) ran %d retention passes and generated %d CRLs in ~5 s, want at least 5 and 2", len(passesA), len(crlsA))
	}
	if n, m := len(logRecords(b, "retention pass")), len(logRecords(b, "CRL generated")); n != 0 || m != 0 {
		t.Errorf("B ran %d retention passes and generated %d CRLs while A held the leases, want none", n, m)
	}
	if !strings.Contains(b.logs.String(), "another replica holds the lease") {
		t.Error("B's skipped runs are not logged")
	}
	for _, r := range passesA {
		if r.attrs["addr"] != strings.TrimPrefix(a.url, "https://") {
			t.Fatalf("a retention pass logged addr %q, want A's %s", r.attrs["addr"], a.url)
		}
	}

	// Stop A: B takes both duties over, after A's last run.
	a.stop()
	stopped := time.Now()
	waitDuty(ctx, t, b, "retention pass", "")
	waitDuty(ctx, t, b, "CRL generated", "")
	t.Logf("B ran its first retention pass %s and generated its first CRL %s after A stopped",
		logRecords(b, "retention pass")[0].time.Sub(stopped).Round(time.Millisecond),
		logRecords(b, "CRL generated")[0].time.Sub(stopped).Round(time.Millisecond))
	passesA, crlsA = logRecords(a, "retention pass"), logRecords(a, "CRL generated")
	passesB, crlsB := logRecords(b, "retention pass"), logRecords(b, "CRL generated")
	if !passesB[0].time.After(passesA[len(passesA)-1].time) {
		t.Errorf("B's first retention pass (%s) does not follow A's last (%s)", passesB[0].time, passesA[len(passesA)-1].time)
	}
	if !crlsB[0].time.After(crlsA[len(crlsA)-1].time) {
		t.Errorf("B's first CRL (%s) does not follow A's last (%s)", crlsB[0].time, crlsA[len(crlsA)-1].time)
	}
	var numbers []int64
	for _, r := range append(crlsA, crlsB...) {
		n, err := strconv.ParseInt(r.attrs["crlNumber"], 10, 64)
		if err != nil {
			t.Fatalf("CRL generated without a number: %v", r.attrs)
		}
		numbers = append(numbers, n)
	}
	for i := 1; i < len(numbers); i++ {
		if numbers[i] <= numbers[i-1] {
			t.Fatalf("CRL numbers in generation order %v do not strictly increase", numbers)
		}
	}
	if crl := b.fetchCRL(t); crl.Number.Int64() != numbers[len(numbers)-1] || !crlHas(crl, leaf.SerialNumber) {
		t.Errorf("B serves CRL %d, want the last generated (%d) still listing the revocation", crl.Number, numbers[len(numbers)-1])
	}
	t.Logf("retention passes: A %d, B %d; CRLs generated: A %d, B %d; numbers %v", len(passesA), len(passesB), len(crlsA), len(crlsB), numbers)
}

// replica serves a second replica of c's CA (same configuration, so the
// same database and key material) on a new port, with its own logs.
func (c *ca) replica(t *testing.T) *ca {
	t.Helper()
	r := *c
	r.logs = &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := server.New(t.Context(), server.Deps{Config: c.cfg, Logger: logger, Audit: logger.With("log", "audit"), Now: c.clock.Now})
	if err != nil {
		t.Fatalf("replica: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = srv.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.url, r.srv, r.cancel, r.done = "https://"+ln.Addr().String(), srv, cancel, make(chan error, 1)
	go func() { r.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(r.stop)
	return &r
}

// logRecord is one line of a text-handler log.
type logRecord struct {
	time  time.Time
	attrs map[string]string
}

var logAttr = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S*)`)

// logRecords are c's log lines with the message msg, in order.
func logRecords(c *ca, msg string) []logRecord {
	var out []logRecord
	for line := range strings.SplitSeq(c.logs.String(), "\n") {
		if !strings.Contains(line, `msg="`+msg+`"`) {
			continue
		}
		r := logRecord{attrs: map[string]string{}}
		for _, m := range logAttr.FindAllStringSubmatch(line, -1) {
			v := m[2]
			if uq, err := strconv.Unquote(v); err == nil {
				v = uq
			}
			r.attrs[m[1]] = v
		}
		r.time, _ = time.Parse(time.RFC3339Nano, r.attrs["time"])
		out = append(out, r)
	}
	return out
}

// waitDuty waits until c logs msg (for duty, unless empty).
func waitDuty(ctx context.Context, t *testing.T, c *ca, msg, duty string) {
	t.Helper()
	for {
		for _, r := range logRecords(c, msg) {
			if duty == "" || r.attrs["duty"] == duty {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s never logged %q %s\n%s", c.url, msg, duty, c.logs)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
