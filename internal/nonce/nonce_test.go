package nonce_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/internal/nonce"
)

// t0 is the fake clocks' start.
var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

// fakeClock is a settable clock, safe for concurrent use.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock(at time.Time) *fakeClock { return &fakeClock{now: at} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = at
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// testKey is a 32-byte key filled with b.
func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

// newSource returns a Source with a fake clock at t0 and its own Memory
// unless cfg sets them.
func newSource(t testing.TB, cfg nonce.Config) (*nonce.Source, *fakeClock) {
	t.Helper()
	clock := newClock(t0)
	if cfg.Key == nil {
		cfg.Key = testKey(7)
	}
	if cfg.Spent == nil {
		cfg.Spent = nonce.NewMemory()
	}
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	s, err := nonce.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, clock
}

func issue(t testing.TB, s *nonce.Source) string {
	t.Helper()
	n, err := s.New()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestNewConfig(t *testing.T) {
	t.Parallel()
	mem := nonce.NewMemory()
	for _, tc := range []struct {
		name    string
		cfg     nonce.Config
		wantErr bool
		maxAge  time.Duration
	}{
		{name: "nil key", cfg: nonce.Config{Spent: mem}, wantErr: true},
		{name: "31-byte key", cfg: nonce.Config{Key: make([]byte, 31), Spent: mem}, wantErr: true},
		{name: "no replay set", cfg: nonce.Config{Key: testKey(1)}, wantErr: true},
		{name: "defaults", cfg: nonce.Config{Key: testKey(1), Spent: mem}, maxAge: nonce.DefaultMaxAge},
		{name: "negative max age", cfg: nonce.Config{Key: testKey(1), Spent: mem, MaxAge: -time.Second}, maxAge: nonce.DefaultMaxAge},
		{name: "max age", cfg: nonce.Config{Key: testKey(1), Spent: mem, MaxAge: time.Minute}, maxAge: time.Minute},
		{name: "64-byte key", cfg: nonce.Config{Key: make([]byte, 64), Spent: mem}, maxAge: nonce.DefaultMaxAge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, err := nonce.New(tc.cfg)
			if tc.wantErr {
				if err == nil {
					t.Fatal("New accepted the config")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.MaxAge() != tc.maxAge {
				t.Errorf("MaxAge = %v, want %v", s.MaxAge(), tc.maxAge)
			}
			// A nil clock defaults to time.Now: a fresh nonce is accepted.
			if err := s.Consume(t.Context(), issue(t, s)); err != nil {
				t.Errorf("Consume of a fresh nonce: %v", err)
			}
		})
	}
}

func TestNonceForm(t *testing.T) {
	t.Parallel()
	s, _ := newSource(t, nonce.Config{})
	seen := map[string]bool{}
	for range 100 {
		n := issue(t, s)
		if len(n) != 48 {
			t.Fatalf("nonce %q has length %d, want 48", n, len(n))
		}
		if strings.Trim(n, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			t.Fatalf("nonce %q is not base64url (RFC 8555 section 6.5.1)", n)
		}
		if seen[n] {
			t.Fatalf("nonce %q issued twice", n)
		}
		seen[n] = true
		id, err := s.Parse(n)
		if err != nil {
			t.Fatal(err)
		}
		if !id.IssuedAt().Equal(t0) {
			t.Errorf("IssuedAt = %v, want %v", id.IssuedAt(), t0)
		}
	}
}

func TestConsumeOnce(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, _ := newSource(t, nonce.Config{})
	n := issue(t, s)
	// Parse checks without spending.
	for range 2 {
		if _, err := s.Parse(n); err != nil {
			t.Fatalf("Parse: %v", err)
		}
	}
	if err := s.Consume(ctx, n); err != nil {
		t.Fatalf("first Consume: %v", err)
	}
	for range 3 {
		if err := s.Consume(ctx, n); !errors.Is(err, nonce.ErrSpent) {
			t.Fatalf("replayed Consume = %v, want ErrSpent", err)
		}
	}
	// Other nonces are unaffected.
	if err := s.Consume(ctx, issue(t, s)); err != nil {
		t.Errorf("Consume of another nonce: %v", err)
	}
}

// TestReplicasShareReplaySet: two Sources on one key and one replay set
// (replicas on one database) accept each other's nonces once in all.
func TestReplicasShareReplaySet(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	mem := nonce.NewMemory()
	a, _ := newSource(t, nonce.Config{Spent: mem})
	b, _ := newSource(t, nonce.Config{Spent: mem})
	n := issue(t, a)
	if err := b.Consume(ctx, n); err != nil {
		t.Fatalf("Consume at the other replica: %v", err)
	}
	if err := a.Consume(ctx, n); !errors.Is(err, nonce.ErrSpent) {
		t.Errorf("replay at the issuing replica = %v, want ErrSpent", err)
	}
}

// tampered lists forgeries and damaged copies of nonce n (issued by a
// Source keyed with testKey(7)).
func tampered(t *testing.T, n string) map[string]string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	raw, err := base64.RawURLEncoding.DecodeString(n)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{
		"empty":                "",
		"padding =":            n + "=",
		"padding ==":           n + "==",
		"padded to 52":         n + "====",
		"extended by A":        n + "A",
		"extended by 4 chars":  n + "AAAA",
		"extended by a byte":   base64.RawURLEncoding.EncodeToString(append(bytes.Clone(raw), 0)),
		"trailing newline":     n + "\n",
		"trailing CRLF":        n + "\r\n",
		"leading space":        " " + n,
		"newline inside":       n[:24] + "\n" + n[24:],
		"newline for a char":   n[:47] + "\n",
		"hex":                  strings.Repeat("0", 48),
		"upper case":           strings.ToUpper(n),
		"non-ASCII":            n[:46] + "é",
		"NUL":                  n[:47] + "\x00",
		"reversed":             reverse(n),
		"zero ID, zero tag":    base64.RawURLEncoding.EncodeToString(make([]byte, 36)),
		"ID with zero tag":     base64.RawURLEncoding.EncodeToString(append(bytes.Clone(raw[:20]), make([]byte, 16)...)),
		"tag of another ID":    base64.RawURLEncoding.EncodeToString(append(append(bytes.Clone(raw[:8]), make([]byte, 12)...), raw[20:]...)),
		"later time, same tag": base64.RawURLEncoding.EncodeToString(append([]byte{raw[0] ^ 1}, raw[1:]...)),
	}
	if std := base64.StdEncoding.EncodeToString(raw); std != n {
		out["standard alphabet"] = std
	}
	for i := range n {
		out["truncated to "+strconv.Itoa(i)] = n[:i]
		b := []byte(n)
		b[i] ^= 0x01
		out["bit flipped at "+strconv.Itoa(i)] = string(b)
		b = []byte(n)
		b[i] = alphabet[(strings.IndexByte(alphabet, n[i])+1)%64]
		out["char rotated at "+strconv.Itoa(i)] = string(b)
	}
	for i := range raw {
		b := bytes.Clone(raw)
		b[i] ^= 0x80
		out["raw byte flipped at "+strconv.Itoa(i)] = base64.RawURLEncoding.EncodeToString(b)
	}
	return out
}

func reverse(s string) string {
	b := []byte(s)
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return string(b)
}

// TestTamperedNonceIsMalformed: every change to a nonce, and every nonce
// of another key, is refused as malformed and never reaches the replay set.
func TestTamperedNonceIsMalformed(t *testing.T) {
	t.Parallel()
	s, _ := newSource(t, nonce.Config{})
	n := issue(t, s)
	cases := tampered(t, n)
	other, _ := newSource(t, nonce.Config{Key: testKey(8)})
	cases["other key"] = issue(t, other)
	longer, _ := newSource(t, nonce.Config{Key: append(testKey(7), 7)})
	cases["key with an extra byte"] = issue(t, longer)
	for name, bad := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if bad == n {
				t.Fatalf("case %q did not change the nonce", name)
			}
			if _, err := s.Parse(bad); !errors.Is(err, nonce.ErrMalformed) {
				t.Errorf("Parse(%q) = %v, want ErrMalformed", bad, err)
			}
			if err := s.Consume(t.Context(), bad); !errors.Is(err, nonce.ErrMalformed) {
				t.Errorf("Consume(%q) = %v, want ErrMalformed", bad, err)
			}
		})
	}
	t.Cleanup(func() {
		// None of the forgeries spent the original.
		if err := s.Consume(context.Background(), n); err != nil {
			t.Errorf("the original nonce after the forgeries: %v", err)
		}
	})
}

