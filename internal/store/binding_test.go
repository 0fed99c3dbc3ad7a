package store

import (
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/smallstep/nosql"
)

func openBolt(t *testing.T) nosql.DB {
	t.Helper()
	db, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "test.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestBind(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)
	s, err := New(Config{DB: openBolt(t), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()

	if used, err := s.TokenUsed(ctx, "kid-1"); err != nil || used {
		t.Fatalf("fresh token used=%v err=%v", used, err)
	}
	if _, err := s.Binding(ctx, "acc-1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing binding: %v, want ErrNotFound", err)
	}
	b := Binding{AccountID: "acc-1", Provisioner: "workers", Worker: "api", KID: "kid-1"}
	if err := s.Bind(ctx, b); err != nil {
		t.Fatal(err)
	}
	got, err := s.Binding(ctx, "acc-1")
	if err != nil {
		t.Fatal(err)
	}
	b.BoundAt = now
	if diff := cmp.Diff(b, got); diff != "" {
		t.Errorf("binding (-want +got):\n%s", diff)
	}
	if used, _ := s.TokenUsed(ctx, "kid-1"); !used {
		t.Error("token not marked used")
	}
	err = s.Bind(ctx, Binding{AccountID: "acc-2", Provisioner: "workers", Worker: "api", KID: "kid-1"})
	if !errors.Is(err, ErrTokenUsed) {
		t.Fatalf("second bind: %v, want ErrTokenUsed", err)
	}
	if _, err := s.Binding(ctx, "acc-2"); !errors.Is(err, ErrNotFound) {
		t.Error("a refused bind wrote a binding")
	}
	for _, bad := range []Binding{{KID: "k"}, {AccountID: "a"}} {
		if err := s.Bind(ctx, bad); err == nil {
			t.Errorf("Bind(%+v) succeeded", bad)
		}
	}
}

// TestBindConcurrent: of many concurrent binds of one token exactly one wins.
func TestBindConcurrent(t *testing.T) {
	t.Parallel()
	s, err := New(Config{DB: openBolt(t)})
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins int
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.Bind(t.Context(), Binding{AccountID: string(rune('a' + i)), KID: "shared"})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, ErrTokenUsed):
				t.Errorf("bind: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d binds won, want 1", wins)
	}
}

// TestTokenUseKeyFitsPostgreSQL: kids carry name hints and may be long;
// nosql's PostgreSQL tables take keys of at most 255 bytes.
func TestTokenUseKeyFitsPostgreSQL(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("k", 1024)
	if k := tokenUseKey(long); len(k) > 255 || string(k) == string(tokenUseKey(long+"x")) {
		t.Errorf("tokenUseKey: %d bytes or not distinct", len(k))
	}
}
