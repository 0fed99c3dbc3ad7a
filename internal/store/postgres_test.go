package store

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
)

// testPG is a throwaway PostgreSQL server for one test (a minimal copy of
// integration/degraded_test.go's newPGCluster and postgresBin), or the
// server CRANK_TEST_POSTGRES_DSN points at.
type testPG struct {
	// base is a DSN whose database name dsn replaces.
	base string
}

// startTestPG starts PostgreSQL on a loopback port, stopped at cleanup.
// It skips the test when PostgreSQL is not installed or under -short; as
// root it runs the server as the postgres user.
func startTestPG(t *testing.T) *testPG {
	t.Helper()
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	if dsn := os.Getenv("CRANK_TEST_POSTGRES_DSN"); dsn != "" {
		return &testPG{base: dsn}
	}
	bin := ""
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			bin = filepath.Dir(real) // next to pg_isready and postgres
		}
	} else if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb"); len(m) > 0 {
		bin = filepath.Dir(m[len(m)-1])
	}
	if bin == "" {
		t.Skip("PostgreSQL is not installed (apt-get install postgresql)")
	}
	dir, err := os.MkdirTemp("", "crank-store-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	var asUser []string
	if os.Geteuid() == 0 { // PostgreSQL refuses to run as root
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skip("running as root and there is no postgres user to run PostgreSQL as")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	command := func(ctx context.Context, name string, args ...string) *exec.Cmd {
		full := append(append(append([]string{}, asUser...), filepath.Join(bin, name)), args...)
		return exec.CommandContext(ctx, full[0], full[1:]...)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	data := filepath.Join(dir, "data")
	if out, err := command(ctx, "initdb", "-D", data, "-U", "crank", "--auth=trust", "--no-sync", "-E", "UTF8").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	_ = ln.Close()
	var logs strings.Builder
	var logMu sync.Mutex
	srv := command(context.Background(), "postgres", "-D", data, "-p", port, "-h", "127.0.0.1", "-k", dir,
		"-c", "fsync=off", "-c", "max_connections=300")
	srv.Stdout = lockedWriter{&logMu, &logs}
	srv.Stderr = srv.Stdout
	if err := srv.Start(); err != nil {
		t.Fatalf("postgres: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = srv.Wait(); close(exited) }()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// Signals to runuser are not forwarded; pg_ctl finds the server.
		_ = command(sctx, "pg_ctl", "stop", "-D", data, "-m", "immediate", "-w").Run()
		select {
		case <-exited:
		case <-sctx.Done():
			_ = srv.Process.Kill()
			<-exited
		}
	})
	for {
		if command(ctx, "pg_isready", "-h", "127.0.0.1", "-p", port).Run() == nil {
			return &testPG{base: "postgresql://crank@127.0.0.1:" + port + "/postgres?sslmode=disable"}
		}
		select {
		case <-ctx.Done():
			logMu.Lock()
			defer logMu.Unlock()
			t.Fatalf("postgres never became ready:\n%s", logs.String())
		case <-exited:
			logMu.Lock()
			defer logMu.Unlock()
			t.Fatalf("postgres exited at start:\n%s", logs.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *strings.Builder
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// dsn is the DSN of database name on the server.
func (p *testPG) dsn(t *testing.T, name string) string {
	t.Helper()
	if u, err := url.Parse(p.base); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Path = "/" + name
		u.RawPath = ""
		return u.String()
	}
	return p.base + " dbname='" + strings.ReplaceAll(name, "'", `\'`) + "'"
}

// uniqueDB is a database name no other test (or earlier run against the
// same server) uses.
func uniqueDB(prefix string) string {
	return prefix + "_" + strings.ToLower(rand.Text()[:10])
}

// connect opens a plain connection to a database, closed at cleanup.
func (p *testPG) connect(t *testing.T, name string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), p.dsn(t, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// createDB creates database name through the maintenance database. It
// retries while template1 is busy: CREATE DATABASE fails (55006) while any
// session is connected to its template, as OpenPostgres and smallstep's
// driver are while they create a database.
func (p *testPG) createDB(t *testing.T, name string) {
	t.Helper()
	conn := p.connect(t, "postgres")
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := conn.Exec(t.Context(), "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
		var pgErr *pgconn.PgError
		if err == nil || errors.As(err, &pgErr) && pgErr.Code == "42P04" {
			return
		}
		if !(errors.As(err, &pgErr) && pgErr.Code == "55006") || time.Now().After(deadline) {
			t.Fatalf("create database %s: %v", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// open creates database name and opens (migrating) it with OpenPostgres,
// closed at cleanup. Tests of OpenPostgres creating a database call it
// directly.
func (p *testPG) open(t *testing.T, name string) *Postgres {
	t.Helper()
	p.createDB(t, name)
	db, err := OpenPostgres(t.Context(), PostgresConfig{DSN: p.dsn(t, name), MaxConns: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func queryInt(t *testing.T, conn *pgx.Conn, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(t.Context(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// wantSchema checks that database name is at SchemaVersion, recorded once,
// with every table of the schema.
func wantSchema(t *testing.T, pg *testPG, name string) {
	t.Helper()
	conn := pg.connect(t, name)
	if n := queryInt(t, conn, "SELECT count(*) FROM crank_schema"); n != 1 {
		t.Errorf("crank_schema has %d rows, want 1", n)
	}
	if v := queryInt(t, conn, "SELECT max(version) FROM crank_schema"); v != SchemaVersion {
		t.Errorf("schema version %d, want %d", v, SchemaVersion)
	}
	for _, tbl := range schemaTables {
		if n := queryInt(t, conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = $1", tbl); n != 1 {
			t.Errorf("table %s: %d, want 1", tbl, n)
		}
	}
}

// TestPostgres runs the PostgreSQL cases on one server, each on a database
// of its own.
func TestPostgres(t *testing.T) {
	t.Parallel()
	pg := startTestPG(t)

	t.Run("contract", func(t *testing.T) {
		t.Parallel()
		testDriverContract(t, pg.open(t, uniqueDB("contract")))
	})

	t.Run("nonce store", func(t *testing.T) {
		t.Parallel()
		testNonceStore(t, func(t *testing.T) (*Store, *Store) {
			t.Helper()
			name := uniqueDB("nonces")
			return newTestStore(t, pg.open(t, name)), newTestStore(t, pg.open(t, name))
		})
	})

	// Replicas starting at once on a database nobody created yet: every
	// one opens it, and the schema is created and recorded once.
	// It runs on a server of its own: while OpenPostgres creates a
	// database it is connected to template1, and CREATE DATABASE elsewhere
	// fails meanwhile.
	t.Run("concurrent open of a missing database", func(t *testing.T) {
		t.Parallel()
		pg := startTestPG(t)
		name := uniqueDB("fresh")
		concurrentOpen(t, pg, name)
		wantSchema(t, pg, name)
	})

	// The same on a database that exists but is empty (created by the
	// operator, as on a managed service).
	t.Run("concurrent open of an empty database", func(t *testing.T) {
		t.Parallel()
		name := uniqueDB("empty")
		pg.createDB(t, name)
		concurrentOpen(t, pg, name)
		wantSchema(t, pg, name)
		// A later start finds the work done.
		pg.open(t, name)
		wantSchema(t, pg, name)
	})

	t.Run("creates a missing database", func(t *testing.T) {
		t.Parallel()
		name := uniqueDB("Crank-CA new")
		db := pg.open(t, name)
		if err := db.Ping(t.Context()); err != nil {
			t.Fatal(err)
		}
		if n := queryInt(t, pg.connect(t, "postgres"), "SELECT count(*) FROM pg_database WHERE datname = $1", name); n != 1 {
			t.Errorf("pg_database has %d databases named %q, want 1", n, name)
		}
		wantSchema(t, pg, name)
	})

	t.Run("schema too new", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name     string
			migrated bool
		}{
			{"after migration", true},
			{"before any migration", false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				name := uniqueDB("newer")
				if tc.migrated {
					db := pg.open(t, name)
					_ = db.Close()
				} else {
					pg.createDB(t, name)
					if _, err := pg.connect(t, name).Exec(t.Context(), "CREATE TABLE crank_schema (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), description TEXT NOT NULL)"); err != nil {
						t.Fatal(err)
					}
				}
				conn := pg.connect(t, name)
				if _, err := conn.Exec(t.Context(), "INSERT INTO crank_schema (version, description) VALUES ($1, 'from the future')", SchemaVersion+1); err != nil {
					t.Fatal(err)
				}
				db, err := OpenPostgres(t.Context(), PostgresConfig{DSN: pg.dsn(t, name)})
				if err == nil {
					_ = db.Close()
				}
				if !errors.Is(err, ErrSchemaTooNew) {
					t.Fatalf("OpenPostgres = %v, want ErrSchemaTooNew", err)
				}
				if !tc.migrated {
					if n := queryInt(t, conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'crank_schema'"); n != 0 {
						t.Errorf("a refused start created %d tables", n)
					}
				}
				if n := queryInt(t, conn, "SELECT max(version) FROM crank_schema"); n != SchemaVersion+1 {
					t.Errorf("schema version after a refused start: %d", n)
				}
			})
		}
	})

	// Two replicas (two pools) compare-and-swap one key from absent at
	// once, 32 goroutines across both: one wins, every other sees its value.
	// A connection the server ends is noted, so the degraded mode can
	// answer 503 even when the database is back by the time it probes.
	t.Run("connection failures are noted", func(t *testing.T) {
		t.Parallel()
		name := uniqueDB("failed")
		db := pg.open(t, name)
		before := time.Now()
		if db.FailedSince(before) {
			t.Fatal("FailedSince before any failure")
		}
		if _, err := pg.connect(t, name).Exec(t.Context(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name); err != nil {
			t.Fatal(err)
		}
		// Every pooled connection is dead: reads fail until the pool
		// has dropped them, each failure noted.
		for range 20 {
			if _, err := db.Get([]byte("crank_workers"), []byte("x")); err != nil && !IsNotFound(err) {
				break
			}
		}
		if !db.FailedSince(before) {
			t.Error("a terminated connection was not noted")
		}
		if db.FailedSince(time.Now().Add(time.Hour)) {
			t.Error("FailedSince a later time")
		}
	})

	t.Run("transaction", func(t *testing.T) {
		t.Parallel()
		name := uniqueDB("txn")
		testPostgresTxn(t, pg.open(t, name), pg.open(t, name), pg.open(t, uniqueDB("txn")))
	})

	t.Run("transaction failures", func(t *testing.T) {
		t.Parallel()
		testPostgresTxnFailures(t, pg.open(t, uniqueDB("txnfail")))
	})

	t.Run("compare-and-swap across replicas", func(t *testing.T) {
		t.Parallel()
		name := uniqueDB("replicas")
		replicas := []*Postgres{pg.open(t, name), pg.open(t, name)}
		table := []byte("crank_race")
		if err := replicas[0].CreateTable(table); err != nil {
			t.Fatal(err)
		}
		for _, viaUpdate := range []bool{false, true} {
			for round := range 10 {
				key := []byte(fmt.Sprintf("k-%v-%d", viaUpdate, round))
				type res struct {
					cur     []byte
					swapped bool
					err     error
				}
				results := make([]res, 32)
				start := make(chan struct{})
				var wg sync.WaitGroup
				for g := range results {
					wg.Go(func() {
						db := replicas[g%2]
						val := []byte("winner-" + strconv.Itoa(g))
						<-start
						if viaUpdate {
							op := &database.TxEntry{Cmd: database.CmpAndSwap, Bucket: table, Key: key, Value: val}
							err := db.Update(&database.Tx{Operations: []*database.TxEntry{op}})
							results[g] = res{op.Result, op.Swapped, err}
							return
						}
						cur, swapped, err := db.CmpAndSwap(table, key, nil, val)
						results[g] = res{cur, swapped, err}
					})
				}
				close(start)
				wg.Wait()
				winners := 0
				stored, err := replicas[1].Get(table, key)
				if err != nil {
					t.Fatal(err)
				}
				for g, r := range results {
					if r.err != nil {
						t.Errorf("update=%v round %d goroutine %d: %v", viaUpdate, round, g, r.err)
						continue
					}
					if r.swapped {
						winners++
					}
					if string(r.cur) != string(stored) {
						t.Errorf("update=%v round %d goroutine %d: current value %q, stored %q", viaUpdate, round, g, r.cur, stored)
					}
				}
				if winners != 1 {
					t.Fatalf("update=%v round %d: %d of 32 compare-and-swaps from absent won, want 1", viaUpdate, round, winners)
				}
			}
		}
	})

	// Databases smallstep's driver wrote are read unchanged, and it reads
	// what crank-ca's wrote.
	t.Run("smallstep's tables", func(t *testing.T) {
		t.Parallel()
		name := uniqueDB("smallstep")
		pg.createDB(t, name) // smallstep's driver would create it from template1 too
		sdb, err := nosql.New("postgresql", pg.dsn(t, name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sdb.Close() })
		table := []byte("acme_accounts")
		if err := sdb.CreateTable(table); err != nil {
			t.Fatal(err)
		}
		mustSet(t, sdb, table, "by-smallstep", "1")
		db := pg.open(t, name)
		wantValue(t, db, table, "by-smallstep", "1")
		mustSet(t, db, table, "by-crank", "2")
		es, err := sdb.List(table)
		if err != nil {
			t.Fatal(err)
		}
		// smallstep's List has no ORDER BY.
		sortKV := cmpopts.SortSlices(func(a, b kv) bool { return a.Key < b.Key })
		if diff := cmp.Diff([]kv{{"by-crank", "2"}, {"by-smallstep", "1"}}, entries(es), sortKV); diff != "" {
			t.Errorf("smallstep's view (-want +got):\n%s", diff)
		}
	})

	t.Run("pool size", func(t *testing.T) {
		t.Parallel()
		name := uniqueDB("pool")
		pg.createDB(t, name)
		db, err := OpenPostgres(t.Context(), PostgresConfig{DSN: pg.dsn(t, name), MaxConns: 7})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if got := db.pool.Config().MaxConns; got != 7 {
			t.Errorf("MaxConns = %d, want 7", got)
		}
		if err := db.Open("x"); err == nil {
			t.Error("Open succeeded: a Postgres store is opened with OpenPostgres")
		}
	})
}

// concurrentOpen opens database name with 8 OpenPostgres calls at once;
// all must succeed.
func concurrentOpen(t *testing.T, pg *testPG, name string) {
	t.Helper()
	errs := make([]error, 8)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() {
			<-start
			db, err := OpenPostgres(t.Context(), PostgresConfig{DSN: pg.dsn(t, name), MaxConns: 4})
			if err == nil {
				err = db.Ping(t.Context())
				_ = db.Close()
			}
			errs[i] = err
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("OpenPostgres %d of 8: %v", i, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// TestPostgresDSNErrorHidesPassword: a DSN that does not parse is reported
// without its password, in every form libpq accepts.
func TestPostgresDSNErrorHidesPassword(t *testing.T) {
	t.Parallel()
	const secret = "hunter2secret"
	for _, tc := range []struct{ name, dsn string }{
		{"URL, bad port", "postgres://crank:" + secret + "@db.example:notaport/ca"},
		{"URL, bad escape", "postgres://crank:" + secret + "@db.example/ca%zz"},
		{"URL, bad option", "postgresql://crank:" + secret + "@db.example/ca?sslmode=bogus"},
		{"URL, password in query", "postgres://crank@db.example:notaport/ca?password=" + secret},
		{"URL, colon in password", "postgres://crank:" + secret + ":x@db.example:notaport/ca"},
		{"keyword/value, bad port", "host=db.example password=" + secret + " port=notaport"},
		{"keyword/value, quoted password", "host=db.example password='" + secret + " x' port=notaport"},
		{"keyword/value, spaces around =", "host=db.example password = " + secret + " port=notaport"},
		{"keyword/value, password first", "password=" + secret + " port=notaport"},
		{"keyword/value, unterminated quote", "host=db.example password='" + secret},
		{"keyword/value, bad option", "host=db.example password=" + secret + " sslmode=bogus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			db, err := OpenPostgres(ctx, PostgresConfig{DSN: tc.dsn})
			if err == nil {
				_ = db.Close()
				t.Fatalf("OpenPostgres(%q) succeeded", tc.dsn)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(fmt.Sprintf("%+v", err), secret) {
				t.Errorf("the DSN error shows the password: %v", err)
			}
			for e := err; e != nil; e = errors.Unwrap(e) {
				if strings.Contains(e.Error(), secret) {
					t.Errorf("a wrapped error shows the password: %v", e)
				}
			}
		})
	}
}

// testPostgresTxn checks Txn's buffered writes: reads inside see them,
// nothing is visible before commit or after an error, the last write of a
// key wins, and GetForUpdate serialises read-modify-writes of one key
// across two handles. replica is a second handle on db's database (another
// replica), other a second database (nothing leaks there).
func testPostgresTxn(t *testing.T, db, replica, other *Postgres) {
	t.Helper()
	ctx := t.Context()
	a, b := []byte("crank_txn_a"), []byte("crank_txn_b")
	for _, tbl := range [][]byte{a, b} {
		if err := db.CreateTable(tbl); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Set(a, []byte("old"), []byte("1")); err != nil {
		t.Fatal(err)
	}
	errAbort := errors.New("abort")
	err := db.Txn(ctx, func(kv KV) error {
		for _, w := range []struct{ tbl, k, v string }{{"a", "x", "1"}, {"a", "y", "2"}, {"b", "x", "3"}} {
			tbl := a
			if w.tbl == "b" {
				tbl = b
			}
			if err := kv.Set(tbl, []byte(w.k), []byte(w.v)); err != nil {
				return err
			}
		}
		if v, err := kv.Get(a, []byte("y")); err != nil || string(v) != "2" {
			t.Errorf("read of an own write = %q, %v", v, err)
		}
		if _, err := db.Get(a, []byte("x")); !IsNotFound(err) {
			t.Errorf("an uncommitted write is visible outside: %v", err)
		}
		return errAbort
	})
	if !errors.Is(err, errAbort) {
		t.Fatalf("Txn = %v, want the callback's error", err)
	}
	if _, err := db.Get(a, []byte("x")); !IsNotFound(err) {
		t.Errorf("a write of an aborted transaction is visible: %v", err)
	}

	err = db.Txn(ctx, func(kv KV) error {
		steps := []func() error{
			func() error { return kv.Set(a, []byte("x"), []byte("1")) },
			func() error { return kv.Set(a, []byte("x"), []byte("2")) }, // last wins
			func() error { return kv.Set(a, []byte("y"), []byte("3")) },
			func() error { return kv.Set(a, []byte("gone"), []byte("4")) },
			func() error { return kv.Del(a, []byte("gone")) }, // set, then deleted
			func() error { return kv.Del(a, []byte("old")) },  // committed before
			func() error { return kv.Set(b, []byte("x"), nil) },
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return err
			}
		}
		if _, err := kv.Get(a, []byte("old")); !IsNotFound(err) {
			t.Errorf("read of an own delete: %v, want not found", err)
		}
		if v, err := kv.GetForUpdate(b, []byte("x")); err != nil || v == nil || len(v) != 0 {
			t.Errorf("read of an own empty write = %#v, %v; want empty, not nil", v, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		tbl  []byte
		k    string
		want string // "" with missing: not found
		miss bool
	}{
		{a, "x", "2", false}, {a, "y", "3", false}, {a, "gone", "", true}, {a, "old", "", true}, {b, "x", "", false},
	} {
		v, err := db.Get(c.tbl, []byte(c.k))
		switch {
		case c.miss && !IsNotFound(err):
			t.Errorf("%s/%s after commit: %q, %v; want not found", c.tbl, c.k, v, err)
		case !c.miss && (err != nil || string(v) != c.want):
			t.Errorf("%s/%s after commit = %q, %v; want %q", c.tbl, c.k, v, err, c.want)
		}
	}
	if _, err := other.Get(a, []byte("x")); err == nil {
		t.Errorf("the write reached another database")
	}

	// Read-modify-write of one counter from 16 goroutines on two handles:
	// GetForUpdate holds the key until commit, so no increment is lost.
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		h := db
		if i%2 == 1 {
			h = replica
		}
		wg.Go(func() {
			errs <- h.Txn(ctx, func(kv KV) error {
				cur := 0
				v, err := kv.GetForUpdate(b, []byte("counter"))
				switch {
				case IsNotFound(err):
				case err != nil:
					return err
				default:
					if cur, err = strconv.Atoi(string(v)); err != nil {
						return err
					}
				}
				return kv.Set(b, []byte("counter"), []byte(strconv.Itoa(cur+1)))
			})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if v, err := db.Get(b, []byte("counter")); err != nil || string(v) != strconv.Itoa(n) {
		t.Errorf("counter = %q, %v; want %d: an increment was lost", v, err, n)
	}
}

// testPostgresTxnFailures attacks Txn's pipelining: a write refused at
// commit, a read error the callback swallows, and a callback error after a
// lock. Each leaves nothing written, releases its locks, and leaves no
// connection in a transaction for the next caller (the loops run more
// transactions than the pool has connections).
func testPostgresTxnFailures(t *testing.T, db *Postgres) {
	t.Helper()
	ctx := t.Context()
	a, b := []byte("crank_txnf_a"), []byte("crank_txnf_b")
	for _, tbl := range [][]byte{a, b} {
		if err := db.CreateTable(tbl); err != nil {
			t.Fatal(err)
		}
	}
	// lockAndSet takes the shared row lock and writes a row of its own.
	lockAndSet := func(kv KV, prefix string, i int) error {
		if _, err := kv.GetForUpdate(a, []byte("lock")); err != nil && !IsNotFound(err) {
			return err
		}
		return kv.Set(a, []byte(fmt.Sprint(prefix, i)), []byte("v"))
	}
	tooLong := []byte(strings.Repeat("k", 300)) // CHECK (octet_length(nkey) <= 255)
	errAbort := errors.New("abort")
	cases := []struct {
		name string
		fn   func(i int) func(KV) error
		want func(error) bool
	}{
		{
			name: "a write refused at commit",
			fn: func(i int) func(KV) error {
				return func(kv KV) error {
					if err := lockAndSet(kv, "ok-", i); err != nil {
						return err
					}
					return kv.Set(b, tooLong, []byte("v"))
				}
			},
			want: func(err error) bool {
				var pe *pgconn.PgError
				return errors.As(err, &pe) && pe.Code == "23514"
			},
		},
		{
			name: "a read error swallowed by the callback",
			fn: func(i int) func(KV) error {
				return func(kv KV) error {
					_, _ = kv.Get([]byte("crank_no_such_table"), []byte("k"))
					return kv.Set(a, []byte(fmt.Sprint("swallowed-", i)), []byte("v"))
				}
			},
			want: func(err error) bool { return errors.Is(err, pgx.ErrTxCommitRollback) },
		},
		{
			name: "a callback error after a lock",
			fn: func(i int) func(KV) error {
				return func(kv KV) error {
					if err := lockAndSet(kv, "aborted-", i); err != nil {
						return err
					}
					return errAbort
				}
			},
			want: func(err error) bool { return errors.Is(err, errAbort) },
		},
	}
	for _, c := range cases {
		for i := range 12 {
			if err := db.Txn(ctx, c.fn(i)); !c.want(err) {
				t.Fatalf("%s, round %d: Txn = %v", c.name, i, err)
			}
		}
	}
	// The request goes away (its context is cancelled) between the lock
	// and the commit: pgx closes the connection, whose state is then
	// unknown; the pool must drop it, and PostgreSQL ends the transaction
	// with the session, lock included.
	for i := range 12 {
		cctx, cancel := context.WithCancel(ctx)
		err := db.Txn(cctx, func(kv KV) error {
			if err := lockAndSet(kv, "cancelled-", i); err != nil {
				return err
			}
			cancel()
			return nil
		})
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled before commit, round %d: Txn = %v", i, err)
		}
	}
	rows, err := db.List(a)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 0 {
		t.Errorf("%d rows of failed transactions were written, first %q", len(rows), rows[0].Key)
	}
	// The lock is free again, and every pooled connection is usable:
	// a lost ROLLBACK would leave one in a failed transaction.
	lockCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for i := range 12 {
		err := db.Txn(lockCtx, func(kv KV) error { return lockAndSet(kv, "after-", i) })
		if err != nil {
			t.Fatalf("transaction %d after the failures: %v", i, err)
		}
	}
	// A callback that does nothing costs nothing and fails nothing.
	if err := db.Txn(ctx, func(KV) error { return nil }); err != nil {
		t.Errorf("empty transaction: %v", err)
	}
	if rows, err := db.List(a); err != nil || len(rows) != 12 {
		t.Errorf("after the failures: %d rows, %v; want 12", len(rows), err)
	}
}
