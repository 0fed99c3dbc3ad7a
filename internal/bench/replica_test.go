package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// replicaServer is an httptest server on loopback that records what it is
// sent.
type replicaServer struct {
	srv *httptest.Server

	mu      sync.Mutex
	hosts   []string // Host headers
	targets []string // path?query
	bodies  []string
	remotes map[string]bool // client addresses: one per kept-alive connection
}

func newReplicaServer(t *testing.T, h http.HandlerFunc) *replicaServer {
	t.Helper()
	s := &replicaServer{remotes: map[string]bool{}}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.hosts = append(s.hosts, r.Host)
		s.targets = append(s.targets, r.URL.RequestURI())
		s.bodies = append(s.bodies, string(b))
		s.remotes[r.RemoteAddr] = true
		s.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *replicaServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.bodies)
}

// deadURL is the URL of a loopback port nothing listens on any more.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return "http://" + addr
}

func newTestTransport(t *testing.T, urls []string, maxRetries int, within time.Duration) *replicaTransport {
	t.Helper()
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	rt, err := newReplicaTransport(base, urls, maxRetries, within)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// post sends a POST with a replayable body to target, as lego does.
func post(ctx context.Context, rt http.RoundTripper, target, body string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

func TestBenchReplicaTransportRoundRobin(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		replicas int
		requests int
	}{
		{"one", 1, 6},
		{"two", 2, 12},
		{"three", 3, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			servers := make([]*replicaServer, tc.replicas)
			urls := make([]string, tc.replicas)
			for i := range servers {
				servers[i] = newReplicaServer(t, nil)
				urls[i] = servers[i].srv.URL
			}
			rt := newTestTransport(t, urls, 0, 0)
			// Every request names the first replica, as ACME URLs in
			// responses do; the transport still alternates.
			first, _ := url.Parse(urls[0])
			for i := range tc.requests {
				resp, err := post(t.Context(), rt, urls[0]+"/acme/p/new-order?x=1", fmt.Sprint("body-", i))
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("request %d: HTTP %d", i, resp.StatusCode)
				}
			}
			for i, s := range servers {
				s.mu.Lock()
				if got, want := len(s.bodies), tc.requests/tc.replicas; got != want {
					t.Errorf("replica %d: %d requests, want %d", i, got, want)
				}
				for j, b := range s.bodies {
					// Request k went to replica k mod n.
					if want := fmt.Sprint("body-", j*tc.replicas+i); b != want {
						t.Errorf("replica %d request %d: body %q, want %q", i, j, b, want)
					}
					if s.hosts[j] != first.Host {
						t.Errorf("replica %d: Host %q, want the request's own %q", i, s.hosts[j], first.Host)
					}
					if s.targets[j] != "/acme/p/new-order?x=1" {
						t.Errorf("replica %d: target %q", i, s.targets[j])
					}
				}
				// Sequential requests: one kept-alive connection per replica.
				if len(s.remotes) != 1 {
					t.Errorf("replica %d: %d connections, want 1 kept alive", i, len(s.remotes))
				}
				s.mu.Unlock()
			}
			stats := rt.replicaStats()
			for i, st := range stats {
				if st.Requests != int64(tc.requests/tc.replicas) || st.ConnErrors != 0 {
					t.Errorf("stats[%d] = %+v", i, st)
				}
			}
			if rt.retries.Load() != 0 {
				t.Errorf("retries %d, want 0", rt.retries.Load())
			}
		})
	}
}

