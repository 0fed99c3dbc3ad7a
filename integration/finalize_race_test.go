package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/server"
)

// This file races requests that change one ACME resource at the same time,
// at one replica and at two replicas sharing a PostgreSQL database: two
// finalizes of one order, and many orders of one account. Every loser must
// get an RFC 8555 problem (a 4xx), never a 500, and every order at most one
// certificate.

// raiseLimits lifts the per-client limits of every provisioner far above
// what the tests send, so that a refusal is a bug, not a limit.
func raiseLimits(cfg *config.Config) {
	for i := range cfg.Provisioners {
		cfg.Provisioners[i].Limits = &config.Limits{
			MaxIdentifiersPerOrder: 100, MaxPendingOrdersPerAccount: 1000,
			NewAccountsPerMinute: 1000, NewOrdersPerMinute: 10000,
		}
	}
}

// usePostgres points cfg at a PostgreSQL database, with the defaults of
// that storage type.
func usePostgres(cfg *config.Config, dsn string) {
	cfg.Storage = config.Storage{Type: config.StoragePostgreSQL, DSN: dsn}
	cfg.ApplyDefaults()
}

// raceCA starts a CA on storage (bbolt, or a PostgreSQL database of its own
// unless CRANK_TEST_POSTGRES_DSN names a shared one) with raised limits.
func raceCA(t *testing.T, storage, dbname string) *ca {
	t.Helper()
	var dsn string
	if storage == config.StoragePostgreSQL {
		if testing.Short() {
			t.Skip("starts PostgreSQL")
		}
		dsn = startPostgres(t, dbname)
	}
	c := newCA(t, func(cfg *config.Config) {
		if dsn != "" {
			usePostgres(cfg, dsn)
		}
		raiseLimits(cfg)
	})
	c.start()
	return c
}

// startReplica serves another crank-ca on c's configuration, and so on its
// PostgreSQL database, at a fresh loopback port, as a second replica behind
// a load balancer. It shares c's directory, clock and log buffer (its lines
// carry replica=name) and is stopped at cleanup.
func (c *ca) startReplica(t *testing.T, name string) *ca {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("replica", name)
	srv, err := server.New(t.Context(), server.Deps{Config: c.cfg, Logger: logger, Audit: logger.With("log", "audit"), Now: c.clock.Now})
	if err != nil {
		t.Fatalf("replica %s: %v", name, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = srv.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("replica %s: %v", name, err)
		}
	})
	return &ca{t: t, dir: c.dir, cfg: c.cfg, clock: c.clock, logs: c.logs, roots: c.roots, url: "https://" + ln.Addr().String(), srv: srv, clients: c.clients}
}

// rebase moves an absolute URL onto another replica's base URL: smallstep
// writes the host of the request into every URL it returns, and checks the
// JWS url against the host of the request.
func rebase(u, base string) string {
	pu, err := url.Parse(u)
	if err != nil {
		return u
	}
	pb, err := url.Parse(base)
	if err != nil {
		return u
	}
	pu.Scheme, pu.Host = pb.Scheme, pb.Host
	return pu.String()
}

// urlPath is the path of an absolute URL, for comparing URLs that two
// replicas wrote with their own hosts.
func urlPath(u string) string {
	pu, err := url.Parse(u)
	if err != nil {
		return u
	}
	return pu.Path
}

// signJWS is rawSign for goroutines: a flattened ES256 JWS, with errors
// returned rather than failing the test.
func signJWS(key *ecdsa.PrivateKey, protected map[string]any, payload []byte) ([]byte, error) {
	ph, err := json.Marshal(protected)
	if err != nil {
		return nil, err
	}
	f := rawFlat{Protected: rawB64(ph), Payload: rawB64(payload)}
	h := sha256.Sum256([]byte(f.Protected + "." + f.Payload))
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		return nil, err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	f.Signature = rawB64(sig)
	return json.Marshal(f)
}

// poster sends signed ACME requests to one replica over its own
// connections. Unlike rawClient it reports failures as errors, so
// goroutines may use it (t.Fatal belongs to the test's goroutine).
type poster struct {
	base string
	hc   *http.Client
}

func newPoster(c *ca) *poster { return &poster{base: c.url, hc: c.httpClient()} }

