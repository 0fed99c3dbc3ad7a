package stepca

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/crank-platform/crank-ca/internal/nonce"
	"github.com/crank-platform/crank-ca/internal/store"
)

// nonceSource chooses the replay set: in the shared store when replicas may
// share the database (PostgreSQL), in memory otherwise. A memory set was
// saved at the last clean stop; after an unclean one it is lost, and nonces
// issued before this start are refused (clients retry with the fresh nonce
// of the badNonce answer).
type nonceSource struct {
	*nonce.Source
	memory *nonce.Memory // nil when shared
	store  *store.Store
}

func newNonceSource(ctx context.Context, st *store.Store, shared bool, now func() time.Time, log *slog.Logger) (*nonceSource, error) {
	key, err := st.NonceKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("stepca: nonce key: %w", err)
	}
	ns := &nonceSource{store: st}
	cfg := nonce.Config{Key: key, Now: now, Spent: st}
	if !shared {
		ns.memory = nonce.NewMemory()
		cfg.Spent = ns.memory
		snap, err := st.TakeNonceSnapshot(ctx)
		switch {
		case err != nil:
			return nil, fmt.Errorf("stepca: %w", err)
		case snap == nil:
			cfg.NotBefore = now()
		default:
			if err := ns.memory.Restore(snap); err != nil {
				log.Warn("refusing nonces issued before this start", "err", err)
				cfg.NotBefore = now()
			}
		}
	}
	if ns.Source, err = nonce.New(cfg); err != nil {
		return nil, fmt.Errorf("stepca: %w", err)
	}
	return ns, nil
}

// save keeps a memory replay set across a clean stop.
func (ns *nonceSource) save(ctx context.Context) error {
	if ns.memory == nil {
		return nil
	}
	return ns.store.SaveNonceSnapshot(ctx, ns.memory.Save())
}

// prune deletes expired entries of a shared replay set until ctx ends.
func (ns *nonceSource) prune(ctx context.Context, now func() time.Time, log *slog.Logger) {
	if ns.memory != nil {
		return
	}
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := ns.store.PruneSpentNonces(ctx, now().Add(-ns.MaxAge()-time.Minute), 1000); err != nil && ctx.Err() == nil {
			log.Warn("pruning spent nonces", "err", err)
		}
	}
}
