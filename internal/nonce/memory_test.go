package nonce_test

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/internal/nonce"
)

// idAt is a replay-set ID issued at t with random part r.
func idAt(t time.Time, r byte) nonce.ID {
	var id nonce.ID
	binary.BigEndian.PutUint64(id[:8], uint64(t.UnixNano()))
	for i := 8; i < len(id); i++ {
		id[i] = r
	}
	return id
}

func TestMemorySpend(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	m := nonce.NewMemory()
	a, b := idAt(t0, 1), idAt(t0, 2)
	for _, step := range []struct {
		id    nonce.ID
		fresh bool
		len   int
	}{
		{a, true, 1},
		{a, false, 1},
		{b, true, 2},
		{b, false, 2},
		{a, false, 2},
	} {
		fresh, err := m.Spend(ctx, step.id, step.id.IssuedAt().Add(nonce.DefaultMaxAge))
		if err != nil || fresh != step.fresh {
			t.Fatalf("Spend(%x) = %v, %v; want %v", step.id, fresh, err, step.fresh)
		}
		if m.Len() != step.len {
			t.Fatalf("Len = %d, want %d", m.Len(), step.len)
		}
	}
}

// spentNonce is a nonce the prune test consumed, with its issue time.
type spentNonce struct {
	n  string
	at time.Time
}

