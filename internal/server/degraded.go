package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/crank-platform/crank-ca/internal/version"
)

// While the store is down every ACME request fails inside smallstep with a
// bare 500 (new-nonce with the body "{}"), which clients treat as a bug
// rather than something to wait out. This file turns those into RFC 8555
// problems with status 503 and Retry-After, and keeps the readiness answer
// that both the middleware and GET /health/ready use.

const (
	// readinessTTL is how long a readiness result is reused: a flood of
	// failing requests probes a dead database at most once per TTL.
	readinessTTL = time.Second
	// readinessWait bounds how long a caller waits for a probe; the probe
	// itself may run on (nosql reads take no context), but only one at a
	// time.
	readinessWait = 3 * time.Second
	// storeRetryAfter is the Retry-After of every answer given because the
	// store is down: short, since the server recovers on its own.
	storeRetryAfter = 5 * time.Second
)

// storeProblemDetail is what ACME clients read during a store outage.
const storeProblemDetail = "the CA's store is unavailable; retry later"

// readinessChecker is what the degraded-mode middleware needs from the
// readiness cache; tests fake it.
type readinessChecker interface {
	// Check reports whether the store answers, probing it at most once per
	// TTL.
	Check(ctx context.Context) error
	// Recheck is Check that does not trust a cached success: a request
	// that just failed with a 5xx may be the first to meet an outage the
	// last probe (up to a TTL ago) did not see. Probes stay single-flight.
	Recheck(ctx context.Context) error
	// LastFailure is the error of a probe finished within the TTL, or nil
	// (store up, or not probed recently): it never probes.
	LastFailure() error
	// FailedSince reports whether the store's driver saw its connection
	// fail or break at or after t, whatever a probe says now.
	FailedSince(t time.Time) bool
}

// readinessConfig configures a readiness cache.
type readinessConfig struct {
	// Probe checks the store (stepca.CA.Ready).
	Probe func(ctx context.Context) error
	// FailedSince is the driver's own account of connection failures
	// (stepca.CA.StoreFailedSince); nil means it has none.
	FailedSince func(time.Time) bool
	// Now is the clock of the TTL; nil means time.Now.
	Now func() time.Time
	// TTL and Wait default to readinessTTL and readinessWait.
	TTL, Wait time.Duration
	// Logger receives one line when the store goes down and one when it
	// comes back; nil discards.
	Logger *slog.Logger
}

// readiness caches the store's health. Probes are single-flight: callers
// arriving while one runs wait for it (up to Wait) instead of starting
// another, so a hung database costs one goroutine, not one per request.
type readiness struct {
	probe       func(ctx context.Context) error
	failedSince func(time.Time) bool
	now         func() time.Time
	ttl         time.Duration
	wait        time.Duration
	log         *slog.Logger

	mu       sync.Mutex
	checked  bool
	at       time.Time     // when err was recorded
	err      error         // last result
	inflight chan struct{} // closed when the running probe finishes; nil when none runs
	started  uint64        // probes started; the running one is number started
}

func newReadiness(cfg readinessConfig) *readiness {
	r := &readiness{probe: cfg.Probe, failedSince: cfg.FailedSince, now: cfg.Now, ttl: cfg.TTL, wait: cfg.Wait, log: cfg.Logger}
	if r.now == nil {
		r.now = time.Now
	}
	if r.ttl <= 0 {
		r.ttl = readinessTTL
	}
	if r.wait <= 0 {
		r.wait = readinessWait
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	return r
}

// fresh reports whether the cached result is within the TTL; r.mu held.
func (r *readiness) fresh() bool {
	if !r.checked {
		return false
	}
	age := r.now().Sub(r.at)
	return age >= 0 && age < r.ttl
}

func (r *readiness) LastFailure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fresh() {
		return r.err
	}
	return nil
}

func (r *readiness) Check(ctx context.Context) error { return r.check(ctx, true) }

func (r *readiness) FailedSince(t time.Time) bool { return r.failedSince != nil && r.failedSince(t) }

func (r *readiness) Recheck(ctx context.Context) error { return r.check(ctx, false) }

