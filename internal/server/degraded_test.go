package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/internal/version"
)

// fakeReadiness is a readinessChecker with fixed answers.
type fakeReadiness struct {
	err    error // what Check answers
	last   error // what LastFailure answers
	failed bool  // what FailedSince answers
	checks atomic.Int32
}

func (f *fakeReadiness) FailedSince(time.Time) bool { return f.failed }

func (f *fakeReadiness) Check(context.Context) error   { f.checks.Add(1); return f.err }
func (f *fakeReadiness) Recheck(context.Context) error { f.checks.Add(1); return f.err }
func (f *fakeReadiness) LastFailure() error            { return f.last }

var errStoreDown = errors.New("store: ping PostgreSQL: connection refused")

func TestDegradedMiddleware(t *testing.T) {
	t.Parallel()
	// inner answers like smallstep: headers, then a status, then a body.
	inner := func(status int, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Replay-Nonce", "n0nce")
			w.Header().Set("Content-Type", "application/json")
			if status != 0 {
				w.WriteHeader(status)
			}
			_, _ = io.WriteString(w, body)
		}
	}
	tests := []struct {
		name        string
		method      string
		inner       http.HandlerFunc
		ready       *fakeReadiness
		wantStatus  int
		wantProblem bool // 503 store problem with Retry-After
		wantBody    string
		wantChecks  int32
		wantInner   bool
	}{
		{name: "500 while the store is down becomes 503", method: http.MethodPost, inner: inner(500, "{}"),
			ready: &fakeReadiness{err: errStoreDown}, wantStatus: 503, wantProblem: true, wantChecks: 1, wantInner: true},
		{name: "HEAD new-nonce 500 while down becomes a bodiless 503", method: http.MethodHead, inner: inner(500, ""),
			ready: &fakeReadiness{err: errStoreDown}, wantStatus: 503, wantProblem: true, wantChecks: 1, wantInner: true},
		{name: "GET new-nonce 500 while down becomes 503", method: http.MethodGet, inner: inner(500, "{}"),
			ready: &fakeReadiness{err: errStoreDown}, wantStatus: 503, wantProblem: true, wantChecks: 1, wantInner: true},
		{name: "500 while the store is up passes through", method: http.MethodPost, inner: inner(500, `{"detail":"bug"}`),
			ready: &fakeReadiness{}, wantStatus: 500, wantBody: `{"detail":"bug"}`, wantChecks: 1, wantInner: true},
		{name: "500 after the connection broke during the request becomes 503, though the store is back", method: http.MethodPost, inner: inner(500, "{}"),
			ready: &fakeReadiness{failed: true}, wantStatus: 503, wantProblem: true, wantInner: true},
		{name: "4xx passes through without a check", method: http.MethodPost, inner: inner(400, `{"type":"malformed"}`),
			ready: &fakeReadiness{err: errStoreDown}, wantStatus: 400, wantBody: `{"type":"malformed"}`, wantInner: true},
		{name: "2xx passes through without a check", method: http.MethodPost, inner: inner(201, `{"status":"ready"}`),
			ready: &fakeReadiness{err: errStoreDown}, wantStatus: 201, wantBody: `{"status":"ready"}`, wantInner: true},
		{name: "implicit 200 passes through", method: http.MethodGet, inner: inner(0, `{"newNonce":"x"}`),
			ready: &fakeReadiness{}, wantStatus: 200, wantBody: `{"newNonce":"x"}`, wantInner: true},
		{name: "known outage answers at once", method: http.MethodPost, inner: inner(201, "{}"),
			ready: &fakeReadiness{err: errStoreDown, last: errStoreDown}, wantStatus: 503, wantProblem: true},
		{name: "known outage, HEAD", method: http.MethodHead, inner: inner(200, ""),
			ready: &fakeReadiness{err: errStoreDown, last: errStoreDown}, wantStatus: 503, wantProblem: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			called := false
			h := degraded(tc.ready, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				called = true
				tc.inner(w, r)
			}))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), tc.method, "/acme/workers/new-order", nil))
			res := rec.Result()
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d (body %q)", res.StatusCode, tc.wantStatus, body)
			}
			if called != tc.wantInner {
				t.Errorf("inner handler called: %v, want %v", called, tc.wantInner)
			}
			if got := tc.ready.checks.Load(); got != tc.wantChecks {
				t.Errorf("readiness checked %d times, want %d", got, tc.wantChecks)
			}
			if !tc.wantProblem {
				if string(body) != tc.wantBody {
					t.Errorf("body %q, want %q", body, tc.wantBody)
				}
				if res.Header.Get("Retry-After") != "" {
					t.Errorf("Retry-After %q on a passed-through answer", res.Header.Get("Retry-After"))
				}
				return
			}
			checkStoreProblem(t, tc.method, res.Header, body)
		})
	}
}

