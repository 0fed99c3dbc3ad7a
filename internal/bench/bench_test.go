package bench

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/acme"
)

func msList(v ...int) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, x := range v {
		out[i] = time.Duration(x) * time.Millisecond
	}
	return out
}

func TestBenchPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, tc := range []struct {
		s    []time.Duration
		p    float64
		want time.Duration
	}{
		{nil, 50, 0},
		{msList(7), 50, 7 * time.Millisecond},
		{msList(7), 99, 7 * time.Millisecond},
		{hundred, 50, 50 * time.Millisecond},
		{hundred, 90, 90 * time.Millisecond},
		{hundred, 99, 99 * time.Millisecond},
		{hundred, 100, 100 * time.Millisecond},
		{hundred, 0, 1 * time.Millisecond},
		{hundred, 99.5, 100 * time.Millisecond},
		{msList(1, 2, 3, 4), 50, 2 * time.Millisecond},    // rank ceil(2)=2
		{msList(1, 2, 3, 4), 51, 3 * time.Millisecond},    // rank ceil(2.04)=3
		{msList(1, 2, 3, 4, 5), 50, 3 * time.Millisecond}, // rank ceil(2.5)=3
	} {
		if got := Percentile(tc.s, tc.p); got != tc.want {
			t.Errorf("Percentile(%v, %v) = %v, want %v", tc.s, tc.p, got, tc.want)
		}
	}
}

func TestBenchSummariseDoesNotReorderInput(t *testing.T) {
	in := msList(30, 10, 20, 40)
	got := Summarise(in)
	want := Latency{P50: 20 * time.Millisecond, P90: 40 * time.Millisecond, P99: 40 * time.Millisecond, Max: 40 * time.Millisecond}
	if got != want {
		t.Errorf("Summarise = %+v, want %+v", got, want)
	}
	if in[0] != 30*time.Millisecond {
		t.Errorf("input reordered: %v", in)
	}
	if (Summarise(nil) != Latency{}) {
		t.Error("Summarise(nil) not zero")
	}
}

func TestBenchRateAndPerOp(t *testing.T) {
	if got := Rate(200, 4*time.Second); got != 50 {
		t.Errorf("Rate = %v, want 50", got)
	}
	if got := Rate(5, 0); got != 0 {
		t.Errorf("Rate over 0s = %v, want 0", got)
	}
	if got := PerOp(300*time.Millisecond, 100); got != 3 {
		t.Errorf("PerOp = %v, want 3", got)
	}
	if got := PerOp(time.Second, 0); got != 0 {
		t.Errorf("PerOp of 0 ops = %v, want 0", got)
	}
}