// do sends one request and reads the whole answer.
func (p *poster) do(ctx context.Context, method, u string, body []byte) (rawResp, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return rawResp{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/jose+json")
	}
	resp, err := p.hc.Do(req)
	if err != nil {
		return rawResp{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return rawResp{}, fmt.Errorf("%s %s: read body: %w", method, u, err)
	}
	return rawResp{status: resp.StatusCode, ct: resp.Header.Get("Content-Type"), header: resp.Header, body: b}, nil
}

// nonce fetches a fresh nonce of this replica.
func (p *poster) nonce(ctx context.Context, prov string) (string, error) {
	r, err := p.do(ctx, http.MethodHead, p.base+"/acme/"+prov+"/new-nonce", nil)
	if err != nil {
		return "", err
	}
	n := r.header.Get("Replay-Nonce")
	if r.status != http.StatusOK || n == "" {
		return "", fmt.Errorf("new-nonce: %s (nonce %q)", r, n)
	}
	return n, nil
}

// signed is a request body for u (moved onto this replica) signed by acc
// with a fresh nonce of this replica; the kid stays the account URL as
// first seen, which smallstep stores and compares.
func (p *poster) signed(ctx context.Context, acc *rawAccount, u string, payload []byte) (string, []byte, error) {
	u = rebase(u, p.base)
	n, err := p.nonce(ctx, acc.prov)
	if err != nil {
		return "", nil, err
	}
	body, err := signJWS(acc.key, map[string]any{"alg": "ES256", "nonce": n, "url": u, "kid": acc.url}, payload)
	return u, body, err
}

// post signs and sends payload to u at this replica.
func (p *poster) post(ctx context.Context, acc *rawAccount, u string, payload []byte) (rawResp, error) {
	u, body, err := p.signed(ctx, acc, u, payload)
	if err != nil {
		return rawResp{}, err
	}
	return p.do(ctx, http.MethodPost, u, body)
}

// sendTogether posts bodies[i] to urls[i] through posters[i], all released
// at one moment (each on a connection its poster already holds), and
// returns every answer.
func sendTogether(ctx context.Context, posters []*poster, urls []string, bodies [][]byte) ([]rawResp, []error) {
	n := len(posters)
	resps, errs := make([]rawResp, n), make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resps[i], errs[i] = posters[i].do(ctx, http.MethodPost, urls[i], bodies[i])
		}()
	}
	close(start)
	wg.Wait()
	return resps, errs
}

// acmeOrder is the part of an order object these tests read.
type acmeOrder struct {
	Status      string `json:"status"`
	Finalize    string `json:"finalize"`
	Certificate string `json:"certificate"`
}

// problemOf decodes an ACME problem answer; ok is false when r is not one.
func problemOf(r rawResp) (rawProblem, bool) {
	var p rawProblem
	if !strings.HasPrefix(r.ct, "application/problem+json") || json.Unmarshal(r.body, &p) != nil ||
		!strings.HasPrefix(p.Type, rawProblemPrefix) {
		return p, false
	}
	p.Type = strings.TrimPrefix(p.Type, rawProblemPrefix)
	return p, true
}

// issuedFor counts the audit records of issuances for an order.
func issuedFor(logs, orderID string) int {
	n := 0
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "certificate issued") && strings.Contains(l, " order="+orderID) {
			n++
		}
	}
	return n
}

// workerCerts lists every certificate (live or not) the CA recorded for a
// worker, through the admin API.
func (c *ca) workerCerts(t *testing.T, worker string) []admin.Certificate {
	t.Helper()
	var certs []admin.Certificate
	if st := c.admin(t, http.MethodGet, "/certificates?all=true&worker="+worker, nil, &certs); st != http.StatusOK {
		t.Fatalf("admin certificates of %s: %d", worker, st)
	}
	return certs
}

