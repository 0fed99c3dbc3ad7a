package integration

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/go-acme/lego/v4/certificate"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/server"
)

// postgresBin finds a PostgreSQL server installation.
func postgresBin() string {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(real) // next to pg_isready and postgres
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) > 0 {
		return filepath.Dir(matches[len(matches)-1])
	}
	return ""
}

// startPostgres starts a throwaway PostgreSQL cluster on a loopback port and
// returns a DSN for a database in it. CRANK_TEST_POSTGRES_DSN points the
// tests at an existing server instead. Without either the test is skipped;
// .ci/run installs PostgreSQL so CI always runs it.
func startPostgres(t *testing.T, dbname string) string {
	t.Helper()
	if dsn := os.Getenv("CRANK_TEST_POSTGRES_DSN"); dsn != "" {
		return dsn
	}
	return newPGCluster(t).dsn(dbname)
}

// TestPostgreSQL runs the worker flow on a PostgreSQL store: issuance, a
// refused token reuse, and a restart after which the bound account orders
// again.
func TestPostgreSQL(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	dsn := startPostgres(t, "crank_ca_test")
	c := newCA(t, func(cfg *config.Config) {
		cfg.Storage = config.Storage{Type: config.StoragePostgreSQL, DSN: dsn}
	})
	c.start()
	tok := c.token("api")
	cl, u := c.newLego("workers", nil)
	if err := c.register(cl, u, tok); err != nil {
		t.Fatalf("register: %v\n%s", err, c.logs)
	}
	if _, err := obtain(t, c, cl.Certificate, "api.workers.crank.internal"); err != nil {
		t.Fatalf("obtain: %v\n%s", err, c.logs)
	}
	cl2, u2 := c.newLego("workers", nil)
	wantProblem(t, c.register(cl2, u2, tok), "unauthorized", 401)

	c.stop()
	c.start()
	if _, err := obtain(t, c, cl.Certificate, "api.workers.crank.internal"); err != nil {
		t.Fatalf("obtain after restart: %v\n%s", err, c.logs)
	}
	if st, err := c.srv.Sweep(t.Context()); err != nil || st.Certificates != 0 {
		t.Errorf("sweep on PostgreSQL: %+v %v", st, err)
	}
}

// TestPostgreSQLReplicas runs two serve replicas on one PostgreSQL database:
// one join token raced through both replicas binds exactly one account, and
// what one replica issued, the other knows (ARI, orders of the bound
// account).
func TestPostgreSQLReplicas(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	dsn := startPostgres(t, "crank_ca_replicas")
	a := newCA(t, func(cfg *config.Config) {
		cfg.Storage = config.Storage{Type: config.StoragePostgreSQL, DSN: dsn}
	})
	a.start()
	srv, err := server.New(t.Context(), server.Deps{Config: a.cfg, Logger: slog.New(slog.NewTextHandler(a.logs, nil))})
	if err != nil {
		t.Fatalf("second replica: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("second replica: %v", err)
		}
	})
	b := *a
	b.url = "https://" + ln.Addr().String()
	replicas := []*ca{a, &b}

	tok := a.token("api")
	const n = 8
	var (
		mu     sync.Mutex
		wins   []*legoClientUser
		wg     sync.WaitGroup
		others int
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := replicas[i%2]
			cl, u := r.newLego("workers", nil)
			err := r.register(cl, u, tok)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				wins = append(wins, &legoClientUser{cl: cl, u: u})
				return
			}
			if pd := problem(t, err); pd.HTTPStatus != http.StatusUnauthorized {
				others++
			}
		}()
	}
	wg.Wait()
	if len(wins) != 1 || others != 0 {
		t.Fatalf("%d registrations won one token across two replicas (and %d failed otherwise), want exactly 1\n%s", len(wins), others, a.logs)
	}
	// One nonce, spent at both replicas at once: exactly one is accepted.
	rcA, rcB := newRawClient(t, a), newRawClient(t, &b)
	acc := rcA.rawRegister("adhoc", nil)
	doubles := 0
	for range 20 {
		nonce := rcA.rawNonce("adhoc")
		var statuses [2]int
		var rwg sync.WaitGroup
		for i, rc := range []*rawClient{rcA, rcB} {
			rwg.Add(1)
			go func() {
				defer rwg.Done()
				u := rc.rawDir("adhoc").NewOrder
				// smallstep stores the account's location as first seen:
				// the kid stays replica A's URL on both replicas.
				h := map[string]any{"alg": "ES256", "nonce": nonce, "url": u, "kid": acc.url}
				payload := rawMarshal(t, map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": "localhost"}}})
				statuses[i] = rc.rawPost(u, rawMarshal(t, rawSign(t, h, payload, acc.key))).status
			}()
		}
		rwg.Wait()
		if statuses[0] == http.StatusCreated && statuses[1] == http.StatusCreated {
			doubles++
		}
		if statuses[0] != http.StatusCreated && statuses[1] != http.StatusCreated {
			t.Fatalf("neither replica accepted a fresh nonce: %v\n%s", statuses, a.logs)
		}
	}
	if doubles > 0 {
		t.Errorf("a nonce was accepted by both replicas in %d of 20 rounds", doubles)
	}

	res, err := obtain(t, a, wins[0].cl.Certificate, "api.workers.crank.internal")
	if err != nil {
		t.Fatalf("obtain: %v\n%s", err, a.logs)
	}
	leaf := parseChain(t, res.Certificate)[0]
	certID, _ := certificate.MakeARICertID(leaf)
	for _, r := range replicas {
		if status, _, body := r.getARI(t, "workers", certID); status != http.StatusOK {
			t.Errorf("replica %s: renewalInfo %d %s", r.url, status, body)
		}
	}
}