// check answers from the cache (a failure always, a success when
// trustSuccess) or joins or starts a probe. Without trustSuccess (Recheck)
// only a probe that started after the call counts as a success: one
// already running may have found the store up just before the failure the
// caller is asking about (PostgreSQL shutting down under load), so after
// it succeeds the caller joins or starts a newer one. The whole wait is
// bounded by Wait.
func (r *readiness) check(ctx context.Context, trustSuccess bool) error {
	t := time.NewTimer(r.wait)
	defer t.Stop()
	r.mu.Lock()
	var minSeq uint64
	if !trustSuccess {
		minSeq = r.started + 1
	}
	for {
		if r.fresh() && (trustSuccess || r.err != nil) {
			err := r.err
			r.mu.Unlock()
			return err
		}
		done := r.inflight
		if done == nil {
			done = make(chan struct{})
			r.inflight = done
			r.started++
			// The probe outlives a caller that gives up: its result
			// serves the next callers. Cancelling it with the first
			// caller's request would record "context canceled" as a store
			// outage.
			go r.run(context.WithoutCancel(ctx), done)
		}
		seq := r.started
		r.mu.Unlock()

		select {
		case <-done:
		case <-t.C:
			err := fmt.Errorf("store: no answer within %s", r.wait)
			r.record(err)
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
		r.mu.Lock()
		if r.err != nil || seq >= minSeq {
			err := r.err
			r.mu.Unlock()
			return err
		}
	}
}

// run probes once and records the result.
func (r *readiness) run(ctx context.Context, done chan struct{}) {
	err := r.probe(ctx)
	r.record(err)
	r.mu.Lock()
	r.inflight = nil
	r.mu.Unlock()
	close(done)
}

// record stores a result and logs transitions only, so an outage is two
// lines in the log rather than one per request.
func (r *readiness) record(err error) {
	r.mu.Lock()
	wasDown := r.checked && r.err != nil
	r.checked, r.at, r.err = true, r.now(), err
	r.mu.Unlock()
	switch {
	case err != nil && !wasDown:
		r.log.Error("store unavailable: ACME answers 503 until it is back", "err", err)
	case err == nil && wasDown:
		r.log.Info("store available again")
	}
}

// degraded wraps the ACME handler: while the store is known to be down it
// answers 503 at once; otherwise it lets the request through and, when the
// handler answers 5xx, asks readiness whether the store is the cause and if
// so replaces the answer with a 503 problem. A 5xx with the store up (a
// real bug) passes through untouched, as does everything below 500.
func degraded(ready readinessChecker, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ready.LastFailure() != nil {
			writeStoreUnavailable(w, r)
			return
		}
		dw := &degradedWriter{ResponseWriter: w, r: r, ready: ready, start: time.Now()}
		next.ServeHTTP(dw, r)
	})
}

// degradedWriter decides at WriteHeader time whether the inner answer is
// passed on or replaced; a replaced answer's body is swallowed.
type degradedWriter struct {
	http.ResponseWriter
	r       *http.Request
	ready   readinessChecker
	start   time.Time // when the request came in
	decided bool
	replace bool
}

func (w *degradedWriter) WriteHeader(code int) {
	if w.decided {
		if !w.replace {
			w.ResponseWriter.WriteHeader(code) // let net/http report the superfluous call
		}
		return
	}
	// 1xx answers are informational and followed by the real one.
	if code >= 100 && code < 200 {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	w.decided = true
	// Two signals, either enough: the driver saw the connection fail
	// while this request ran, or a probe started now fails.
	if code >= 500 && (w.ready.FailedSince(w.start) || w.ready.Recheck(w.r.Context()) != nil) {
		w.replace = true
		writeStoreUnavailable(w.ResponseWriter, w.r)
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *degradedWriter) Write(b []byte) (int, error) {
	if !w.decided {
		w.WriteHeader(http.StatusOK)
	}
	if w.replace {
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}

// Flush passes through only answers that are not being replaced.
func (w *degradedWriter) Flush() {
	if w.replace {
		return
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *degradedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// storeProblem is the RFC 8555 section 6.7 problem of a store outage.
type storeProblem struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
	Status int    `json:"status"`
}

// writeStoreUnavailable answers 503 with a serverInternal problem and
// Retry-After (RFC 8555 section 6.6 lets a client wait before retrying).
// Headers the inner handler set for its own answer are dropped: a fresh
// Replay-Nonce cannot be minted without the store, and one minted before
// the failure would point nowhere. A HEAD answer has no body.
func writeStoreUnavailable(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	for _, k := range []string{"Replay-Nonce", "Location", "Content-Length", "Content-Encoding", "Etag", "Last-Modified"} {
		h.Del(k)
	}
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "no-store")
	setRetryAfter(h)
	w.WriteHeader(http.StatusServiceUnavailable)
	if r.Method == http.MethodHead {
		return
	}
	_ = json.NewEncoder(w).Encode(storeProblem{
		Type:   "urn:ietf:params:acme:error:serverInternal",
		Detail: storeProblemDetail,
		Status: http.StatusServiceUnavailable,
	})
}

func setRetryAfter(h http.Header) {
	h.Set("Retry-After", strconv.Itoa(int(storeRetryAfter/time.Second)))
}

// readyHandler is GET /health/ready: 200 while the store answers, 503 with
// Retry-After otherwise. The reason names the failing dependency but not
// the driver's message, which carries database host and user names and is
// logged instead (readiness.record).
func readyHandler(ready readinessChecker) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if err := ready.Check(r.Context()); err != nil {
			reason := "store: unavailable"
			if errors.Is(err, context.Canceled) {
				reason = "request cancelled"
			}
			setRetryAfter(w.Header())
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]string{"status": "unavailable", "reason": reason})
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"status": "ready"})
	}
}

// liveHandler is GET /health and /health/live: the process serves HTTP.
// It never looks at the store, so an orchestrator does not restart a CA
// that is only waiting for its database.
func liveHandler(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"status": "ok", "version": version.Get().Short()})
}