func TestBenchParseStatCPU(t *testing.T) {
	// A command name with spaces and a ')' must not shift the fields:
	// utime 250 + stime 50 ticks = 3s.
	line := "1234 (evil) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 555 1000 200\n"
	got, err := parseStatCPU([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if got != 3*time.Second {
		t.Errorf("cpu = %v, want 3s", got)
	}
	for _, bad := range []string{"", "1234 no-parens S 1", "1 (x) S 1 2", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 x 5"} {
		if _, err := parseStatCPU([]byte(bad)); err == nil {
			t.Errorf("parseStatCPU(%q): no error", bad)
		}
	}
}

func TestBenchParseStatusKB(t *testing.T) {
	status := "Name:\tx\nVmPeak:\t  2000 kB\nVmHWM:\t    1536 kB\nVmRSS:\t 1000 kB\n"
	got, err := parseStatusKB([]byte(status), "VmHWM")
	if err != nil || got != 1536*1024 {
		t.Errorf("VmHWM = %d, %v; want %d", got, err, 1536*1024)
	}
	if _, err := parseStatusKB([]byte(status), "VmSwap"); err == nil {
		t.Error("missing key: no error")
	}
	if _, err := parseStatusKB([]byte("VmHWM:\t12 pages\n"), "VmHWM"); err == nil {
		t.Error("bad unit: no error")
	}
}

// burn uses about d of CPU time (not wall time: on a busy machine the
// test may get a fraction of a core), bounded by 10s of wall time, so that
// the process's CPU counters move.
func burn(d time.Duration) {
	b := []byte("x")
	start, _ := SelfCPU()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
		for range 1000 {
			s := sha256.Sum256(b)
			b = s[:]
		}
		if now, err := SelfCPU(); err != nil || now-start >= d {
			return
		}
	}
}

func TestBenchProcReadersOnSelf(t *testing.T) {
	pid := os.Getpid()
	cpu0, err := ProcCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	self0, err := SelfCPU()
	if err != nil {
		t.Fatal(err)
	}
	burn(150 * time.Millisecond)
	cpu1, err := ProcCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	self1, err := SelfCPU()
	if err != nil {
		t.Fatal(err)
	}
	// /proc counts in 10 ms ticks; allow for that and for a busy machine
	// that gave the test less than the wall time it spent.
	if d := cpu1 - cpu0; d < 20*time.Millisecond || d > 10*time.Second {
		t.Errorf("/proc cpu moved by %v over a 150ms burn", d)
	}
	if d := self1 - self0; d < 20*time.Millisecond || d > 10*time.Second {
		t.Errorf("getrusage cpu moved by %v over a 150ms burn", d)
	}
	rss, err := PeakRSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	if rss < 1<<20 || rss > 1<<40 {
		t.Errorf("peak RSS %d bytes is not plausible", rss)
	}
	if _, err := ProcCPU(-1); err == nil {
		t.Error("ProcCPU(-1): no error")
	}
}

func TestBenchPathSize(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, n := range map[string]int{"a": 100, "sub/b": 23} {
		if err := os.WriteFile(filepath.Join(dir, name), make([]byte, n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := PathSize(dir); err != nil || got != 123 {
		t.Errorf("PathSize(dir) = %d, %v; want 123", got, err)
	}
	if got, err := PathSize(filepath.Join(dir, "a")); err != nil || got != 100 {
		t.Errorf("PathSize(file) = %d, %v; want 100", got, err)
	}
	if _, err := PathSize(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing path: no error")
	}
}

func TestBenchClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("wrapped: %w", &acme.ProblemDetails{Type: "urn:ietf:params:acme:error:rateLimited"}), "rateLimited"},
		{&acme.NonceError{ProblemDetails: &acme.ProblemDetails{Type: "urn:ietf:params:acme:error:badNonce"}}, "badNonce"},
		{&acme.ProblemDetails{HTTPStatus: 502}, "http-502"},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), "timeout"},
		{&url.Error{Op: "Post", URL: "https://x", Err: errors.New("connection refused")}, "transport"},
		{&url.Error{Op: "Post", URL: "https://x", Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}, "connection"},
		{fmt.Errorf("post: %w", &url.Error{Op: "Post", URL: "https://x", Err: io.ErrUnexpectedEOF}), "connection"},
		{errors.New("odd"), "other"},
	} {
		if got := Classify(tc.err); got != tc.want {
			t.Errorf("Classify(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestBenchConfigDefaultsAndBounds(t *testing.T) {
	c := Config{URL: "https://x", Mode: ModeRenew, N: 5, Timeout: time.Second}
	if err := c.defaults(); err != nil {
		t.Fatal(err)
	}
	if c.Concurrency != 16 || c.Accounts != 5 || c.Provisioner != "workers" || c.Window != 10*time.Second {
		t.Errorf("defaults: %+v", c)
	}
	if len(c.WorkerPrefix) != len("bench-000000-") {
		t.Errorf("prefix %q", c.WorkerPrefix)
	}
	for _, bad := range []Config{
		{Mode: ModeStorm, N: 1, Timeout: time.Second},                 // no URL
		{URL: "https://x", Mode: ModeStorm, Timeout: time.Second},     // no N
		{URL: "https://x", Mode: ModeStorm, N: 1},                     // no timeout
		{URL: "https://x", Mode: "flood", N: 1, Timeout: time.Second}, // mode
		{URL: "https://x", Mode: ModeStorm, N: 1, Timeout: time.Second, KillPID: -1},
		{URL: "https://x", Mode: ModeStorm, N: 1, Timeout: time.Second, KillPID: 1, KillAfter: -time.Second},
	} {
		if err := bad.defaults(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}