func TestBenchReplicaTransportRetry(t *testing.T) {
	t.Parallel()
	// hangUp closes the connection after reading the request, as a
	// server killed mid-request does.
	hangUp := func(w http.ResponseWriter, _ *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}
	fail500 := func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "no", http.StatusInternalServerError) }
	type server struct {
		dead    bool
		handler http.HandlerFunc
	}
	live, dead := server{}, server{dead: true}
	for _, tc := range []struct {
		name       string
		servers    []server
		maxRetries int
		within     time.Duration
		requests   int
		noGetBody  bool

		wantErrs      int   // requests that fail
		wantStatus    int   // of the others
		wantRetries   int64 // attempts after the first
		wantExhausted int64
		wantServed    []int // bodies each server received, in full
	}{
		{
			name: "dead replica: every request lands on the live one", servers: []server{live, dead},
			requests: 6, wantStatus: 200, wantRetries: 3, wantServed: []int{6, 0},
		},
		{
			name: "dead first replica", servers: []server{dead, live, live},
			requests: 6, wantStatus: 200, wantRetries: 2, wantServed: []int{0, 4, 2},
		},
		{
			name: "all dead: bounded by the count", servers: []server{dead, dead},
			requests: 1, wantErrs: 1, wantRetries: 3, wantExhausted: 1, wantServed: []int{0, 0},
		},
		{
			name: "hang-up mid-request: body replayed on the next", servers: []server{{handler: hangUp}, live},
			requests: 4, wantStatus: 200, wantRetries: 2, wantServed: []int{2, 4},
		},
		{
			name: "retries disabled", servers: []server{dead, live}, maxRetries: -1,
			requests: 2, wantErrs: 1, wantStatus: 200, wantServed: []int{0, 1},
		},
		{
			name: "bounded by the time", servers: []server{dead, live}, within: time.Nanosecond,
			requests: 2, wantErrs: 1, wantStatus: 200, wantExhausted: 1, wantServed: []int{0, 1},
		},
		{
			name: "body that cannot be replayed", servers: []server{dead, live}, noGetBody: true,
			requests: 2, wantErrs: 1, wantStatus: 200, wantExhausted: 1, wantServed: []int{0, 1},
		},
		{
			name: "an answer is not retried", servers: []server{{handler: fail500}, live},
			requests: 2, wantStatus: 0, wantServed: []int{1, 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			var urls []string
			recs := make([]*replicaServer, len(tc.servers))
			for i, s := range tc.servers {
				if s.dead {
					urls = append(urls, deadURL(t))
					continue
				}
				recs[i] = newReplicaServer(t, s.handler)
				urls = append(urls, recs[i].srv.URL)
			}
			rt := newTestTransport(t, urls, tc.maxRetries, tc.within)
			errs := 0
			for i := range tc.requests {
				body := fmt.Sprint("jws-", i)
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, urls[0]+"/x", strings.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				if tc.noGetBody {
					req.GetBody = nil
				}
				resp, err := rt.RoundTrip(req)
				if err != nil {
					if !IsConnError(err) {
						t.Errorf("request %d: %v is not a connection error", i, err)
					}
					errs++
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if tc.wantStatus != 0 && resp.StatusCode != tc.wantStatus {
					t.Errorf("request %d: HTTP %d, want %d", i, resp.StatusCode, tc.wantStatus)
				}
			}
			if errs != tc.wantErrs {
				t.Errorf("%d requests failed, want %d", errs, tc.wantErrs)
			}
			if got := rt.retries.Load(); got != tc.wantRetries {
				t.Errorf("retries %d, want %d", got, tc.wantRetries)
			}
			if got := rt.exhausted.Load(); got != tc.wantExhausted {
				t.Errorf("exhausted %d, want %d", got, tc.wantExhausted)
			}
			for i, rec := range recs {
				if rec == nil {
					continue
				}
				if got := rec.count(); got != tc.wantServed[i] {
					t.Errorf("server %d received %d requests, want %d", i, got, tc.wantServed[i])
				}
				rec.mu.Lock()
				for _, b := range rec.bodies {
					if !strings.HasPrefix(b, "jws-") {
						t.Errorf("server %d: body %q not replayed whole", i, b)
					}
				}
				rec.mu.Unlock()
			}
		})
	}
}

func TestBenchReplicaTransportStopsWithContext(t *testing.T) {
	t.Parallel()
	// Two dead replicas and many retries allowed: the pause after every
	// replica failed must end with the request's context.
	rt := newTestTransport(t, []string{deadURL(t), deadURL(t)}, 1000, time.Hour)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if _, err := post(ctx, rt, rt.replicas[0].String()+"/x", "b"); err == nil {
		t.Fatal("no error from dead replicas")
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("took %v after a 300ms deadline", d)
	}
	if n := rt.retries.Load(); n < 1 || n > 20 {
		t.Errorf("%d retries in 300ms with 100ms pauses", n)
	}
}

func TestBenchNewReplicaTransportRejects(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		urls []string
	}{
		{"none", nil},
		{"no scheme", []string{"127.0.0.1:9090"}},
		{"ftp", []string{"ftp://127.0.0.1:9090"}},
		{"a path", []string{"https://127.0.0.1:9090", "https://127.0.0.1:9091/acme"}},
		{"a query", []string{"https://127.0.0.1:9091/?x=1"}},
		{"unparsable", []string{"https://[::1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := newReplicaTransport(http.DefaultTransport, tc.urls, 0, 0); err == nil {
				t.Errorf("%q: no error", tc.urls)
			}
		})
	}
	rt, err := newReplicaTransport(http.DefaultTransport, []string{"https://127.0.0.1:9090/", "https://127.0.0.1:9091"}, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if rt.maxRetries != defaultMaxRetries || rt.retryWithin != defaultRetryWithin {
		t.Errorf("defaults: %d retries within %v", rt.maxRetries, rt.retryWithin)
	}
}

func TestBenchIsConnError(t *testing.T) {
	t.Parallel()
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("no route")}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{&url.Error{Op: "Post", URL: "https://x", Err: dial}, true},
		{fmt.Errorf("post: %w", syscall.ECONNREFUSED), true},
		{&net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, true},
		{&net.OpError{Op: "write", Net: "tcp", Err: syscall.EPIPE}, true},
		{fmt.Errorf("broken: %w", io.EOF), true},
		{io.ErrUnexpectedEOF, true},
		{&url.Error{Op: "Post", URL: "https://x", Err: context.DeadlineExceeded}, false},
		{&net.OpError{Op: "dial", Net: "tcp", Err: timeoutErr{}}, false},
		{errors.New("x509: certificate signed by unknown authority"), false},
	} {
		if got := IsConnError(tc.err); got != tc.want {
			t.Errorf("IsConnError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }
