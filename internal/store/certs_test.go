package store

import (
	"errors"
	"sync"
	"testing"
	"time"
)

func TestCertRecords(t *testing.T) {
	t.Parallel()
	s, err := New(Config{DB: openBolt(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	now := time.Now()
	rec := CertRecord{Serial: "42", Worker: "api", NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour), IssuedAt: now}
	if err := s.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Cert(ctx, "42"); err != nil || got.Worker != "api" || !got.Start().Equal(now) || !got.Live(now) {
		t.Fatalf("Cert = %+v, %v", got, err)
	}
	if _, err := s.Cert(ctx, "43"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown serial: %v", err)
	}
	if _, err := s.UpdateCert(ctx, "43", func(*CertRecord) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("update of an unknown serial: %v", err)
	}

	// Concurrent claims: exactly one replacement wins.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.UpdateCert(ctx, "42", func(r *CertRecord) error {
				if r.ReplacedBy != "" {
					return ErrAlreadyReplaced
				}
				r.ReplacedBy = string(rune('a' + i))
				return nil
			})
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, ErrAlreadyReplaced) {
				t.Errorf("update: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("%d replacements won, want 1", wins)
	}
	live, err := s.Certs(ctx, func(r CertRecord) bool { return r.Live(now) })
	if err != nil || len(live) != 1 {
		t.Errorf("Certs(live) = %d, %v", len(live), err)
	}
}

func TestWorkerState(t *testing.T) {
	t.Parallel()
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s, err := New(Config{DB: openBolt(t), Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if w, err := s.Worker(ctx, "workers", "api"); err != nil || w.Disabled || !w.DisabledAt.IsZero() {
		t.Fatalf("untouched worker = %+v, %v", w, err)
	}
	w, err := s.SetWorkerDisabled(ctx, "workers", "api", true)
	if err != nil || !w.Disabled || !w.DisabledAt.Equal(clock) {
		t.Fatalf("disable = %+v, %v", w, err)
	}
	clock = clock.Add(time.Hour)
	w, err = s.SetWorkerDisabled(ctx, "workers", "api", false)
	if err != nil || w.Disabled || !w.EnabledAt.Equal(clock) || w.DisabledAt.IsZero() {
		t.Fatalf("enable = %+v, %v (the last disable must be remembered)", w, err)
	}
	all, err := s.Workers(ctx)
	if err != nil || len(all) != 1 {
		t.Errorf("Workers = %+v, %v", all, err)
	}
}