// checkStoreProblem asserts the 503 answer of a store outage.
func checkStoreProblem(t *testing.T, method string, h http.Header, body []byte) {
	t.Helper()
	if ct := h.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("Content-Type %q", ct)
	}
	if ra := h.Get("Retry-After"); ra != "5" {
		t.Errorf("Retry-After %q, want 5", ra)
	}
	if n := h.Get("Replay-Nonce"); n != "" {
		t.Errorf("Replay-Nonce %q on a store outage answer", n)
	}
	if method == http.MethodHead {
		if len(body) != 0 {
			t.Errorf("HEAD answer has a body: %q", body)
		}
		return
	}
	var p storeProblem
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("body %q: %v", body, err)
	}
	if p.Type != "urn:ietf:params:acme:error:serverInternal" || p.Status != 503 || p.Detail != storeProblemDetail {
		t.Errorf("problem %+v", p)
	}
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestDegradedReadinessCache(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	var (
		probes atomic.Int32
		mu     sync.Mutex
		down   error
	)
	r := newReadiness(readinessConfig{Now: clk.Now, Probe: func(context.Context) error {
		probes.Add(1)
		mu.Lock()
		defer mu.Unlock()
		return down
	}})
	setDown := func(err error) { mu.Lock(); down = err; mu.Unlock() }

	steps := []struct {
		name       string
		advance    time.Duration
		down       error
		wantErr    bool
		wantProbes int32
		wantLast   bool // LastFailure non-nil after the Check
	}{
		{name: "first check probes", wantProbes: 1},
		{name: "within the TTL: cached", advance: 500 * time.Millisecond, down: errStoreDown, wantProbes: 1},
		{name: "after the TTL: probes again, down", advance: 600 * time.Millisecond, down: errStoreDown, wantErr: true, wantProbes: 2, wantLast: true},
		{name: "down is cached too", advance: 900 * time.Millisecond, wantErr: true, wantProbes: 2, wantLast: true},
		{name: "recovers after the TTL", advance: 200 * time.Millisecond, wantProbes: 3},
	}
	for _, s := range steps {
		clk.Advance(s.advance)
		setDown(s.down)
		err := r.Check(t.Context())
		if (err != nil) != s.wantErr {
			t.Fatalf("%s: Check = %v, want error %v", s.name, err, s.wantErr)
		}
		if got := probes.Load(); got != s.wantProbes {
			t.Fatalf("%s: %d probes, want %d", s.name, got, s.wantProbes)
		}
		if got := r.LastFailure() != nil; got != s.wantLast {
			t.Fatalf("%s: LastFailure set %v, want %v", s.name, got, s.wantLast)
		}
	}
	clk.Advance(2 * time.Second)
	setDown(errStoreDown)
	if err := r.LastFailure(); err != nil {
		t.Errorf("LastFailure after the TTL = %v, want nil (stale results are not reused)", err)
	}
	if got := probes.Load(); got != 3 {
		t.Errorf("LastFailure probed: %d probes", got)
	}
}

