package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults of the retry on another replica (Config.MaxRetries,
// Config.RetryWithin) and the pause once every replica has failed a request.
const (
	defaultMaxRetries  = 3
	defaultRetryWithin = 10 * time.Second
	retryPause         = 100 * time.Millisecond
)

// replicaTransport sends every request to the next replica of one CA,
// round-robin, whatever host the request names: replicas of crank-ca on one
// PostgreSQL database answer for each other, and alternating on every
// request (not per client) is the hardest case for state they share, such
// as nonces and orders.
//
// Only the address dialled changes: the Host header, and so the URL the
// server checks the JWS "url" against and builds its links from, stays the
// request's own, so links in responses keep naming the first replica and
// the next request is rewritten again. The base transport keys its
// keep-alive pool by the dialled host, so each replica keeps its own
// connections.
//
// A request that fails with a connection error (refused, reset, closed
// before the response) is sent again to the replica after the one that
// failed, at most maxRetries times and not after retryWithin from its first
// attempt, with a pause of retryPause once every replica has been tried. The
// body is replayed with GetBody; a request without one is not retried. A
// retried POST may have been processed by the replica that failed; the
// replay then meets a spent nonce (badNonce), which lego retries itself.
type replicaTransport struct {
	replicas    []*url.URL
	base        http.RoundTripper
	maxRetries  int
	retryWithin time.Duration

	next  atomic.Uint64
	stats []replicaCounters // one per replica
	// retries counts attempts after the first; exhausted counts requests
	// that still failed with a connection error when the retries ran out.
	retries, exhausted atomic.Int64
}

type replicaCounters struct {
	requests, connErrors atomic.Int64
}

// newReplicaTransport parses the replicas' base URLs: https or http, a host,
// no path beyond "/" (only the address of a request is rewritten, never its
// path). maxRetries < 0 disables the retry; 0 means the default, as does a
// retryWithin of 0.
func newReplicaTransport(base http.RoundTripper, replicas []string, maxRetries int, retryWithin time.Duration) (*replicaTransport, error) {
	if len(replicas) == 0 {
		return nil, errors.New("bench: no server URL")
	}
	t := &replicaTransport{base: base, maxRetries: maxRetries, retryWithin: retryWithin}
	switch {
	case maxRetries < 0:
		t.maxRetries = 0
	case maxRetries == 0:
		t.maxRetries = defaultMaxRetries
	}
	if retryWithin <= 0 {
		t.retryWithin = defaultRetryWithin
	}
	var errs []error
	for _, s := range replicas {
		u, err := url.Parse(s)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("bench: server URL %q: %w", s, err))
		case u.Scheme != "https" && u.Scheme != "http", u.Host == "":
			errs = append(errs, fmt.Errorf("bench: server URL %q: want https://host:port", s))
		case u.Path != "" && u.Path != "/", u.RawQuery != "":
			errs = append(errs, fmt.Errorf("bench: server URL %q: replicas are rewritten by address only; drop the path", s))
		default:
			t.replicas = append(t.replicas, u)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	t.stats = make([]replicaCounters, len(t.replicas))
	return t, nil
}

func (t *replicaTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	i := int((t.next.Add(1) - 1) % uint64(len(t.replicas)))
	first := time.Now()
	for attempt := 0; ; attempt++ {
		out := req.Clone(req.Context())
		out.URL.Scheme, out.URL.Host = t.replicas[i].Scheme, t.replicas[i].Host
		if out.Host == "" {
			out.Host = req.URL.Host
		}
		if attempt > 0 && req.Body != nil && req.Body != http.NoBody {
			body, err := req.GetBody()
			if err != nil {
				return nil, fmt.Errorf("bench: replay request body: %w", err)
			}
			out.Body = body
		}
		t.stats[i].requests.Add(1)
		resp, err := t.base.RoundTrip(out)
		if err == nil || !IsConnError(err) {
			return resp, err
		}
		t.stats[i].connErrors.Add(1)
		if !t.mayRetry(req, attempt, first) {
			if t.maxRetries > 0 {
				t.exhausted.Add(1)
			}
			return nil, err
		}
		t.retries.Add(1)
		if attempt+1 >= len(t.replicas) {
			// Every replica has failed this request once: give a
			// restarting one a moment instead of spinning.
			tm := time.NewTimer(retryPause)
			select {
			case <-tm.C:
			case <-req.Context().Done():
				tm.Stop()
				return nil, err
			}
		}
		i = (i + 1) % len(t.replicas)
	}
}

// mayRetry reports whether a request that failed with a connection error
// on its attempt-th retry (0 for the first try) may be sent again.
func (t *replicaTransport) mayRetry(req *http.Request, attempt int, first time.Time) bool {
	if attempt >= t.maxRetries || time.Since(first) >= t.retryWithin || req.Context().Err() != nil {
		return false
	}
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

func (t *replicaTransport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// ReplicaStats counts what one server of a run was sent.
type ReplicaStats struct {
	URL string `json:"url"`
	// Requests counts attempts sent to it, retries included.
	Requests int64 `json:"requests"`
	// ConnErrors counts attempts that failed with a connection error.
	ConnErrors int64 `json:"connErrors,omitempty"`
}

func (t *replicaTransport) replicaStats() []ReplicaStats {
	out := make([]ReplicaStats, len(t.replicas))
	for i, u := range t.replicas {
		out[i] = ReplicaStats{URL: u.String(), Requests: t.stats[i].requests.Load(), ConnErrors: t.stats[i].connErrors.Load()}
	}
	return out
}

// IsConnError reports whether err is a failure of the connection to the
// server rather than an answer from it: nothing listening, the connection
// reset or closed before a response. Timeouts are not: the server may be
// working on the request.
func IsConnError(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return true
	}
	for _, target := range []error{
		syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE,
		io.EOF, io.ErrUnexpectedEOF, net.ErrClosed,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// ctxTransport ties every request to the run's context: lego's API takes
// no context, and the run's deadline must still cut off requests in flight.
type ctxTransport struct {
	ctx  context.Context
	base http.RoundTripper
}

func (t ctxTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.base.RoundTrip(req.WithContext(t.ctx))
}

func (t ctxTransport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}