// TestFinalizeRace sends the same finalize of one ready order (two
// separately signed requests with fresh nonces, one CSR) at the same moment,
// to two replicas on one PostgreSQL database or twice to one replica (also
// on bbolt), for several orders. Exactly one answer is a 200 with the valid
// order; the other is a 4xx problem (RFC 8555 section 7.4: finalizing an
// order that is not "ready" is a 403 orderNotReady), never a 500; the order
// has one certificate, the same at every replica, and it downloads. A later
// finalize of the valid order is refused the same way.
func TestFinalizeRace(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		storage  string
		replicas int
		worker   string
	}{
		{name: "postgresql two replicas", storage: config.StoragePostgreSQL, replicas: 2, worker: "finrace2"},
		{name: "postgresql one replica", storage: config.StoragePostgreSQL, replicas: 1, worker: "finrace1"},
		{name: "bbolt one replica", storage: config.StorageBolt, replicas: 1, worker: "finraceb"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			begin := time.Now()
			a := raceCA(t, tc.storage, "crank_ca_finalize_race")
			replicas := []*ca{a, a}
			if tc.replicas == 2 {
				replicas[1] = a.startReplica(t, "b")
			}
			rc := newRawClient(t, a)
			acc := rc.rawRegisterWorker(tc.worker)
			name := tc.worker + ".workers.crank.internal"
			// One poster (and so one connection) per side, also when both
			// sides are one replica, so neither waits for a handshake.
			posters := []*poster{newPoster(replicas[0]), newPoster(replicas[1])}
			// The replicas the order is read back from.
			readers := map[string]*poster{}
			for _, r := range replicas {
				readers[r.url] = newPoster(r)
			}

			const rounds = 10
			type outcome struct {
				statuses [2]int
				loser    string // the non-200 answer's status and problem type
				issued   int    // audit records of issuances for the order
				again    string // a later, sequential finalize
			}
			var outcomes []outcome
			for round := range rounds {
				logStart := len(a.logs.String())
				o := rc.rawNewOrder(acc, name)
				if o.Status != "ready" {
					t.Fatalf("round %d: worker order %+v, want ready", round, o)
				}
				orderID := path.Base(o.url)
				key := newKey(t)
				csr := rawMarshal(t, map[string]string{"csr": rawB64(csrFor(t, key, "", []string{name}, nil).Raw)})
				urls, bodies := make([]string, 2), make([][]byte, 2)
				for i, p := range posters {
					u, body, err := p.signed(t.Context(), acc, o.Finalize, csr)
					if err != nil {
						t.Fatalf("round %d: %v", round, err)
					}
					urls[i], bodies[i] = u, body
				}
				resps, errs := sendTogether(t.Context(), posters, urls, bodies)
				var out outcome
				var winners []int
				for i, r := range resps {
					if errs[i] != nil {
						t.Fatalf("round %d: finalize %d: %v", round, i, errs[i])
					}
					out.statuses[i] = r.status
					switch {
					case r.status == http.StatusOK:
						winners = append(winners, i)
					case r.status >= 500:
						t.Errorf("round %d: finalize at %s answered %s\nserver errors:\n%s", round, urls[i], r, rawFailedLines(a.logs.String()[logStart:]))
						out.loser = fmt.Sprintf("%d", r.status)
					default:
						p, ok := problemOf(r)
						if !ok || r.status < 400 {
							t.Errorf("round %d: finalize at %s answered %s, want a 4xx problem", round, urls[i], r)
						}
						// Any 4xx problem will do; RFC 8555 names 403
						// orderNotReady (smallstep sends orderNotReady
						// with 400), the summary shows what came.
						out.loser = fmt.Sprintf("%d %s", r.status, p.Type)
					}
				}
				var certPath string
				for _, i := range winners {
					var fo acmeOrder
					if err := json.Unmarshal(resps[i].body, &fo); err != nil || fo.Status != "valid" || fo.Certificate == "" {
						t.Errorf("round %d: 200 finalize body %s (%v), want a valid order with a certificate", round, resps[i].body, err)
						continue
					}
					switch p := urlPath(fo.Certificate); {
					case certPath == "":
						certPath = p
					case p != certPath:
						t.Errorf("round %d: both finalizes answered 200 with two certificates: %s and %s", round, certPath, p)
					default:
						// The later request met the order valid; RFC 8555
						// section 7.4 refuses it (403 orderNotReady).
						t.Errorf("round %d: both finalizes answered 200 with the one certificate %s, want the later one refused with orderNotReady", round, p)
					}
				}
				if len(winners) == 0 {
					t.Errorf("round %d: no finalize answered 200 (%v)", round, out.statuses)
				}

				// Every replica reads back the valid order with that one
				// certificate, which downloads and holds the CSR's key.
				for base, p := range readers {
					r, err := p.post(t.Context(), acc, o.url, nil)
					if err != nil {
						t.Fatalf("round %d: order at %s: %v", round, base, err)
					}
					var fo acmeOrder
					if r.status != http.StatusOK || json.Unmarshal(r.body, &fo) != nil || fo.Status != "valid" || fo.Certificate == "" {
						t.Errorf("round %d: order at %s: %s, want valid with a certificate", round, base, r)
						continue
					}
					if certPath == "" {
						certPath = urlPath(fo.Certificate)
					} else if urlPath(fo.Certificate) != certPath {
						t.Errorf("round %d: order at %s names certificate %s, the finalize answer %s", round, base, urlPath(fo.Certificate), certPath)
					}
					cr, err := p.post(t.Context(), acc, fo.Certificate, nil)
					if err != nil {
						t.Fatalf("round %d: certificate at %s: %v", round, base, err)
					}
					if cr.status != http.StatusOK {
						t.Errorf("round %d: certificate download at %s: %s", round, base, cr)
						continue
					}
					if leaf := parseChain(t, cr.body)[0]; !key.PublicKey.Equal(leaf.PublicKey) {
						t.Errorf("round %d: the certificate at %s does not hold the CSR's key", round, base)
					}
				}
				if out.issued = issuedFor(a.logs.String(), orderID); out.issued != 1 {
					t.Errorf("round %d: %d certificates issued for order %s, want 1", round, out.issued, orderID)
				}

				// A finalize after the fact meets a valid order: RFC 8555
				// section 7.4 wants 403 orderNotReady here too.
				r, err := posters[0].post(t.Context(), acc, o.Finalize, csr)
				if err != nil {
					t.Fatalf("round %d: finalize again: %v", round, err)
				}
				p, _ := problemOf(r)
				out.again = strings.TrimSpace(fmt.Sprintf("%d %s", r.status, p.Type))
				if r.status < 400 || r.status > 499 || p.Type != "orderNotReady" {
					var fo acmeOrder
					_ = json.Unmarshal(r.body, &fo)
					t.Errorf("round %d: a later finalize of the valid order answered %d %s (order status %q), want 403 orderNotReady", round, r.status, r.ct, fo.Status)
				}
				outcomes = append(outcomes, out)
			}

			// The CA's record agrees: one certificate per order.
			if certs := a.workerCerts(t, tc.worker); len(certs) != rounds {
				t.Errorf("the CA recorded %d certificates for %d orders of %s", len(certs), rounds, tc.worker)
			}
			var sb strings.Builder
			for i, o := range outcomes {
				fmt.Fprintf(&sb, "round %2d: statuses %v, loser %-19q certificates issued %d, finalize again: %s\n", i, o.statuses, o.loser, o.issued, o.again)
			}
			t.Logf("%s in %s:\n%s", tc.name, time.Since(begin).Round(time.Millisecond), sb.String())
		})
	}
}

