package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/config"
)

// pgCluster is a private PostgreSQL server that a test can stop and start
// again on the same port and data directory; startPostgres uses one too. It
// always runs from local binaries: CRANK_TEST_POSTGRES_DSN points at a
// server the test must not stop.
type pgCluster struct {
	t      *testing.T
	bin    string
	dir    string // socket directory, parent of data
	data   string
	port   int
	asUser []string
	logs   *syncBuffer
	srv    *exec.Cmd
	exited chan struct{}
}

// newPGCluster initialises and starts a cluster; it is stopped at cleanup.
func newPGCluster(t *testing.T) *pgCluster {
	t.Helper()
	bin := postgresBin()
	if bin == "" {
		t.Skip("PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it")
	}
	dir, err := os.MkdirTemp("", "crank-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	p := &pgCluster{t: t, bin: bin, dir: dir, data: filepath.Join(dir, "data"), logs: &syncBuffer{}}
	// PostgreSQL refuses to run as root: run it as the postgres user then.
	if os.Geteuid() == 0 {
		pgUser, err := user.Lookup("postgres")
		if err != nil {
			t.Skip("running as root and there is no postgres user to run PostgreSQL as")
		}
		uid, _ := strconv.Atoi(pgUser.Uid)
		gid, _ := strconv.Atoi(pgUser.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		p.asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if out, err := p.command(ctx, "initdb", "-D", p.data, "-U", "crank", "--auth=trust", "--no-sync", "-E", "UTF8").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	p.port = freePort(t)
	p.start()
	t.Cleanup(p.stop)
	return p
}

func (p *pgCluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	full := append(append([]string{}, p.asUser...), filepath.Join(p.bin, name))
	full = append(full, args...)
	return exec.CommandContext(ctx, full[0], full[1:]...)
}

func (p *pgCluster) dsn(dbname string) string {
	return fmt.Sprintf("postgresql://crank@127.0.0.1:%d/%s?sslmode=disable", p.port, dbname)
}

// start runs the server and waits (at most 60 s) until it accepts
// connections.
func (p *pgCluster) start() {
	p.t.Helper()
	srv := p.command(context.Background(), "postgres", "-D", p.data, "-p", strconv.Itoa(p.port), "-h", "127.0.0.1", "-k", p.dir, "-c", "fsync=off")
	srv.Stdout, srv.Stderr = p.logs, p.logs
	if err := srv.Start(); err != nil {
		p.t.Fatalf("postgres: %v", err)
	}
	p.srv, p.exited = srv, make(chan struct{})
	go func(exited chan struct{}) { _ = srv.Wait(); close(exited) }(p.exited)
	ctx, cancel := context.WithTimeout(p.t.Context(), 60*time.Second)
	defer cancel()
	for {
		out, err := p.command(ctx, "pg_isready", "-h", "127.0.0.1", "-p", strconv.Itoa(p.port)).CombinedOutput()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			p.t.Fatalf("postgres never became ready: %s\n%s", out, p.logs)
		case <-p.exited:
			p.t.Fatalf("postgres exited at start:\n%s", p.logs)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop shuts the server down (fast mode: open connections are cut, as in
// a crash of the database host) and waits, bounded, for it to exit.
func (p *pgCluster) stop() {
	if p.srv == nil {
		return
	}
	srv, exited := p.srv, p.exited
	p.srv = nil
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// pg_ctl reaches the server through its pid file: signals to runuser
	// are not forwarded.
	if out, err := p.command(ctx, "pg_ctl", "stop", "-D", p.data, "-m", "fast", "-w").CombinedOutput(); err != nil {
		p.t.Logf("pg_ctl stop: %v\n%s", err, out)
		_ = srv.Process.Signal(syscall.SIGINT)
	}
	select {
	case <-exited:
	case <-ctx.Done():
		_ = srv.Process.Kill()
		<-exited
	}
}

// healthAnswer is a GET on a health endpoint.
type healthAnswer struct {
	status int
	retry  string
	body   map[string]string
}

func (c *ca) health(t *testing.T, path string) healthAnswer {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, c.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	a := healthAnswer{status: resp.StatusCode, retry: resp.Header.Get("Retry-After")}
	if err := json.NewDecoder(resp.Body).Decode(&a.body); err != nil {
		t.Fatalf("GET %s: %d, body: %v", path, resp.StatusCode, err)
	}
	return a
}

// wantStoreOutage asserts the 503 an ACME route answers while the store is
// down.
func wantStoreOutage(t *testing.T, what string, r rawResp, head bool) {
	t.Helper()
	if r.status != http.StatusServiceUnavailable || r.ct != "application/problem+json" {
		t.Fatalf("%s during the outage: %s", what, r)
	}
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra <= 0 {
		t.Errorf("%s: Retry-After %q", what, r.header.Get("Retry-After"))
	}
	if head {
		if len(r.body) != 0 {
			t.Errorf("%s: HEAD answer with a body %q", what, r.body)
		}
		return
	}
	var p rawProblem
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("%s: %v in %s", what, err, r)
	}
	if p.Type != rawProblemPrefix+"serverInternal" || p.Status != http.StatusServiceUnavailable || p.Detail == "" {
		t.Errorf("%s: problem %+v", what, p)
	}
}

// TestDegradedPostgreSQLOutage stops PostgreSQL under a running CA:
// readiness fails, every ACME route answers 503 with Retry-After instead of
// a bare 500, liveness stays up, and when PostgreSQL is back the CA recovers
// without a restart.
func TestDegradedPostgreSQLOutage(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	pg := newPGCluster(t)
	c := newCA(t, func(cfg *config.Config) {
		cfg.Storage = config.Storage{Type: config.StoragePostgreSQL, DSN: pg.dsn("crank_ca_degraded")}
	})
	c.start()
	if a := c.health(t, "/health/ready"); a.status != http.StatusOK || a.body["status"] != "ready" {
		t.Fatalf("readiness before the outage: %+v\n%s", a, c.logs)
	}
	cl, u := c.newLego("workers", nil)
	if err := c.register(cl, u, c.token("api")); err != nil {
		t.Fatalf("register: %v\n%s", err, c.logs)
	}
	if _, err := obtain(t, c, cl.Certificate, "api.workers.crank.internal"); err != nil {
		t.Fatalf("obtain: %v\n%s", err, c.logs)
	}
	// A new-order signed with a nonce fetched before the outage.
	rc := newRawClient(t, c)
	acc := rc.rawRegisterWorker("web")
	dir := rc.rawDir("workers")
	order := rc.rawSigned("workers", acc, dir.NewOrder,
		rawMarshal(t, map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": "web.workers.crank.internal"}}}))

	pg.stop()
	// Past the readiness cache, which may still hold "ready" from before.
	c.clock.Advance(2 * time.Second)

	if a := c.health(t, "/health/ready"); a.status != http.StatusServiceUnavailable || a.body["status"] != "unavailable" ||
		!strings.HasPrefix(a.body["reason"], "store: ") || a.retry == "" {
		t.Errorf("readiness during the outage: %+v", a)
	}
	for _, path := range []string{"/health/live", "/health"} {
		if a := c.health(t, path); a.status != http.StatusOK || a.body["status"] != "ok" {
			t.Errorf("%s during the outage: %+v", path, a)
		}
	}
	// Advancing the clock past the readiness cache sends a request through
	// smallstep (whose 500 is turned into a 503); without it the cached
	// outage answers at once. Both paths must give the same answer.
	c.clock.Advance(2 * time.Second)
	// Nonces are stateless (package nonce): issuing one touches no store,
	// so new-nonce may still answer, from smallstep or from the cached
	// outage; the nonce is refused only when spent, which needs the store.
	for _, m := range []string{http.MethodHead, http.MethodGet} {
		if r := rc.rawDo(m, dir.NewNonce, "", nil); r.status != http.StatusOK && r.status != http.StatusNoContent {
			wantStoreOutage(t, m+" new-nonce", r, m == http.MethodHead)
		}
	}
	c.clock.Advance(2 * time.Second)
	wantStoreOutage(t, "POST new-order (through smallstep)", rc.rawPost(dir.NewOrder, order), false)
	wantStoreOutage(t, "POST new-order (cached outage)", rc.rawPost(dir.NewOrder, order), false)
	if logs := c.logs.String(); strings.Contains(logs, "panic") {
		t.Fatalf("the server panicked during the outage:\n%s", logs)
	}

	pg.start()
	// Bounded twice: 30 s, and at most 120 rounds (each waits 250 ms).
	deadline := time.Now().Add(30 * time.Second)
	recovered := false
	var last healthAnswer
	var lastErr error
	for attempt := 1; attempt <= 120 && !recovered && time.Now().Before(deadline); attempt++ {
		if last = c.health(t, "/health/ready"); last.status == http.StatusOK {
			if _, lastErr = obtain(t, c, cl.Certificate, "api.workers.crank.internal"); lastErr == nil {
				t.Logf("recovered: issuance succeeded at attempt %d", attempt)
				recovered = true
				break
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	if !recovered {
		t.Fatalf("no recovery within 30 s: readiness %+v, issuance: %v\n%s", last, lastErr, rawTail(c.logs.String(), 40))
	}
	if logs := c.logs.String(); strings.Contains(logs, "panic") {
		t.Errorf("the server panicked:\n%s", logs)
	}
}
