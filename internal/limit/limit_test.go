package limit

import (
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestRatesBurstThenRefill(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	r := NewRates(clk.Now)
	for i := range 6 {
		if ok, _ := r.Allow("a", 6); !ok {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	ok, wait := r.Allow("a", 6)
	if ok || wait <= 0 || wait > 10*time.Second {
		t.Fatalf("7th request: ok=%v wait=%v, want refused with a wait of at most 10s", ok, wait)
	}
	if ok, _ := r.Allow("b", 6); !ok {
		t.Fatal("another key shares the bucket")
	}
	clk.Advance(wait)
	if ok, _ := r.Allow("a", 6); !ok {
		t.Fatal("refused after waiting the advertised time")
	}
	if ok, _ := r.Allow("a", 6); ok {
		t.Fatal("one refill gave two tokens")
	}
}

func TestRatesEvictsIdle(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	r := NewRates(clk.Now)
	r.Allow("busy", 1)
	clk.Advance(time.Second)
	r.mu.Lock()
	r.evictLocked(clk.Now(), 1.0/60)
	n := len(r.buckets)
	r.mu.Unlock()
	if n != 1 {
		t.Fatalf("a non-idle bucket was evicted (%d left)", n)
	}
	clk.Advance(2 * time.Minute)
	r.mu.Lock()
	r.evictLocked(clk.Now(), 1.0/60)
	n = len(r.buckets)
	r.mu.Unlock()
	if n != 0 {
		t.Fatalf("an idle bucket was kept (%d left)", n)
	}
}

func TestClientKey(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"127.0.0.1:5555", "127.0.0.1"},
		{"[::ffff:10.0.0.1]:1", "10.0.0.1"},
		{"[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:ffff::1]:443", "2001:db8:1:2::/64"},
		{"[fe80::1%eth0]:1", "fe80::/64"},
		{"not an address", "not an address"},
	} {
		if got := ClientKey(tc.in); got != tc.want {
			t.Errorf("ClientKey(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPending(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	p := NewPending(clk.Now)
	p.Add("acc", "o1", clk.Now().Add(time.Hour))
	p.Add("acc", "o2", clk.Now().Add(2*time.Hour))
	p.Add("other", "o3", clk.Now().Add(time.Hour))
	if n := p.Count("acc"); n != 2 {
		t.Fatalf("count = %d, want 2", n)
	}
	p.Done("acc", "o2")
	if n := p.Count("acc"); n != 1 {
		t.Fatalf("after Done: %d, want 1", n)
	}
	clk.Advance(time.Hour)
	if n := p.Count("acc"); n != 0 {
		t.Fatalf("expired order still counted: %d", n)
	}
	if len(p.byID) != 1 {
		t.Fatalf("empty accounts are kept: %v", p.byID)
	}
}
