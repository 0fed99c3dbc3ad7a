package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/smallstep/nosql"

	"github.com/crank-platform/crank-ca/internal/nonce"
)

var nonceT0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func newTestStore(t *testing.T, db nosql.DB) *Store {
	t.Helper()
	s, err := New(Config{DB: db})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// spentID is a nonce ID issued at at, with random part r.
func spentID(at time.Time, r byte) nonce.ID {
	var id nonce.ID
	binary.BigEndian.PutUint64(id[:8], uint64(at.UnixNano())) //nolint:gosec // after 1970
	for i := 8; i < len(id); i++ {
		id[i] = r
	}
	return id
}

// spentIDs lists the replay set's keys.
func spentIDs(t *testing.T, s *Store) [][]byte {
	t.Helper()
	es, err := s.db.List(spentNoncesTable)
	if err != nil {
		t.Fatal(err)
	}
	out := [][]byte{}
	for _, e := range es {
		out = append(out, e.Key)
	}
	return out
}

// TestNonceStore runs the nonce cases on bbolt; TestPostgres runs them on
// PostgreSQL.
func TestNonceStore(t *testing.T) {
	t.Parallel()
	testNonceStore(t, func(t *testing.T) (*Store, *Store) {
		t.Helper()
		db := openTestBolt(t, filepath.Join(t.TempDir(), "ca.db"))
		return newTestStore(t, db), newTestStore(t, db)
	})
}

// testNonceStore runs every case on a fresh database; open returns two
// Stores on it (two replicas on PostgreSQL).
func testNonceStore(t *testing.T, open func(t *testing.T) (a, b *Store)) {
	t.Helper()
	for _, c := range nonceStoreCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			a, b := open(t)
			c.run(t, a, b)
		})
	}
}