// tally counts answers by step and status; it is safe for concurrent use.
type tally struct {
	mu     sync.Mutex
	counts map[string]map[int]int
	faults []string
}

func (ta *tally) add(step string, r rawResp) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	if ta.counts == nil {
		ta.counts = map[string]map[int]int{}
	}
	if ta.counts[step] == nil {
		ta.counts[step] = map[int]int{}
	}
	ta.counts[step][r.status]++
	if r.status >= 500 {
		ta.faults = append(ta.faults, fmt.Sprintf("%s: %s", step, r))
	}
}

func (ta *tally) fail(format string, args ...any) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	ta.faults = append(ta.faults, fmt.Sprintf(format, args...))
}

func (ta *tally) String() string {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	var sb strings.Builder
	for _, step := range slices.Sorted(maps.Keys(ta.counts)) {
		fmt.Fprintf(&sb, "%-12s", step)
		for _, st := range slices.Sorted(maps.Keys(ta.counts[step])) {
			fmt.Fprintf(&sb, " %d×%d", st, ta.counts[step][st])
		}
		sb.WriteString("\n")
	}
	return sb.String()
}

// issueAt orders name for acc at p1, finalizes at p2 with csr, and downloads
// the certificate at p1, counting every answer. A 429 is retried (bounded)
// after its Retry-After, capped at a second.
func issueAt(ctx context.Context, ta *tally, acc *rawAccount, name string, csr []byte, p1, p2 *poster) error {
	payload, err := json.Marshal(map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": name}}})
	if err != nil {
		return err
	}
	var r rawResp
	for attempt := 1; ; attempt++ {
		if r, err = p1.post(ctx, acc, p1.base+"/acme/"+acc.prov+"/new-order", payload); err != nil {
			return fmt.Errorf("new-order: %w", err)
		}
		ta.add("new-order", r)
		if r.status != http.StatusTooManyRequests || attempt == 3 {
			break
		}
		time.Sleep(min(retryAfter(r), time.Second))
	}
	var o acmeOrder
	if r.status != http.StatusCreated || json.Unmarshal(r.body, &o) != nil || o.Status != "ready" {
		return fmt.Errorf("new-order at %s: %s", p1.base, r)
	}
	if r, err = p2.post(ctx, acc, o.Finalize, csr); err != nil {
		return fmt.Errorf("finalize: %w", err)
	}
	ta.add("finalize", r)
	if r.status != http.StatusOK || json.Unmarshal(r.body, &o) != nil || o.Status != "valid" || o.Certificate == "" {
		return fmt.Errorf("finalize at %s: %s", p2.base, r)
	}
	if r, err = p1.post(ctx, acc, o.Certificate, nil); err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	ta.add("certificate", r)
	if r.status != http.StatusOK {
		return fmt.Errorf("certificate at %s: %s", p1.base, r)
	}
	return nil
}

// retryAfter is an answer's Retry-After in seconds, or a second.
func retryAfter(r rawResp) time.Duration {
	var s int
	if _, err := fmt.Sscanf(r.header.Get("Retry-After"), "%d", &s); err != nil || s <= 0 {
		return time.Second
	}
	return time.Duration(s) * time.Second
}

// TestConcurrentOrdersOneAccount issues many certificates for one bound
// account at once: 8 goroutines with 5 orders each, alternating the replica
// of each step (new-order and download at one, finalize at the other). With
// the limits raised every issuance succeeds; nothing answers a 500.
func TestConcurrentOrdersOneAccount(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		storage  string
		replicas int
		worker   string
	}{
		{name: "postgresql two replicas", storage: config.StoragePostgreSQL, replicas: 2, worker: "burst2"},
		{name: "bbolt one replica", storage: config.StorageBolt, replicas: 1, worker: "burstb"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := raceCA(t, tc.storage, "crank_ca_concurrent_orders")
			replicas := []*ca{a}
			if tc.replicas == 2 {
				replicas = append(replicas, a.startReplica(t, "b"))
			}
			rc := newRawClient(t, a)
			acc := rc.rawRegisterWorker(tc.worker)
			name := tc.worker + ".workers.crank.internal"

			const goroutines, perGoroutine = 8, 5
			csrs := make([][][]byte, goroutines)
			for g := range csrs {
				for range perGoroutine {
					csrs[g] = append(csrs[g], rawMarshal(t, map[string]string{"csr": rawB64(csrFor(t, newKey(t), "", []string{name}, nil).Raw)}))
				}
			}
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			var ta tally
			begin := time.Now()
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					posters := make([]*poster, len(replicas))
					for i, r := range replicas {
						posters[i] = newPoster(r)
					}
					for j := range perGoroutine {
						p1, p2 := posters[(g+j)%len(posters)], posters[(g+j+1)%len(posters)]
						if err := issueAt(ctx, &ta, acc, name, csrs[g][j], p1, p2); err != nil {
							ta.fail("goroutine %d order %d: %v", g, j, err)
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(begin)

			issued := len(a.workerCerts(t, tc.worker))
			t.Logf("%s: %d issuances in %s; %d certificates recorded; answers by step:\n%s", tc.name, goroutines*perGoroutine, elapsed.Round(time.Millisecond), issued, &ta)
			if len(ta.faults) > 0 {
				t.Errorf("%d failures:\n%s\nserver errors:\n%s", len(ta.faults), strings.Join(ta.faults, "\n"), rawTail(rawFailedLines(a.logs.String()), 20))
			}
			if issued != goroutines*perGoroutine {
				t.Errorf("the CA recorded %d certificates, want %d", issued, goroutines*perGoroutine)
			}
		})
	}
}