// TestNonceAge checks the age rules: MaxAge after issue, NotBefore, and
// issue times in the future beyond the tolerated clock step.
func TestNonceAge(t *testing.T) {
	t.Parallel()
	const maxAge = 5 * time.Minute
	for _, tc := range []struct {
		name string
		// issuedAt is the issuing replica's clock, relative to t0 (the
		// checking replica's clock before advance).
		issuedAt  time.Duration
		advance   time.Duration
		notBefore time.Time // zero: none
		want      error
	}{
		{name: "fresh"},
		{name: "just before max age", advance: maxAge - time.Nanosecond},
		{name: "at max age", advance: maxAge},
		{name: "past max age", advance: maxAge + time.Nanosecond, want: nonce.ErrExpired},
		{name: "long expired", advance: 24 * time.Hour, want: nonce.ErrExpired},
		{name: "issued at NotBefore", notBefore: t0},
		{name: "issued before NotBefore", issuedAt: -time.Second, notBefore: t0, want: nonce.ErrExpired},
		{name: "issued just before NotBefore", issuedAt: -time.Second, notBefore: t0.Add(-time.Second + time.Nanosecond), want: nonce.ErrExpired},
		{name: "issued after NotBefore", issuedAt: -time.Second, notBefore: t0.Add(-2 * time.Second)},
		{name: "issued 59s ahead", issuedAt: 59 * time.Second},
		{name: "issued 1m ahead", issuedAt: time.Minute},
		{name: "issued 1m1s ahead", issuedAt: time.Minute + time.Second, want: nonce.ErrMalformed},
		{name: "issued an hour ahead", issuedAt: time.Hour, want: nonce.ErrMalformed},
		{name: "issued a year ahead", issuedAt: 365 * 24 * time.Hour, want: nonce.ErrMalformed},
		{name: "clock stepped back", issuedAt: 0, advance: -2 * time.Minute, want: nonce.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			mem := nonce.NewMemory()
			issuer, _ := newSource(t, nonce.Config{MaxAge: maxAge, Spent: mem, Now: func() time.Time { return t0.Add(tc.issuedAt) }})
			checker, clock := newSource(t, nonce.Config{MaxAge: maxAge, Spent: mem, NotBefore: tc.notBefore})
			n := issue(t, issuer)
			clock.Add(tc.advance)
			if _, err := checker.Parse(n); !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Errorf("Parse = %v, want %v", err, tc.want)
			}
			err := checker.Consume(ctx, n)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Errorf("Consume = %v, want %v", err, tc.want)
			}
			if tc.want != nil && mem.Len() != 0 {
				t.Errorf("a refused nonce was recorded: Len = %d", mem.Len())
			}
		})
	}
}