// TestDegradedReadinessHungStore: a store that never answers costs one
// probe however many requests wait, and each waits only Wait.
func TestDegradedReadinessHungStore(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var probes atomic.Int32
	r := newReadiness(readinessConfig{Wait: 100 * time.Millisecond, Probe: func(ctx context.Context) error {
		probes.Add(1)
		select {
		case <-release:
			return nil
		case <-time.After(10 * time.Second):
			return errors.New("probe never released")
		}
	}})
	const callers = 8
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	start := time.Now()
	for range callers {
		wg.Go(func() { errs <- r.Check(t.Context()) })
	}
	wg.Wait()
	close(errs)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("callers waited %s", d)
	}
	for err := range errs {
		if err == nil {
			t.Error("a caller saw a hung store as ready")
		}
	}
	if got := probes.Load(); got != 1 {
		t.Errorf("%d probes for %d callers, want 1", got, callers)
	}
	if r.LastFailure() == nil {
		t.Error("the timeout was not cached")
	}
	close(release)
	// Once the probe returns, its result replaces the timeout.
	deadline := time.Now().Add(5 * time.Second)
	for r.LastFailure() != nil {
		if time.Now().After(deadline) {
			t.Fatal("the released probe's result was never recorded")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDegradedReadinessCallerCancel: a caller that goes away does not
// record its cancellation as a store outage.
func TestDegradedReadinessCallerCancel(t *testing.T) {
	t.Parallel()
	r := newReadiness(readinessConfig{Probe: func(ctx context.Context) error { return ctx.Err() }})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_ = r.Check(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		checked, err := r.checked, r.err
		r.mu.Unlock()
		if checked {
			if err != nil {
				t.Fatalf("probe saw the caller's cancellation: %v", err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the probe never finished")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHealthEndpoints(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		handler    http.HandlerFunc
		wantStatus int
		wantBody   map[string]string
		wantRetry  bool
	}{
		{name: "live", handler: liveHandler, wantStatus: 200, wantBody: map[string]string{"status": "ok", "version": version.Get().Short()}},
		{name: "ready", handler: readyHandler(&fakeReadiness{}), wantStatus: 200, wantBody: map[string]string{"status": "ready"}},
		{name: "not ready", handler: readyHandler(&fakeReadiness{err: errStoreDown}), wantStatus: 503,
			wantBody: map[string]string{"status": "unavailable", "reason": "store: unavailable"}, wantRetry: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			tc.handler(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/health/ready", nil))
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d, want %d", rec.Code, tc.wantStatus)
			}
			var got map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if len(got) != len(tc.wantBody) {
				t.Errorf("body %v, want %v", got, tc.wantBody)
			}
			for k, v := range tc.wantBody {
				if got[k] != v {
					t.Errorf("body %v, want %v", got, tc.wantBody)
				}
			}
			if (rec.Header().Get("Retry-After") != "") != tc.wantRetry {
				t.Errorf("Retry-After %q", rec.Header().Get("Retry-After"))
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
		})
	}
}

// TestDegradedReadinessRecheck: a 5xx rechecks the store instead of
// trusting a success cached before it (a health check polling faster than
// the TTL kept one cached and let 500s through during a failover), while a
// cached failure is still answered without a probe.
func TestDegradedReadinessRecheck(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	var probes atomic.Int32
	r := newReadiness(readinessConfig{Probe: func(context.Context) error {
		probes.Add(1)
		if down.Load() {
			return errStoreDown
		}
		return nil
	}})
	if err := r.Check(t.Context()); err != nil {
		t.Fatal(err)
	}
	down.Store(true)
	if err := r.Check(t.Context()); err != nil {
		t.Fatalf("Check trusted no cache: %v", err)
	}
	if err := r.Recheck(t.Context()); !errors.Is(err, errStoreDown) {
		t.Fatalf("Recheck after the store went down = %v, want the outage", err)
	}
	n := probes.Load()
	if err := r.Recheck(t.Context()); !errors.Is(err, errStoreDown) || probes.Load() != n {
		t.Errorf("Recheck with a cached failure = %v after %d more probes, want the cached outage", err, probes.Load()-n)
	}
}

// TestDegradedReadinessRecheckStaleProbe: a probe that started before the
// store went down, and answers "up" after a request has failed, does not
// clear that request's Recheck: the Recheck waits for it and then probes
// again (PostgreSQL shutting down under load answered 500 through this).
func TestDegradedReadinessRecheckStaleProbe(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	var probes atomic.Int32
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	r := newReadiness(readinessConfig{Wait: 10 * time.Second, Probe: func(context.Context) error {
		if probes.Add(1) == 1 {
			entered <- struct{}{}
			<-release // the first probe sees the store up, but answers late
			return nil
		}
		if down.Load() {
			return errStoreDown
		}
		return nil
	}})
	first := make(chan error, 1)
	go func() { first <- r.Check(t.Context()) }()
	<-entered
	down.Store(true) // a request now fails with a 5xx and rechecks
	rechecked := make(chan error, 1)
	go func() { rechecked <- r.Recheck(t.Context()) }()
	time.Sleep(20 * time.Millisecond) // let Recheck join the running probe
	close(release)
	<-first // nil or the newer outage: it reads the latest result
	if err := <-rechecked; !errors.Is(err, errStoreDown) {
		t.Fatalf("Recheck = %v, want the outage seen by a probe started after it", err)
	}
	if n := probes.Load(); n != 2 {
		t.Errorf("%d probes, want 2", n)
	}
}
