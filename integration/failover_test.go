package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/provisioner"
)

// This file takes parts of a replicated crank-ca away under load: one of two
// serve processes is killed, or PostgreSQL stops and starts again. Clients
// reach the replicas through a stand-in for a load balancer.

// balancer stands in for a load balancer in front of replicas that share
// one store. Clients address one URL; each request goes to the next replica
// in turn (so a client's consecutive requests land on different replicas),
// and a request that cannot reach a replica (refused, reset, cut off) goes
// to the next one, at most maxAttempts times in all. It records every
// answer: its phase (set by the test) and status, and each 5xx that is not
// a proper 503 (problem document with Retry-After).
type balancer struct {
	addrs []string // host:port of each replica
	roots *x509.CertPool
	phase atomic.Int32

	mu       sync.Mutex
	statuses map[answerKey]int
	connErrs map[string]int    // "replica: error" -> count
	retried  int               // requests sent again to another replica
	faults   []string          // 5xx answers other than a proper 503
	details  map[string]string // first problem detail per request and type
}

const balancerAttempts = 4

// answerKey counts answers by the test's phase, request and status.
type answerKey struct {
	phase   int
	request string // method and ACME resource, e.g. "POST finalize"
	status  int
	problem string // the problem type of an error answer
}

func newBalancer(roots *x509.CertPool, addrs ...string) *balancer {
	return &balancer{addrs: addrs, roots: roots, statuses: map[answerKey]int{}, connErrs: map[string]int{}, details: map[string]string{}}
}

// acmeResource names the ACME resource of a path: the segment after
// /acme/<provisioner>/, or "finalize" for an order's finalize URL.
func acmeResource(p string) string {
	parts := strings.Split(strings.Trim(p, "/"), "/")
	switch {
	case len(parts) < 3 || parts[0] != "acme":
		return p
	case parts[len(parts)-1] == "finalize":
		return "finalize"
	default:
		return parts[2]
	}
}

// client is an HTTP client with its own connections and its own turn
// counter.
func (b *balancer) client() *http.Client {
	rt := &balancedTransport{b: b}
	for _, addr := range b.addrs {
		rt.backends = append(rt.backends, &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: b.roots, MinVersion: tls.VersionTLS12},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			},
			TLSHandshakeTimeout:   5 * time.Second,
			ResponseHeaderTimeout: 20 * time.Second,
		})
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: rt}
}

type balancedTransport struct {
	b        *balancer
	next     atomic.Uint64
	backends []*http.Transport
}

func (t *balancedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var lastErr error
	for attempt := range balancerAttempts {
		i := int(t.next.Add(1)-1) % len(t.backends)
		r := req
		if attempt > 0 {
			if req.Body != nil && req.GetBody == nil {
				return nil, lastErr
			}
			r = req.Clone(req.Context())
			if req.GetBody != nil {
				body, err := req.GetBody()
				if err != nil {
					return nil, err
				}
				r.Body = body
			}
			t.b.mu.Lock()
			t.b.retried++
			t.b.mu.Unlock()
		}
		resp, err := t.backends[i].RoundTrip(r)
		if err == nil {
			t.b.record(req, resp)
			return resp, nil
		}
		if req.Context().Err() != nil {
			return nil, err
		}
		t.b.mu.Lock()
		t.b.connErrs[fmt.Sprintf("replica %d: %s", i, connErrClass(err))]++
		t.b.mu.Unlock()
		lastErr = err
	}
	return nil, lastErr
}

// connErrClass names a transport error briefly.
func connErrClass(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed (EOF)"
	}
	s := err.Error()
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

// record counts an answer; a 5xx other than a 503 problem document with a
// positive Retry-After is a fault. Error bodies are read and put back.
func (b *balancer) record(req *http.Request, resp *http.Response) {
	k := answerKey{phase: int(b.phase.Load()), request: req.Method + " " + acmeResource(req.URL.Path), status: resp.StatusCode}
	ct := resp.Header.Get("Content-Type")
	var body []byte
	if resp.StatusCode >= 400 && req.Method != http.MethodHead {
		body, _ = io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		_ = resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(body))
	}
	var p rawProblem
	if len(body) > 0 && strings.HasPrefix(ct, "application/problem+json") && json.Unmarshal(body, &p) == nil {
		k.problem = strings.TrimPrefix(p.Type, rawProblemPrefix)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.statuses[k]++
	if d := k.request + " " + k.problem; k.problem != "" && b.details[d] == "" {
		b.details[d] = p.Detail
	}
	if resp.StatusCode < 500 {
		return
	}
	ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if resp.StatusCode == http.StatusServiceUnavailable && err == nil && ra > 0 && strings.HasPrefix(ct, "application/problem+json") {
		return
	}
	b.faults = append(b.faults, fmt.Sprintf("%s %s: %d Retry-After %q %s %s", req.Method, req.URL.Path, resp.StatusCode,
		resp.Header.Get("Retry-After"), ct, bytes.TrimSpace(body)))
}