// TestConcurrentConsume: of 50 concurrent uses of one nonce exactly one
// succeeds, the others get ErrSpent.
func TestConcurrentConsume(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		replicas int
	}{
		{name: "one source", replicas: 1},
		{name: "five sources on one replay set", replicas: 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mem := nonce.NewMemory()
			sources := make([]*nonce.Source, tc.replicas)
			for i := range sources {
				sources[i], _ = newSource(t, nonce.Config{Spent: mem})
			}
			for round := range 20 {
				n := issue(t, sources[0])
				start := make(chan struct{})
				errs := make(chan error, 50)
				var wg sync.WaitGroup
				for g := range 50 {
					wg.Go(func() {
						<-start
						errs <- sources[g%tc.replicas].Consume(t.Context(), n)
					})
				}
				close(start)
				wg.Wait()
				close(errs)
				ok := 0
				for err := range errs {
					switch {
					case err == nil:
						ok++
					case !errors.Is(err, nonce.ErrSpent):
						t.Errorf("round %d: Consume = %v, want nil or ErrSpent", round, err)
					}
				}
				if ok != 1 {
					t.Fatalf("round %d: %d of 50 concurrent uses succeeded, want 1", round, ok)
				}
			}
			if mem.Len() != 20 {
				t.Errorf("Len = %d, want 20", mem.Len())
			}
		})
	}
}

// failingSpender is a replay set whose store is down.
type failingSpender struct{ err error }

func (f failingSpender) Spend(context.Context, nonce.ID, time.Time) (bool, error) {
	return false, f.err
}

// recordingSpender records the expiry Consume passes.
type recordingSpender struct {
	mu      sync.Mutex
	expires []time.Time
}

func (r *recordingSpender) Spend(_ context.Context, _ nonce.ID, expires time.Time) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expires = append(r.expires, expires)
	return true, nil
}

// TestReplaySetError: a store error is not mistaken for a replay (nor for
// success), and the expiry Consume passes is issue time plus MaxAge.
func TestReplaySetError(t *testing.T) {
	t.Parallel()
	down := errors.New("database down")
	s, _ := newSource(t, nonce.Config{Spent: failingSpender{err: down}})
	err := s.Consume(t.Context(), issue(t, s))
	if !errors.Is(err, down) || errors.Is(err, nonce.ErrSpent) || errors.Is(err, nonce.ErrMalformed) {
		t.Errorf("Consume with the replay set down = %v, want the store's error", err)
	}

	rec := &recordingSpender{}
	s, clock := newSource(t, nonce.Config{Spent: rec, MaxAge: 3 * time.Minute})
	n := issue(t, s)
	clock.Add(time.Minute)
	if err := s.Consume(t.Context(), n); err != nil {
		t.Fatal(err)
	}
	if len(rec.expires) != 1 || !rec.expires[0].Equal(t0.Add(3*time.Minute)) {
		t.Errorf("Spend expiries = %v, want [%v]", rec.expires, t0.Add(3*time.Minute))
	}
}

// BenchmarkNewConsume is the cost per ACME request: one nonce issued, one
// checked and spent in a memory replay set.
func BenchmarkNewConsume(b *testing.B) {
	s, err := nonce.New(nonce.Config{Key: testKey(7), Spent: nonce.NewMemory()})
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		n, err := s.New()
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Consume(ctx, n); err != nil {
			b.Fatal(err)
		}
	}
}