var nonceStoreCases = []struct {
	name string
	run  func(t *testing.T, a, b *Store)
}{
	{"secret is created once", func(t *testing.T, a, b *Store) {
		ctx := t.Context()
		keys := make([][]byte, 16)
		errs := make([]error, 16)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range keys {
			wg.Go(func() {
				s := a
				if i%2 == 1 {
					s = b
				}
				<-start
				keys[i], errs[i] = s.Secret(ctx, "shared")
			})
		}
		close(start)
		wg.Wait()
		for i := range keys {
			if errs[i] != nil {
				t.Fatalf("caller %d: %v", i, errs[i])
			}
			if len(keys[i]) != 32 || !bytes.Equal(keys[i], keys[0]) {
				t.Fatalf("caller %d got %x, caller 0 got %x", i, keys[i], keys[0])
			}
		}
		if bytes.Equal(keys[0], make([]byte, 32)) {
			t.Error("the secret is all zeros")
		}
		again, err := b.Secret(ctx, "shared")
		if err != nil || !bytes.Equal(again, keys[0]) {
			t.Errorf("Secret later = %x, %v; want %x", again, err, keys[0])
		}
		other, err := a.Secret(ctx, "other")
		if err != nil || bytes.Equal(other, keys[0]) {
			t.Errorf("another name's secret = %x, %v", other, err)
		}
		nk1, err1 := a.NonceKey(ctx)
		nk2, err2 := b.NonceKey(ctx)
		if err1 != nil || err2 != nil || !bytes.Equal(nk1, nk2) || len(nk1) != 32 {
			t.Errorf("NonceKey at the replicas: %x, %v; %x, %v", nk1, err1, nk2, err2)
		}
	}},
	{"corrupt secret", func(t *testing.T, a, _ *Store) {
		if err := a.db.Set(secretsTable, []byte("short"), []byte("12345")); err != nil {
			t.Fatal(err)
		}
		if k, err := a.Secret(t.Context(), "short"); err == nil {
			t.Errorf("Secret of a 5-byte record = %x, want an error", k)
		}
	}},
	{"spend once", func(t *testing.T, a, b *Store) {
		ctx := t.Context()
		exp := nonceT0.Add(time.Hour)
		for r := range byte(5) {
			id := spentID(nonceT0, r)
			fresh := make([]bool, 32)
			errs := make([]error, 32)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range fresh {
				wg.Go(func() {
					s := a
					if i%2 == 1 {
						s = b
					}
					<-start
					fresh[i], errs[i] = s.Spend(ctx, id, exp)
				})
			}
			close(start)
			wg.Wait()
			won := 0
			for i := range fresh {
				if errs[i] != nil {
					t.Fatalf("Spend %d: %v", i, errs[i])
				}
				if fresh[i] {
					won++
				}
			}
			if won != 1 {
				t.Fatalf("ID %d: %d of 32 concurrent spends won, want 1", r, won)
			}
		}
		if got := len(spentIDs(t, a)); got != 5 {
			t.Errorf("%d spent IDs recorded, want 5", got)
		}
	}},
	{"nonce sources on the shared replay set", func(t *testing.T, a, b *Store) {
		ctx := t.Context()
		var sources []*nonce.Source
		for _, s := range []*Store{a, b} {
			key, err := s.NonceKey(ctx)
			if err != nil {
				t.Fatal(err)
			}
			src, err := nonce.New(nonce.Config{Key: key, Spent: s})
			if err != nil {
				t.Fatal(err)
			}
			sources = append(sources, src)
		}
		for round := range 5 {
			n, err := sources[round%2].New()
			if err != nil {
				t.Fatal(err)
			}
			errs := make([]error, 32)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range errs {
				wg.Go(func() {
					<-start
					errs[i] = sources[i%2].Consume(ctx, n)
				})
			}
			close(start)
			wg.Wait()
			ok := 0
			for _, err := range errs {
				switch {
				case err == nil:
					ok++
				case !errors.Is(err, nonce.ErrSpent):
					t.Errorf("Consume = %v, want nil or ErrSpent", err)
				}
			}
			if ok != 1 {
				t.Fatalf("round %d: %d of 32 uses at two replicas succeeded, want 1", round, ok)
			}
		}
	}},
	{"prune spent nonces", func(t *testing.T, a, b *Store) {
		ctx := t.Context()
		// 40 IDs: two every 30 s for 10 minutes; the cutoff at 5 minutes
		// is the issue time of the 21st and 22nd, which stay.
		var ids []nonce.ID
		for i := range 20 {
			at := nonceT0.Add(time.Duration(i) * 30 * time.Second)
			ids = append(ids, spentID(at, 0xff), spentID(at, 0x00))
		}
		cutoff := nonceT0.Add(5 * time.Minute)
		var kept [][]byte
		for _, id := range ids {
			if !id.IssuedAt().Before(cutoff) {
				kept = append(kept, bytes.Clone(id[:]))
			}
		}
		slices.SortFunc(kept, bytes.Compare)
		for _, batch := range []int{1, 7, 20, 1000} {
			for i, id := range ids {
				fresh, err := a.Spend(ctx, id, id.IssuedAt().Add(time.Hour))
				if err != nil {
					t.Fatal(err)
				}
				// After a prune, the pruned IDs are gone and the kept
				// ones still spent.
				if want := batch == 1 || id.IssuedAt().Before(cutoff); fresh != want {
					t.Fatalf("batch %d: Spend of ID %d (issued %v) = %v, want %v", batch, i, id.IssuedAt(), fresh, want)
				}
			}
			n, err := b.PruneSpentNonces(ctx, cutoff, batch)
			if err != nil || n != 20 {
				t.Errorf("batch %d: PruneSpentNonces = %d, %v; want 20", batch, n, err)
			}
			if diff := cmp.Diff(kept, spentIDs(t, a)); diff != "" {
				t.Errorf("batch %d: spent IDs after pruning (-want +got):\n%s", batch, diff)
			}
			if n, err := b.PruneSpentNonces(ctx, cutoff, batch); err != nil || n != 0 {
				t.Errorf("batch %d: second PruneSpentNonces = %d, %v; want 0", batch, n, err)
			}
		}
		if n, err := a.PruneSpentNonces(ctx, nonceT0, 5); err != nil || n != 0 {
			t.Errorf("prune before every issue time = %d, %v; want 0", n, err)
		}
		if n, err := a.PruneSpentNonces(ctx, nonceT0.Add(time.Hour), 5); err != nil || n != 20 {
			t.Errorf("prune after every issue time = %d, %v; want 20", n, err)
		}
		if got := spentIDs(t, a); len(got) != 0 {
			t.Errorf("%d spent IDs left", len(got))
		}
		if n, err := a.PruneSpentNonces(ctx, nonceT0.Add(time.Hour), 5); err != nil || n != 0 {
			t.Errorf("prune of an empty set = %d, %v; want 0", n, err)
		}
	}},
	{"prune stops with its context", func(t *testing.T, a, _ *Store) {
		id := spentID(nonceT0, 1)
		if _, err := a.Spend(t.Context(), id, nonceT0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := a.PruneSpentNonces(ctx, nonceT0.Add(time.Hour), 10); !errors.Is(err, context.Canceled) {
			t.Errorf("PruneSpentNonces with a cancelled context = %v, want context.Canceled", err)
		}
	}},
	// A batch size of zero (or less) must not make the prune spin: it
	// ends when nothing before the cutoff is left, as with any size.
	{"prune with a batch size of zero", func(t *testing.T, a, _ *Store) {
		for _, seed := range []int{0, 3} {
			for i := range seed {
				id := spentID(nonceT0.Add(time.Duration(i)*time.Second), 1)
				if _, err := a.Spend(t.Context(), id, nonceT0.Add(time.Hour)); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
			n, err := a.PruneSpentNonces(ctx, nonceT0.Add(time.Hour), 0)
			cancel()
			if err != nil || n != seed {
				t.Errorf("PruneSpentNonces(batch 0) of %d IDs = %d, %v; want %d, nil", seed, n, err, seed)
			}
		}
	}},
	{"nonce snapshot", func(t *testing.T, a, b *Store) {
		ctx := t.Context()
		key, err := a.NonceKey(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if snap, err := a.TakeNonceSnapshot(ctx); err != nil || snap != nil {
			t.Fatalf("TakeNonceSnapshot with none saved = %x, %v; want nil, nil", snap, err)
		}
		for _, tc := range []struct {
			name  string
			saves [][]byte
			want  []byte
		}{
			{"one", [][]byte{[]byte("first")}, []byte("first")},
			{"the last of two", [][]byte{[]byte("first"), []byte("second")}, []byte("second")},
			{"binary", [][]byte{{0, 1, 2, 0xff}}, []byte{0, 1, 2, 0xff}},
		} {
			for _, s := range tc.saves {
				if err := a.SaveNonceSnapshot(ctx, s); err != nil {
					t.Fatal(err)
				}
			}
			snap, err := b.TakeNonceSnapshot(ctx)
			if err != nil || !bytes.Equal(snap, tc.want) {
				t.Errorf("%s: TakeNonceSnapshot = %q, %v; want %q", tc.name, snap, err, tc.want)
			}
			if snap, err := b.TakeNonceSnapshot(ctx); err != nil || snap != nil {
				t.Errorf("%s: second TakeNonceSnapshot = %q, %v; want nil, nil", tc.name, snap, err)
			}
		}

		// A memory replay set across a clean restart.
		mem := nonce.NewMemory()
		src, err := nonce.New(nonce.Config{Key: key, Spent: mem})
		if err != nil {
			t.Fatal(err)
		}
		n, err := src.New()
		if err != nil {
			t.Fatal(err)
		}
		if err := src.Consume(ctx, n); err != nil {
			t.Fatal(err)
		}
		if err := a.SaveNonceSnapshot(ctx, mem.Save()); err != nil {
			t.Fatal(err)
		}
		snap, err := a.TakeNonceSnapshot(ctx)
		if err != nil || snap == nil {
			t.Fatalf("TakeNonceSnapshot = %x, %v", snap, err)
		}
		restored := nonce.NewMemory()
		if err := restored.Restore(snap); err != nil {
			t.Fatal(err)
		}
		key2, err := a.NonceKey(ctx)
		if err != nil || !bytes.Equal(key2, key) {
			t.Fatalf("the nonce key changed beside the snapshot: %x, %v", key2, err)
		}
		src2, err := nonce.New(nonce.Config{Key: key2, Spent: restored})
		if err != nil {
			t.Fatal(err)
		}
		if err := src2.Consume(ctx, n); !errors.Is(err, nonce.ErrSpent) {
			t.Errorf("a nonce spent before the restart: %v, want ErrSpent", err)
		}
	}},
}