// report summarises what the balancer saw, by phase.
func (b *balancer) report(phases ...string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var sb strings.Builder
	keys := slices.SortedFunc(maps.Keys(b.statuses), func(x, y answerKey) int {
		if c := strings.Compare(x.request, y.request); c != 0 {
			return c
		}
		if x.status != y.status {
			return x.status - y.status
		}
		return strings.Compare(x.problem, y.problem)
	})
	for p, name := range phases {
		fmt.Fprintf(&sb, "answers %s:\n", name)
		var line []string
		last := ""
		for _, k := range keys {
			if k.phase != p {
				continue
			}
			if k.request != last && len(line) > 0 {
				fmt.Fprintf(&sb, "  %s\n", strings.Join(line, " "))
				line = nil
			}
			if k.request != last {
				line = append(line, fmt.Sprintf("%-22s", k.request))
				last = k.request
			}
			answer := strconv.Itoa(k.status)
			if k.problem != "" {
				answer += " " + k.problem
			}
			line = append(line, fmt.Sprintf("%s×%d", answer, b.statuses[k]))
		}
		if len(line) > 0 {
			fmt.Fprintf(&sb, "  %s\n", strings.Join(line, " "))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(b.details)) {
		fmt.Fprintf(&sb, "first detail, %s: %s\n", k, b.details[k])
	}
	fmt.Fprintf(&sb, "requests sent again to another replica: %d\n", b.retried)
	for _, k := range slices.Sorted(maps.Keys(b.connErrs)) {
		fmt.Fprintf(&sb, "transport errors, %s: %d\n", k, b.connErrs[k])
	}
	return sb.String()
}

// count is the number of answers with status in phase.
func (b *balancer) count(phase, status int) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for k, v := range b.statuses {
		if k.phase == phase && k.status == status {
			n += v
		}
	}
	return n
}

func (b *balancer) faultList() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.faults)
}

// legoVia is a lego client with a fresh account key for dirURL whose
// requests go through hc.
func legoVia(t *testing.T, dirURL string, hc *http.Client) (*lego.Client, *legoUser) {
	t.Helper()
	u := &legoUser{key: newKey(t)}
	cfg := lego.NewConfig(u)
	cfg.CADirURL = dirURL
	cfg.HTTPClient = hc
	cfg.Certificate.KeyType = certcrypto.EC256
	cfg.Certificate.OverallRequestLimit = 1000
	cl, err := lego.NewClient(cfg)
	if err != nil {
		t.Fatalf("lego client: %v", err)
	}
	return cl, u
}

// leafOf parses the first certificate of a PEM chain; unlike parseChain it
// returns errors, for goroutines.
func leafOf(chain []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(chain)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("no certificate in %q", chain)
	}
	return x509.ParseCertificate(blk.Bytes)
}

var statusPrefix = regexp.MustCompile(`\b([1-5][0-9][0-9]) ::\s*([A-Z]+)`)

// errClass names a lego error briefly: a problem's status and type, a
// non-problem answer's status and method, or the transport error.
func errClass(err error) string {
	var pd *acme.ProblemDetails
	if errors.As(err, &pd) {
		return fmt.Sprintf("%d %s", pd.HTTPStatus, strings.TrimPrefix(pd.Type, rawProblemPrefix))
	}
	if m := statusPrefix.FindStringSubmatch(err.Error()); m != nil {
		return fmt.Sprintf("%s on %s without a problem body", m[1], m[2])
	}
	return connErrClass(err)
}

// issueJob is one certificate a client should obtain.
type issueJob struct {
	key *ecdsa.PrivateKey
	csr *x509.CertificateRequest
}

func issueJobs(t *testing.T, name string, n int) []issueJob {
	t.Helper()
	jobs := make([]issueJob, n)
	for i := range jobs {
		key := newKey(t)
		jobs[i] = issueJob{key: key, csr: csrFor(t, key, "", []string{name}, nil)}
	}
	return jobs
}

