package integration

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certificate"

	"github.com/crank-platform/crank-ca/config"
)

// This file fails PostgreSQL over under a running crank-ca: the primary
// crashes, its streaming standby is promoted, and crank-ca follows to the
// new primary through a multi-host DSN with target_session_attrs=read-write,
// without a restart.

// newPGStandby makes a streaming-replication standby of primary with
// pg_basebackup -R and starts it on a port of its own; it is stopped at
// cleanup. initdb --auth=trust already lets crank replicate from
// 127.0.0.1 (pg_hba.conf: host replication all 127.0.0.1/32 trust), and
// wal_level=replica is the default.
func newPGStandby(t *testing.T, primary *pgCluster) *pgCluster {
	t.Helper()
	dir, err := os.MkdirTemp("", "crank-pg-standby-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if len(primary.asUser) > 0 {
		// The same owner as the primary's directory: the postgres user.
		fi, err := os.Stat(primary.dir)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if err := os.Chown(dir, int(st.Uid), int(st.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	s := &pgCluster{t: t, bin: primary.bin, dir: dir, data: filepath.Join(dir, "data"), asUser: primary.asUser, logs: &syncBuffer{}}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if out, err := s.command(ctx, "pg_basebackup", "-D", s.data, "-R", "-X", "stream", "-c", "fast", "--no-sync",
		"-h", "127.0.0.1", "-p", strconv.Itoa(primary.port), "-U", "crank").CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	s.port = freePort(t)
	s.start()
	t.Cleanup(s.stop)
	return s
}

// crash stops the server in immediate mode: every backend is killed at
// once without a checkpoint, as when the database host dies.
func (p *pgCluster) crash() {
	p.t.Helper()
	srv, exited := p.srv, p.exited
	p.srv = nil // nothing left for stop at cleanup
	ctx, cancel := context.WithTimeout(p.t.Context(), 20*time.Second)
	defer cancel()
	if out, err := p.command(ctx, "pg_ctl", "stop", "-D", p.data, "-m", "immediate", "-w").CombinedOutput(); err != nil {
		p.t.Errorf("pg_ctl stop -m immediate: %v\n%s", err, out)
		_ = srv.Process.Signal(syscall.SIGQUIT)
	}
	select {
	case <-exited:
	case <-ctx.Done():
		_ = srv.Process.Kill()
		<-exited
	}
}

// promote turns a standby into a primary and waits until it accepts
// writes.
func (p *pgCluster) promote() {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.t.Context(), 20*time.Second)
	defer cancel()
	if out, err := p.command(ctx, "pg_ctl", "promote", "-D", p.data, "-w", "-t", "15").CombinedOutput(); err != nil {
		p.t.Fatalf("pg_ctl promote: %v\n%s\n%s", err, out, p.logs)
	}
}

// sql runs one query with psql and returns its unaligned output.
func (p *pgCluster) sql(ctx context.Context, db, query string) (string, error) {
	out, err := p.command(ctx, "psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "-U", "crank", "-d", db, "-c", query).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("psql %q: %w: %s", query, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// unreplicated reads the WAL the crashed primary wrote after from (the
// standby's last received position) with pg_waldump: the records, and the
// commits among them, that the standby never received.
func (p *pgCluster) unreplicated(ctx context.Context, from string) (records, commits int, err error) {
	out, err := p.command(ctx, "pg_waldump", "-p", filepath.Join(p.data, "pg_wal"), "-s", from).Output()
	// pg_waldump always ends with an error: the end of the WAL.
	if len(out) == 0 && err != nil {
		var stderr string
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		if !strings.Contains(stderr, "invalid record length") && !strings.Contains(stderr, "could not find a valid record") {
			return 0, 0, fmt.Errorf("pg_waldump: %w %s", err, stderr)
		}
	}
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(l, "rmgr:") {
			continue
		}
		records++
		if strings.Contains(l, "rmgr: Transaction") && strings.Contains(l, "COMMIT") {
			commits++
		}
	}
	return records, commits, nil
}

// requestTimes is the longest request of each phase, over all clients.
type requestTimes struct {
	mu      sync.Mutex
	longest map[int]time.Duration
}

// timedTransport records each request's duration in times.
type timedTransport struct {
	next  http.RoundTripper
	phase *atomic.Int32
	times *requestTimes
}

func (tt *timedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	phase := int(tt.phase.Load())
	start := time.Now()
	resp, err := tt.next.RoundTrip(req)
	d := time.Since(start)
	tt.times.mu.Lock()
	tt.times.longest[phase] = max(tt.times.longest[phase], d)
	tt.times.mu.Unlock()
	return resp, err
}

// readinessEvent is a change of GET /health/ready seen by the monitor.
type readinessEvent struct {
	at     time.Duration // since the crash (negative: before it)
	status string
}

// TestPostgreSQLFailover crashes the PostgreSQL primary under one crank-ca
// serving three lego clients, and promotes its streaming standby. crank-ca's
// DSN names both servers with target_session_attrs=read-write. While no
// primary is up every ACME answer that needs the store is a 503 problem
// with Retry-After, never a 500 or a hang; after the promotion issuance
// succeeds again without restarting crank-ca, and every certificate a client
// received is still known (ARI renewalInfo 200, the admin API). Replication
// is asynchronous: the test reads the crashed primary's WAL for commits the
// standby never received, and tolerates as many unknown certificates.
func TestPostgreSQLFailover(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts two PostgreSQL servers")
	}
	begin := time.Now()
	primary := newPGCluster(t) // skips without PostgreSQL
	standby := newPGStandby(t, primary)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Second)
	defer cancel()
	if got, err := primary.sql(ctx, "postgres", "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"); err != nil || got != "1" {
		t.Fatalf("standby not streaming: %q %v\n%s", got, err, standby.logs)
	}
	const dbname = "crank_ca_pgfailover"
	dsn := fmt.Sprintf("postgresql://crank@127.0.0.1:%d,127.0.0.1:%d/%s?sslmode=disable&target_session_attrs=read-write", primary.port, standby.port, dbname)
	c := newCA(t, func(cfg *config.Config) {
		cfg.Storage = config.Storage{Type: config.StoragePostgreSQL, DSN: dsn}
		raiseLimits(cfg)
	})
	c.start()
	t.Logf("primary on %d, standby on %d, crank-ca serving after %s", primary.port, standby.port, time.Since(begin).Round(time.Millisecond))

	lb := newBalancer(c.roots, hostPort(t, c.url))
	times := &requestTimes{longest: map[int]time.Duration{}}
	const (
		clients    = 3
		wantAfter  = 3                      // certificates per client after the promotion
		retryGap   = 250 * time.Millisecond // instead of the 5 s Retry-After, to keep the test short
		detectGap  = time.Second            // from the crash to the promotion, as a failover manager would take
		loadBudget = 30 * time.Second
	)
	load := make([]*loadClient, clients)
	jobs := make([][]issueJob, clients)
	for i := range load {
		worker := fmt.Sprintf("pgfailover%d", i)
		hc := lb.client()
		hc.Transport = &timedTransport{next: hc.Transport, phase: &lb.phase, times: times}
		cl, u := legoVia(t, c.directory("workers"), hc)
		load[i] = &loadClient{worker: worker, cl: cl, u: u, errs: map[string]int{}}
		if err := load[i].register(c.token(worker)); err != nil {
			t.Fatalf("register %s: %v\n%s", worker, err, rawTail(c.logs.String(), 20))
		}
		jobs[i] = issueJobs(t, worker+".workers.crank.internal", 4)
	}

	// phase: 0 before the crash, 1 from the crash command to the end of
	// the promotion, 2 after it. An issuance counts in the phase it started
	// in; phase 1 includes the ~100 ms pg_ctl takes to see the primary gone
	// and to see the promotion done, when requests can still succeed.
	type received struct {
		leaf          *x509.Certificate
		phase         int
		beforeCrash   bool // received before the crash command was sent
		sincePromoted time.Duration
	}
	var (
		mu         sync.Mutex // guards got and ok
		got        []received
		ok         [clients][3]int
		crashedAt  atomic.Int64
		promotedAt atomic.Int64
	)
	deadline := time.Now().Add(loadBudget)
	var wg sync.WaitGroup
	for i, lc := range load {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for attempt := 0; attempt < 300 && time.Now().Before(deadline); attempt++ {
				mu.Lock()
				done := ok[i][2] >= wantAfter
				mu.Unlock()
				if done {
					return
				}
				phase := int(lb.phase.Load())
				job := jobs[i][attempt%len(jobs[i])]
				res, err := lc.cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: job.csr, PrivateKey: job.key, Bundle: true})
				if err == nil {
					var leaf *x509.Certificate
					if leaf, err = leafOf(res.Certificate); err == nil {
						r := received{leaf: leaf, phase: phase, beforeCrash: crashedAt.Load() == 0}
						if p := promotedAt.Load(); p != 0 {
							r.sincePromoted = time.Since(time.Unix(0, p))
						}
						mu.Lock()
						got = append(got, r)
						ok[i][phase]++
						mu.Unlock()
						continue
					}
				}
				lc.errs[fmt.Sprintf("phase %d: %s", phase, errClass(err))]++
				time.Sleep(retryGap)
			}
			lc.failed = "gave up"
		}()
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()

	// The readiness monitor stands in for the load balancer's health check
	// (GET /health/ready) and records each change of its answer. Polled
	// more often than the readiness cache's 1 s TTL, it keeps a fresh
	// result cached, as a load balancer checking every 2-5 s often does.
	var events []readinessEvent
	monDone := make(chan struct{})
	monStop := make(chan struct{})
	go func() {
		defer close(monDone)
		hc := c.httpClient()
		hc.Timeout = 5 * time.Second
		last := ""
		for {
			status := "error"
			if resp, err := hc.Get(c.url + "/health/ready"); err == nil {
				status = strconv.Itoa(resp.StatusCode)
				_ = resp.Body.Close()
			}
			if status != last {
				var at time.Duration
				if ca := crashedAt.Load(); ca != 0 {
					at = time.Since(time.Unix(0, ca))
				}
				events = append(events, readinessEvent{at: at, status: status})
				last = status
			}
			select {
			case <-monStop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()

	// Crash once every client has issued twice.
	for waited := 0; ; waited++ {
		mu.Lock()
		ready := true
		for i := range ok {
			ready = ready && ok[i][0] >= 2
		}
		mu.Unlock()
		if ready {
			break
		}
		if waited == 1500 {
			t.Fatalf("the clients did not issue before the crash\n%s", rawTail(c.logs.String(), 30))
		}
		time.Sleep(10 * time.Millisecond)
	}
	lb.phase.Store(1)
	crashStart := time.Now()
	crashedAt.Store(crashStart.UnixNano())
	primary.crash()
	crashTook := time.Since(crashStart)

	// What the standby never received: WAL the old primary wrote past the
	// standby's last received position.
	var lostRecords, lostCommits int
	lostKnown := false
	receivedLSN, err := standby.sql(ctx, "postgres", "SELECT pg_last_wal_receive_lsn()")
	if err == nil {
		lostRecords, lostCommits, err = primary.unreplicated(ctx, receivedLSN)
		lostKnown = err == nil
	}
	if err != nil {
		t.Logf("cannot tell what the standby missed: %v", err)
	}

	time.Sleep(max(0, detectGap-time.Since(crashStart)))
	promoteStart := time.Now()
	standby.promote()
	promoteTook := time.Since(promoteStart)
	promotedAt.Store(time.Now().UnixNano())
	lb.phase.Store(2)
	t.Logf("primary crashed in %s; standby had received WAL up to %s, the primary wrote %d more records (%d commits) (known: %t); promoted %s after the crash, in %s",
		crashTook.Round(time.Millisecond), receivedLSN, lostRecords, lostCommits, lostKnown,
		promoteStart.Sub(crashStart).Round(time.Millisecond), promoteTook.Round(time.Millisecond))

	select {
	case <-allDone:
	case <-time.After(time.Until(deadline) + 20*time.Second): // a client's last try may wait for one answer (ResponseHeaderTimeout)
		t.Fatalf("the clients did not finish\n%s", lb.report("before the crash", "no primary", "after the promotion"))
	}
	loadEnd := time.Since(crashStart)
	close(monStop)
	<-monDone

	var sb strings.Builder
	errCounts := map[string]int{}
	for i, lc := range load {
		for k, n := range lc.errs {
			errCounts[k] += n
		}
		firstAfter := time.Duration(0)
		for _, r := range got {
			if r.phase == 2 && strings.HasPrefix(r.leaf.DNSNames[0], lc.worker+".") && (firstAfter == 0 || r.sincePromoted < firstAfter) {
				firstAfter = r.sincePromoted
			}
		}
		fmt.Fprintf(&sb, "client %s: issued %d before the crash, %d started without a primary, %d after the promotion; first after the promotion %s\n",
			lc.worker, ok[i][0], ok[i][1], ok[i][2], firstAfter.Round(time.Millisecond))
		if ok[i][2] < wantAfter {
			t.Errorf("client %s issued %d certificates after the promotion, want %d (%s)", lc.worker, ok[i][2], wantAfter, lc.failed)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(errCounts)) {
		fmt.Fprintf(&sb, "client errors (retried), %s: %d\n", k, errCounts[k])
	}
	for _, e := range events {
		fmt.Fprintf(&sb, "readiness %s at %s after the crash\n", e.status, e.at.Round(time.Millisecond))
	}
	for _, p := range slices.Sorted(maps.Keys(times.longest)) {
		fmt.Fprintf(&sb, "longest request in phase %d: %s\n", p, times.longest[p].Round(time.Millisecond))
	}
	t.Logf("load ended %s after the crash\n%s%s", loadEnd.Round(time.Millisecond),
		lb.report("before the crash", "no primary", "after the promotion"), sb.String())

	if faults := lb.faultList(); len(faults) > 0 {
		t.Errorf("%d answers were 5xx other than a 503 with Retry-After:\n%s\nserver errors:\n%s",
			len(faults), strings.Join(faults, "\n"), rawTail(rawFailedLines(c.logs.String()), 20))
	}
	if lb.count(1, http.StatusServiceUnavailable) == 0 {
		t.Errorf("no 503 while there was no primary: the clients did not meet the failover")
	}
	for p, d := range times.longest {
		if d > 16*time.Second { // one store operation timeout, and a little
			t.Errorf("a request in phase %d took %s", p, d.Round(time.Millisecond))
		}
	}

	// Every certificate a client received is known at the new primary,
	// except at most one per commit the standby never received.
	unknown := map[bool]int{}
	for _, r := range got {
		certID, err := certificate.MakeARICertID(r.leaf)
		if err != nil {
			t.Fatal(err)
		}
		if status, _, body := c.getARI(t, "workers", certID); status != http.StatusOK {
			unknown[r.beforeCrash]++
			t.Logf("renewalInfo of serial %s (phase %d, received before the crash: %t): %d %s", r.leaf.SerialNumber, r.phase, r.beforeCrash, status, body)
		}
	}
	recorded := 0
	for _, lc := range load {
		recorded += len(c.workerCerts(t, lc.worker))
	}
	t.Logf("%d certificates received, %d recorded at the new primary; unknown there: %d received before the crash, %d after; test took %s",
		len(got), recorded, unknown[true], unknown[false], time.Since(begin).Round(time.Millisecond))
	if n := unknown[true] + unknown[false]; n > 0 && (!lostKnown || n > lostCommits) {
		t.Errorf("%d received certificates are unknown after the failover, with %d commits not replicated", n, lostCommits)
	}
	if logs := c.logs.String(); strings.Contains(logs, "panic") {
		t.Errorf("crank-ca panicked:\n%s", rawTail(logs, 40))
	}
}
