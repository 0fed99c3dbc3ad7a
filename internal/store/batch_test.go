package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// fakeInserts is an in-memory table behind an insertBatcher that records
// each statement's keys; gate, when set, holds the first statement until
// it is closed.
type fakeInserts struct {
	mu      sync.Mutex
	rows    map[string]bool
	batches [][]string
	gate    chan struct{}
	entered chan struct{}
	err     error
}

func (f *fakeInserts) insert(_ context.Context, keys [][]byte) (map[string]bool, error) {
	f.mu.Lock()
	first := len(f.batches) == 0
	var ks []string
	for _, k := range keys {
		ks = append(ks, string(k))
	}
	f.batches = append(f.batches, ks)
	f.mu.Unlock()
	if first && f.gate != nil {
		close(f.entered)
		<-f.gate
	}
	if f.err != nil {
		return nil, f.err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]bool{}
	for _, k := range ks {
		if !f.rows[k] {
			f.rows[k] = true
			out[k] = true
		}
	}
	return out, nil
}

func TestInsertBatcher(t *testing.T) {
	t.Parallel()
	t.Run("requests queued behind a statement share the next one", func(t *testing.T) {
		t.Parallel()
		f := &fakeInserts{rows: map[string]bool{"old": true}, gate: make(chan struct{}), entered: make(chan struct{})}
		b := &insertBatcher{insert: f.insert}
		type answer struct {
			fresh bool
			err   error
		}
		first := make(chan answer, 1)
		go func() {
			fresh, err := b.insertNew(t.Context(), []byte("k0"))
			first <- answer{fresh, err}
		}()
		<-f.entered
		// While the first statement runs: 10 distinct keys, one key twice,
		// one key that exists.
		keys := []string{"k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", "k10", "dup", "dup", "old"}
		answers := make([]answer, len(keys))
		var wg sync.WaitGroup
		for i, k := range keys {
			wg.Go(func() {
				fresh, err := b.insertNew(t.Context(), []byte(k))
				answers[i] = answer{fresh, err}
			})
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			b.mu.Lock()
			n := len(b.pending)
			b.mu.Unlock()
			if n == len(keys) || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		close(f.gate)
		wg.Wait()
		if a := <-first; !a.fresh || a.err != nil {
			t.Errorf("first request = %+v, want fresh", a)
		}
		dups := 0
		for i, k := range keys {
			a := answers[i]
			switch {
			case a.err != nil:
				t.Errorf("%s: %v", k, a.err)
			case k == "old" && a.fresh:
				t.Errorf("existing key reported inserted")
			case k == "dup" && a.fresh:
				dups++
			case k != "old" && k != "dup" && !a.fresh:
				t.Errorf("%s not inserted", k)
			}
		}
		if dups != 1 {
			t.Errorf("a key sent twice was inserted for %d requests, want 1", dups)
		}
		if len(f.batches) != 2 || len(f.batches[1]) != len(keys)-1 {
			t.Errorf("statements %v, want the first alone and then the 12 distinct queued keys in one", f.batches)
		}
		if b.leading || len(b.pending) != 0 {
			t.Errorf("batcher left leading=%v with %d pending", b.leading, len(b.pending))
		}
	})
	t.Run("a failed statement fails every request in it", func(t *testing.T) {
		t.Parallel()
		boom := errors.New("database gone")
		f := &fakeInserts{rows: map[string]bool{}, err: boom}
		b := &insertBatcher{insert: f.insert}
		var wg sync.WaitGroup
		errs := make([]error, 20)
		for i := range errs {
			wg.Go(func() { _, errs[i] = b.insertNew(t.Context(), fmt.Appendf(nil, "k%d", i)) })
		}
		wg.Wait()
		for i, err := range errs {
			if !errors.Is(err, boom) {
				t.Errorf("request %d: %v, want the statement's error", i, err)
			}
		}
	})
	t.Run("many concurrent requests, each key once", func(t *testing.T) {
		t.Parallel()
		f := &fakeInserts{rows: map[string]bool{}}
		b := &insertBatcher{insert: f.insert}
		const n, copies = 50, 4
		won := make([]int, n)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range n * copies {
			wg.Go(func() {
				fresh, err := b.insertNew(t.Context(), fmt.Appendf(nil, "k%d", i%n))
				if err != nil {
					t.Error(err)
				}
				if fresh {
					mu.Lock()
					won[i%n]++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		for k, w := range won {
			if w != 1 {
				t.Errorf("key %d inserted for %d requests, want 1", k, w)
			}
		}
	})
}