// loadClient is one worker issuing through the balancer; its fields are
// written by its goroutine and read after it ended.
type loadClient struct {
	worker string
	cl     *lego.Client
	u      *legoUser
	leaves []*x509.Certificate
	errs   map[string]int
	failed string // why it gave up
}

func (lc *loadClient) register(tok provisioner.Token) error {
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var reg *registration.Resource
		reg, err = lc.cl.Registration.RegisterWithExternalAccountBinding(registration.RegisterEABOptions{
			TermsOfServiceAgreed: true, Kid: tok.KID, HmacEncoded: tok.HMACKeyString(),
		})
		if err == nil {
			lc.u.reg = reg
			return nil
		}
		lc.errs["register: "+errClass(err)]++
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// TestFailoverReplicaKilled runs two `crank-ca serve` processes on one
// PostgreSQL database behind a balancer. Eight lego clients bind accounts
// with join tokens and each obtain a fixed number of certificates; while
// they do, replica B is SIGKILLed. The balancer sends what B cannot answer
// to A (as a load balancer would), and every client finishes. Afterwards the
// surviving replica knows every certificate a client received (ARI
// renewalInfo), and every join token bound exactly one account.
func TestFailoverReplicaKilled(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the binaries and starts PostgreSQL")
	}
	begin := time.Now()
	dsn := startPostgres(t, "crank_ca_failover") // skips without PostgreSQL
	bin := binary(t, "crank-ca")
	addrs := []string{"127.0.0.1:" + strconv.Itoa(freePort(t)), "127.0.0.1:" + strconv.Itoa(freePort(t))}
	c := newCA(t, func(cfg *config.Config) {
		usePostgres(cfg, dsn)
		cfg.Listen = addrs[0]
		raiseLimits(cfg)
	})
	procs := make([]*cliServe, len(addrs))
	for i, addr := range addrs {
		cfg := *c.cfg
		cfg.Listen = addr
		p := filepath.Join(c.dir, fmt.Sprintf("replica-%c.json", 'a'+i))
		if err := cfg.Write(p); err != nil {
			t.Fatal(err)
		}
		procs[i] = startCLIServe(t, bin, p, c.dir, addr) // one after the other: A sets up the schema
	}
	c.url = procs[0].url // the survivor: the checks below ask it
	t.Logf("two replicas serving after %s", time.Since(begin).Round(time.Millisecond))

	lb := newBalancer(c.roots, addrs...)
	const clients, perClient = 8, 25
	load := make([]*loadClient, clients)
	jobs := make([][]issueJob, clients)
	for i := range load {
		worker := fmt.Sprintf("failover%d", i)
		cl, u := legoVia(t, c.directory("workers"), lb.client())
		load[i] = &loadClient{worker: worker, cl: cl, u: u, errs: map[string]int{}}
		jobs[i] = issueJobs(t, worker+".workers.crank.internal", perClient)
	}
	toks := make([]provisioner.Token, clients)
	for i, lc := range load {
		toks[i] = c.token(lc.worker)
	}

	var issued atomic.Int32
	loadStart := time.Now()
	var wg sync.WaitGroup
	for i, lc := range load {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := lc.register(toks[i]); err != nil {
				lc.failed = "register: " + errClass(err)
				return
			}
			for k, job := range jobs[i] {
				var err error
				for attempt := 1; attempt <= 5; attempt++ {
					var res *certificate.Resource
					res, err = lc.cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: job.csr, PrivateKey: job.key, Bundle: true})
					if err == nil {
						var leaf *x509.Certificate
						if leaf, err = leafOf(res.Certificate); err == nil {
							lc.leaves = append(lc.leaves, leaf)
							issued.Add(1)
							break
						}
					}
					lc.errs[errClass(err)]++
					time.Sleep(100 * time.Millisecond)
				}
				if err != nil {
					lc.failed = fmt.Sprintf("certificate %d: %v", k, err)
					return
				}
			}
		}()
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()

	// Kill B under load: after 2 s, or earlier once 60% of the
	// certificates are out, so that the kill always meets traffic.
	const total = clients * perClient
	killAfter := 2 * time.Second
	for time.Since(loadStart) < killAfter && issued.Load() < total*6/10 {
		select {
		case <-allDone:
			t.Fatalf("the load ended before the kill; raise perClient")
		case <-time.After(10 * time.Millisecond):
		}
	}
	atKill, killedAt := issued.Load(), time.Since(loadStart)
	if err := procs[1].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL replica B: %v", err)
	}
	lb.phase.Store(1)
	select {
	case <-procs[1].exited:
	case <-time.After(10 * time.Second):
		t.Fatal("replica B did not die of SIGKILL")
	}
	select {
	case <-allDone:
	case <-time.After(60 * time.Second):
		t.Fatalf("the clients did not finish within 60 s of the kill\n%s", lb.report("before the kill", "after the kill"))
	}
	loadTime := time.Since(loadStart)

	var received []*x509.Certificate
	errCounts := map[string]int{}
	for _, lc := range load {
		received = append(received, lc.leaves...)
		for k, n := range lc.errs {
			errCounts[k] += n
		}
		if lc.failed != "" || len(lc.leaves) != perClient {
			t.Errorf("client %s got %d of %d certificates: %s", lc.worker, len(lc.leaves), perClient, lc.failed)
		}
	}
	var sb strings.Builder
	for _, k := range slices.Sorted(maps.Keys(errCounts)) {
		fmt.Fprintf(&sb, "client errors (retried), %s: %d\n", k, errCounts[k])
	}
	t.Logf("%d certificates in %s; replica B killed after %s with %d out\n%s%s", len(received), loadTime.Round(time.Millisecond),
		killedAt.Round(time.Millisecond), atKill, lb.report("before the kill", "after the kill"), sb.String())
	if faults := lb.faultList(); len(faults) > 0 {
		t.Errorf("%d answers were 5xx other than a 503 with Retry-After:\n%s", len(faults), strings.Join(faults, "\n"))
	}
	if lb.count(0, http.StatusOK)+lb.count(0, http.StatusCreated) == 0 || lb.count(1, http.StatusOK) == 0 {
		t.Errorf("the load did not span the kill:\n%s", lb.report("before the kill", "after the kill"))
	}

	// The survivor knows every certificate a client holds.
	unknown := 0
	for _, leaf := range received {
		certID, err := certificate.MakeARICertID(leaf)
		if err != nil {
			t.Fatal(err)
		}
		if status, _, body := c.getARI(t, "workers", certID); status != http.StatusOK {
			unknown++
			t.Errorf("replica A: renewalInfo of serial %s: %d %s", leaf.SerialNumber, status, body)
		}
	}
	// Every join token bound one account; certificates the clients never
	// received (answers lost with B) are reported, not failed.
	var workers []admin.Worker
	if st := c.admin(t, http.MethodGet, "/workers", nil, &workers); st != http.StatusOK {
		t.Fatalf("admin workers: %d", st)
	}
	accounts := map[string]int{}
	for _, w := range workers {
		accounts[w.Name] = w.Accounts
	}
	recorded := 0
	for _, lc := range load {
		if accounts[lc.worker] != 1 {
			t.Errorf("worker %s has %d bound accounts, want 1 (one join token)", lc.worker, accounts[lc.worker])
		}
		recorded += len(c.workerCerts(t, lc.worker))
	}
	t.Logf("replica A knows %d of %d received certificates; it recorded %d certificates in all (%d never reached a client); test took %s",
		len(received)-unknown, len(received), recorded, recorded-len(received), time.Since(begin).Round(time.Millisecond))
	if recorded < len(received) {
		t.Errorf("replica A recorded %d certificates, fewer than the %d the clients hold", recorded, len(received))
	}
}