// TestMemoryPrune runs a replay set through 30 minutes of traffic: fresh
// nonces, nonces a client held almost MaxAge, and nonces from a replica
// whose clock is 59 s ahead. After every step each nonce still within
// MaxAge must still be spent (pruning never forgets one a client could
// replay), and the set must stay bounded by the traffic of the last
// 2×MaxAge (pruning does drop expired ones).
func TestMemoryPrune(t *testing.T) {
	t.Parallel()
	const maxAge = 5 * time.Minute
	const step = 20 * time.Second
	ctx := t.Context()
	mem := nonce.NewMemory()
	clock := newClock(t0)
	src, err := nonce.New(nonce.Config{Key: testKey(7), Spent: mem, MaxAge: maxAge, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ahead, err := nonce.New(nonce.Config{Key: testKey(7), Spent: mem, MaxAge: maxAge, Now: func() time.Time { return clock.Now().Add(59 * time.Second) }})
	if err != nil {
		t.Fatal(err)
	}
	var spent []spentNonce
	var held []spentNonce // issued, kept by a slow client, spent later
	shrank := false
	prevLen := 0
	for i := range int(30 * time.Minute / step) {
		now := clock.Now()
		consume := func(n string, at time.Time) {
			t.Helper()
			if err := src.Consume(ctx, n); err != nil {
				t.Fatalf("step %d: Consume of a fresh nonce issued at %v: %v", i, at, err)
			}
			spent = append(spent, spentNonce{n, at})
		}
		// A slow client spends the nonce it got almost MaxAge ago.
		if len(held) > 0 && now.Sub(held[0].at) >= maxAge-step {
			consume(held[0].n, held[0].at)
			held = held[1:]
		}
		held = append(held, spentNonce{issue(t, src), now})
		consume(issue(t, ahead), now.Add(59*time.Second))
		for range 3 {
			consume(issue(t, src), now)
		}

		for _, s := range spent {
			age := now.Sub(s.at)
			if age > maxAge {
				continue
			}
			if err := src.Consume(ctx, s.n); !errors.Is(err, nonce.ErrSpent) {
				t.Fatalf("step %d: replay of a nonce issued %v ago = %v, want ErrSpent", i, age, err)
			}
		}
		live := 0
		for _, s := range spent {
			if now.Sub(s.at) <= 2*maxAge {
				live++
			}
		}
		if got := mem.Len(); got > live {
			t.Fatalf("step %d: Len = %d, more than the %d nonces spent in the last %v", i, got, live, 2*maxAge)
		}
		if mem.Len() < prevLen {
			shrank = true
		}
		prevLen = mem.Len()
		clock.Add(step)
	}
	if !shrank {
		t.Error("Len never shrank as the clock advanced")
	}
	clock.Add(time.Hour)
	if err := src.Consume(ctx, issue(t, src)); err != nil {
		t.Fatal(err)
	}
	if mem.Len() != 1 {
		t.Errorf("Len an hour after the traffic = %d, want 1", mem.Len())
	}
}

func TestMemorySaveRestore(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	m1 := nonce.NewMemory()
	a, clock := newSource(t, nonce.Config{Spent: m1})
	var spent []string
	for range 25 {
		n := issue(t, a)
		if err := a.Consume(ctx, n); err != nil {
			t.Fatal(err)
		}
		spent = append(spent, n)
		clock.Add(10 * time.Second) // across several slots
	}
	unspent := issue(t, a)
	saved := m1.Save()
	if want := 8 + 25*nonce.IDLen; len(saved) != want {
		t.Errorf("Save wrote %d bytes, want %d", len(saved), want)
	}

	// A restarted replica: new replay set, same key.
	m2 := nonce.NewMemory()
	if err := m2.Restore(saved); err != nil {
		t.Fatal(err)
	}
	if m2.Len() != 25 {
		t.Errorf("Len after Restore = %d, want 25", m2.Len())
	}
	// Restoring twice adds nothing.
	if err := m2.Restore(saved); err != nil {
		t.Fatal(err)
	}
	if m2.Len() != 25 {
		t.Errorf("Len after a second Restore = %d, want 25", m2.Len())
	}
	b, err := nonce.New(nonce.Config{Key: testKey(7), Spent: m2, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range spent {
		if err := b.Consume(ctx, n); !errors.Is(err, nonce.ErrSpent) {
			t.Errorf("nonce %d spent before the restart: Consume = %v, want ErrSpent", i, err)
		}
	}
	if err := b.Consume(ctx, unspent); err != nil {
		t.Errorf("nonce issued but not spent before the restart: %v", err)
	}

	// An empty set round-trips too.
	empty := nonce.NewMemory().Save()
	m3 := nonce.NewMemory()
	if err := m3.Restore(empty); err != nil || m3.Len() != 0 {
		t.Errorf("Restore of an empty set: Len %d, %v", m3.Len(), err)
	}

	// Restored entries expire like the others.
	clock.Add(time.Hour)
	if err := b.Consume(ctx, issue(t, b)); err != nil {
		t.Fatal(err)
	}
	if m2.Len() != 1 {
		t.Errorf("Len an hour after the restart = %d, want 1", m2.Len())
	}
}

// restore calls Restore and recovers a panic, for the report.
func restore(m *nonce.Memory, b []byte) (panicked any, err error) {
	defer func() { panicked = recover() }()
	return nil, m.Restore(b)
}

func header(n uint64, body int) []byte {
	return append(binary.BigEndian.AppendUint64(nil, n), make([]byte, body)...)
}

// wrappingCount is a count n with n×20 = body (mod 2^64) for a body length
// divisible by 4 but not by 20: 0xCCCCCCCCCCCCCCCD is 5⁻¹ mod 2^64.
func wrappingCount(body int) uint64 {
	inv5 := uint64(0xCCCCCCCCCCCCCCCD)
	return inv5 * uint64(body/4) //nolint:gosec // small and positive
}

// TestMemoryRestoreCorrupt: a damaged snapshot is refused with an error
// (the caller then refuses nonces issued before the start), never a panic,
// and leaves the set empty.
func TestMemoryRestoreCorrupt(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"short header", make([]byte, 7)},
		{"count 1, no ID", header(1, 0)},
		{"count 0, one ID", header(0, nonce.IDLen)},
		{"count 1, short ID", header(1, nonce.IDLen-1)},
		{"count 1, ID and a byte", header(1, nonce.IDLen+1)},
		{"count 2, one ID", header(2, nonce.IDLen)},
		{"count max, one ID", header(^uint64(0), nonce.IDLen)},
		// Counts whose product with IDLen wraps around 2^64 to the
		// body's length.
		{"count wrapping to 4 bytes", header(wrappingCount(4), 4)},
		{"count wrapping to 24 bytes", header(wrappingCount(24), 24)},
		{"count wrapping to one ID", header(1+1<<62, nonce.IDLen)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := nonce.NewMemory()
			panicked, err := restore(m, tc.b)
			switch {
			case panicked != nil:
				t.Errorf("Restore(%x) panicked: %v", tc.b, panicked)
			case err == nil:
				t.Errorf("Restore(%x) accepted a corrupt snapshot", tc.b)
			}
			if m.Len() != 0 {
				t.Errorf("Restore left %d entries of a corrupt snapshot", m.Len())
			}
		})
	}
}
