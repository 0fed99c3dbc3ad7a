package worker

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// TestServerIdleTimeout: the worker's server closes a kept-alive connection
// nobody uses after IdleTimeout, and a zero IdleTimeout gets the default.
func TestServerIdleTimeout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		idle     time.Duration
		wantIdle time.Duration
		dial     bool // serve and check that an idle connection is closed
	}{
		{name: "default", idle: 0, wantIdle: DefaultServerIdleTimeout},
		{name: "configured", idle: 200 * time.Millisecond, wantIdle: 200 * time.Millisecond, dial: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := &Worker{cfg: Config{IdleTimeout: tc.idle}, log: slog.New(slog.DiscardHandler)}
			hs := w.newHTTPServer(http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
				_, _ = io.WriteString(rw, "hello")
			}))
			if hs.IdleTimeout != tc.wantIdle {
				t.Fatalf("IdleTimeout %s, want %s", hs.IdleTimeout, tc.wantIdle)
			}
			if hs.ReadHeaderTimeout <= 0 || hs.ReadTimeout <= 0 || hs.WriteTimeout <= 0 {
				t.Errorf("unbounded timeouts: header %s read %s write %s", hs.ReadHeaderTimeout, hs.ReadTimeout, hs.WriteTimeout)
			}
			if tc.dial {
				checkIdleClosed(t, hs, tc.idle)
			}
		})
	}
}

// checkIdleClosed serves hs on loopback (plain TCP: idle handling does not
// depend on TLS), makes one kept-alive request on a raw connection, then
// waits, bounded, for the server to close it.
func checkIdleClosed(t *testing.T, hs *http.Server, idle time.Duration) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- hs.Serve(ln) }()
	t.Cleanup(func() {
		_ = hs.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})

	conn, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: worker\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil || string(body) != "hello" || resp.Close {
		t.Fatalf("kept-alive response: %q close=%v err=%v", body, resp.Close, err)
	}

	idleSince := time.Now()
	n, err := br.Read(make([]byte, 1))
	waited := time.Since(idleSince)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("connection still open after %s idle (IdleTimeout %s)", waited, idle)
	case n != 0 || !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET):
		t.Fatalf("idle connection: read %d bytes, err %v", n, err)
	case waited < idle/2:
		t.Errorf("closed after %s, before IdleTimeout %s", waited, idle)
	}
}