// hostPort is the host:port of a URL.
func hostPort(t *testing.T, u string) string {
	t.Helper()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	return pu.Host
}

// TestFailoverPostgreSQLRestart stops PostgreSQL for about 3 s under two
// in-process replicas while four lego clients issue through the balancer,
// then starts it again on the same port. During the outage every ACME
// answer that needs the store is a 503 problem with Retry-After, never a
// 500; the clients retry (lego does not retry a 503 itself) and, once
// PostgreSQL is back, succeed again without the CA restarting.
func TestFailoverPostgreSQLRestart(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	begin := time.Now()
	pg := newPGCluster(t)
	a := newCA(t, func(cfg *config.Config) {
		usePostgres(cfg, pg.dsn("crank_ca_pg_restart"))
		raiseLimits(cfg)
	})
	a.start()
	b := a.startReplica(t, "b")
	lb := newBalancer(a.roots, hostPort(t, a.url), hostPort(t, b.url))

	const (
		clients  = 4
		outage   = 3 * time.Second
		retryGap = 250 * time.Millisecond // instead of the 5 s Retry-After, to keep the test short
	)
	load := make([]*loadClient, clients)
	jobs := make([][]issueJob, clients)
	for i := range load {
		worker := fmt.Sprintf("pgrestart%d", i)
		cl, u := legoVia(t, a.directory("workers"), lb.client())
		load[i] = &loadClient{worker: worker, cl: cl, u: u, errs: map[string]int{}}
		if err := load[i].register(a.token(worker)); err != nil {
			t.Fatalf("register %s: %v\n%s", worker, err, rawTail(a.logs.String(), 20))
		}
		jobs[i] = issueJobs(t, worker+".workers.crank.internal", 4)
	}

	// phase: 0 before the outage, 1 during, 2 after the restart. A client
	// counts an issuance in the phase it started in.
	var restartedAt atomic.Int64
	type progress struct {
		ok         [3]int
		firstAfter time.Duration // from the restart to the end of the first issuance started after it
	}
	prog := make([]progress, clients)
	var mu sync.Mutex // guards prog
	deadline := time.Now().Add(50 * time.Second)
	var wg sync.WaitGroup
	for i, lc := range load {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for attempt := 0; attempt < 400 && time.Now().Before(deadline); attempt++ {
				mu.Lock()
				done := prog[i].ok[2] >= 2
				mu.Unlock()
				if done {
					return
				}
				phase := int(lb.phase.Load())
				job := jobs[i][attempt%len(jobs[i])]
				_, err := lc.cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: job.csr, PrivateKey: job.key, Bundle: true})
				if err == nil {
					mu.Lock()
					prog[i].ok[phase]++
					if phase == 2 && prog[i].firstAfter == 0 {
						prog[i].firstAfter = time.Since(time.Unix(0, restartedAt.Load()))
					}
					mu.Unlock()
					continue
				}
				lc.errs[fmt.Sprintf("phase %d: %s", phase, errClass(err))]++
				time.Sleep(retryGap)
			}
			lc.failed = "gave up"
		}()
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()

	// Let every client issue once, then stop PostgreSQL.
	for waited := 0; ; waited++ {
		mu.Lock()
		ready := true
		for _, p := range prog {
			ready = ready && p.ok[0] > 0
		}
		mu.Unlock()
		if ready {
			break
		}
		if waited == 1500 {
			t.Fatalf("the clients did not issue before the outage\n%s", rawTail(a.logs.String(), 30))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Phase 1 spans the outage, from the stop to the start command;
	// phase 2 begins as PostgreSQL starts again.
	port := pg.port
	lb.phase.Store(1)
	stopAt := time.Now()
	pg.stop()
	stopped := time.Since(stopAt)
	time.Sleep(outage)
	restartedAt.Store(time.Now().UnixNano())
	lb.phase.Store(2)
	pg.start()
	if pg.port != port {
		t.Errorf("PostgreSQL came back on port %d, not %d", pg.port, port)
	}
	t.Logf("PostgreSQL stopped in %s, down for %s, accepting connections again on port %d after %s",
		stopped.Round(time.Millisecond), outage, pg.port, time.Since(time.Unix(0, restartedAt.Load())).Round(time.Millisecond))

	select {
	case <-allDone:
	case <-time.After(time.Until(deadline) + 30*time.Second):
		t.Fatalf("the clients did not finish\n%s", lb.report("before", "during the outage", "after the restart"))
	}

	errCounts := map[string]int{}
	var sb strings.Builder
	for i, lc := range load {
		for k, n := range lc.errs {
			errCounts[k] += n
		}
		p := prog[i]
		fmt.Fprintf(&sb, "client %s: issued %d before, %d started during the outage, %d after the restart; first after the restart %s\n",
			lc.worker, p.ok[0], p.ok[1], p.ok[2], p.firstAfter.Round(time.Millisecond))
		if p.ok[2] == 0 {
			t.Errorf("client %s never issued after PostgreSQL came back (%s)", lc.worker, lc.failed)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(errCounts)) {
		fmt.Fprintf(&sb, "client errors (retried), %s: %d\n", k, errCounts[k])
	}
	t.Logf("test took %s\n%s%s", time.Since(begin).Round(time.Millisecond), lb.report("before", "during the outage", "after the restart"), sb.String())
	if faults := lb.faultList(); len(faults) > 0 {
		t.Errorf("%d answers were 5xx other than a 503 with Retry-After:\n%s\nserver errors:\n%s", len(faults), strings.Join(faults, "\n"), rawTail(rawFailedLines(a.logs.String()), 20))
	}
	if lb.count(1, http.StatusServiceUnavailable) == 0 {
		t.Errorf("no 503 during the outage: the clients did not meet it")
	}
	if logs := a.logs.String(); strings.Contains(logs, "panic") {
		t.Errorf("a replica panicked:\n%s", rawTail(logs, 40))
	}
}
