package lease

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// logBuffer collects a logger's lines.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newLease(t *testing.T, dsn, name string) (*Lease, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	l := New(Config{DSN: dsn, Name: name, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	t.Cleanup(func() { _ = l.Close() })
	return l, logs
}

func nop(context.Context) error { return nil }

// run calls Run with a duty that counts; a lease error fails the test (it
// may be called from other goroutines, so it does not stop it).
func run(t *testing.T, l *Lease, runs *atomic.Int32) bool {
	t.Helper()
	ran, err := l.Run(t.Context(), func(context.Context) error { runs.Add(1); return nil })
	if err != nil {
		t.Errorf("%s: Run: %v", l.Name(), err)
	}
	return ran
}

// TestKey pins the keys: replicas of different builds must agree on them
// (a rolling upgrade runs both at once).
func TestKey(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		want int64
	}{
		{"crank-ca/retention", -9132385594737949010},
		{"crank-ca/crl", -8717687906803709325},
	} {
		if got := Key(tc.name); got != tc.want {
			t.Errorf("Key(%q) = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestLocal(t *testing.T) {
	t.Parallel()
	a, logs := newLease(t, "", "crank-ca/retention")
	b, _ := newLease(t, "", "crank-ca/retention")
	var runs atomic.Int32
	for _, l := range []*Lease{a, b, a} {
		if !run(t, l, &runs) {
			t.Fatal("a local lease was not held")
		}
	}
	if got := strings.Count(logs.String(), "cluster duty lease acquired"); got != 1 {
		t.Errorf("acquired logged %d times, want once", got)
	}
	dutyErr := errors.New("boom")
	if ran, err := a.Run(t.Context(), func(context.Context) error { return dutyErr }); !ran || !errors.Is(err, dutyErr) {
		t.Errorf("failing duty: ran=%v err=%v, want true and its error", ran, err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if ran, err := a.Run(t.Context(), nop); ran || !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: ran=%v err=%v, want ErrClosed", ran, err)
	}
}

func TestEvery(t *testing.T) {
	t.Parallel()
	l, logs := newLease(t, "", "crank-ca/every")
	ctx, cancel := context.WithCancel(t.Context())
	boom := errors.New("boom")
	// What each run returns; the last one also ends Every.
	results := []error{boom, boom, nil, boom}
	var runs atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Every(ctx, 10*time.Millisecond, func(context.Context) error {
			n := int(runs.Add(1))
			if n == len(results) {
				cancel()
			}
			return results[n-1]
		})
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Every did not return after its context ended")
	}
	if got := int(runs.Load()); got != len(results) {
		t.Errorf("%d runs, want %d (the first at once, then one per tick until cancelled)", got, len(results))
	}
	for _, tc := range []struct {
		line string
		want int
	}{
		{`level=ERROR msg="cluster duty failed" duty=crank-ca/every err=boom`, 1},
		{`level=DEBUG msg="cluster duty failed" duty=crank-ca/every err=boom`, 1}, // the repeat
		{`level=INFO msg="cluster duty working again" duty=crank-ca/every`, 1},
	} {
		if got := strings.Count(logs.String(), tc.line); got != tc.want {
			t.Errorf("%q logged %d times, want %d:\n%s", tc.line, got, tc.want, logs)
		}
	}
}

func TestUnreachable(t *testing.T) {
	t.Parallel()
	l := New(Config{DSN: "postgresql://crank:secret@127.0.0.1:1/x?sslmode=disable&connect_timeout=2", Name: "crank-ca/test", Timeout: 2 * time.Second})
	defer l.Close()
	ran, err := l.Run(t.Context(), nop)
	if ran || err == nil {
		t.Fatalf("unreachable database: ran=%v err=%v, want an error and no run", ran, err)
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("the error leaks the password: %v", err)
	}
}

// TestPostgreSQL runs two replicas' leases against one real PostgreSQL.
func TestPostgreSQL(t *testing.T) {
	t.Parallel()
	dsn := startPostgres(t)

	t.Run("exactly one holder", func(t *testing.T) {
		t.Parallel()
		a, _ := newLease(t, dsn, "test/one-holder")
		b, _ := newLease(t, dsn, "test/one-holder")
		var runsA, runsB atomic.Int32
		var wg sync.WaitGroup
		for range 10 {
			wg.Go(func() { run(t, a, &runsA) })
			wg.Go(func() { run(t, b, &runsB) })
		}
		wg.Wait()
		if got := [2]int32{runsA.Load(), runsB.Load()}; got != [2]int32{10, 0} && got != [2]int32{0, 10} {
			t.Errorf("runs per replica %v, want all 10 at one replica and none at the other", got)
		}
		if a.Held() == b.Held() {
			t.Errorf("held: %v and %v, want exactly one", a.Held(), b.Held())
		}
	})

	t.Run("different names", func(t *testing.T) {
		t.Parallel()
		a, _ := newLease(t, dsn, "test/names/retention")
		b, _ := newLease(t, dsn, "test/names/crl")
		var runs atomic.Int32
		if !run(t, a, &runs) || !run(t, b, &runs) {
			t.Error("leases of different duties excluded each other")
		}
	})

	takeovers := []struct {
		name string
		// lose makes the holder lose the lease.
		lose func(t *testing.T, holder *Lease)
		// logged is what the holder logs.
		logged string
	}{
		{"connection terminated", func(t *testing.T, h *Lease) {
			t.Helper()
			terminate(t, dsn, backendPID(h))
		}, "cluster duty lease lost"},
		{"holder closed", func(t *testing.T, h *Lease) {
			t.Helper()
			pid := backendPID(h)
			if err := h.Close(); err != nil {
				t.Fatal(err)
			}
			waitGone(t, dsn, pid)
		}, "cluster duty lease released"},
	}
	for _, tc := range takeovers {
		t.Run("takeover after "+tc.name, func(t *testing.T) {
			t.Parallel()
			name := "test/takeover/" + tc.name
			a, logsA := newLease(t, dsn, name)
			b, logsB := newLease(t, dsn, name)
			var runsA, runsB atomic.Int32
			if !run(t, a, &runsA) || run(t, b, &runsB) {
				t.Fatal("the first to try did not become the only holder")
			}
			if !strings.Contains(logsB.String(), "another replica holds the lease") {
				t.Errorf("the skipped run is not logged:\n%s", logsB)
			}
			tc.lose(t, a)
			if !run(t, b, &runsB) {
				t.Fatalf("the other replica did not take over on its next try\n%s", logsB)
			}
			if !strings.Contains(logsB.String(), "cluster duty lease acquired") {
				t.Errorf("the takeover is not logged:\n%s", logsB)
			}
			ran, err := a.Run(t.Context(), nop)
			if ran {
				t.Error("the old holder still runs the duty after the takeover")
			}
			if err != nil && !errors.Is(err, ErrClosed) {
				t.Errorf("the old holder's next try: %v", err)
			}
			if !strings.Contains(logsA.String(), tc.logged) {
				t.Errorf("the old holder did not log %q:\n%s", tc.logged, logsA)
			}
		})
	}

	t.Run("old holder comes back when free", func(t *testing.T) {
		t.Parallel()
		name := "test/comeback"
		a, logs := newLease(t, dsn, name)
		var runs atomic.Int32
		if !run(t, a, &runs) {
			t.Fatal("a lone lease was not won")
		}
		var app string
		if err := queryRow(t, dsn, "SELECT application_name FROM pg_stat_activity WHERE pid = $1", int64(backendPID(a))).Scan(&app); err != nil || app != "crank-ca lease "+name {
			t.Errorf("the holder's session is named %q (%v), want %q", app, err, "crank-ca lease "+name)
		}
		terminate(t, dsn, backendPID(a))
		if !run(t, a, &runs) {
			t.Fatalf("no other replica holds it, yet the reconnected holder did not win it back\n%s", logs)
		}
		if got := strings.Count(logs.String(), "cluster duty lease acquired"); got != 2 {
			t.Errorf("acquired logged %d times, want twice:\n%s", got, logs)
		}
	})
}

// queryRow runs one query on a connection of its own.
func queryRow(t *testing.T, dsn, sql string, args ...any) pgx.Row {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn.QueryRow(t.Context(), sql, args...)
}

func backendPID(l *Lease) uint32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conn.PgConn().PID()
}

// terminate ends a backend from a third connection and waits until it has
// gone (pg_terminate_backend only signals it).
func terminate(t *testing.T, dsn string, pid uint32) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var ok bool
	if err := conn.QueryRow(t.Context(), "SELECT pg_terminate_backend($1)", int64(pid)).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_terminate_backend(%d): %v %v", pid, ok, err)
	}
	waitGone(t, dsn, pid)
}

// waitGone waits, at most 10 s, until a backend has exited and so released
// its locks.
func waitGone(t *testing.T, dsn string, pid uint32) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for deadline := time.Now().Add(10 * time.Second); ; {
		var n int
		if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", int64(pid)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %d still there after 10 s", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
