package store

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/crank-platform/crank-ca/internal/nonce"
)

var (
	// secretsTable holds keys every replica must share (the nonce key).
	secretsTable = []byte("crank_secrets")
	// spentNoncesTable is the replay set of replicas on one database,
	// keyed by nonce ID (issue time first, so expired entries are a range).
	spentNoncesTable = []byte("crank_spent_nonces")
)

const (
	nonceKeyName      = "nonce-key"
	nonceSnapshotName = "nonce-replay-set"
)

// Secret returns the secret of a name, creating it (32 random bytes) if it
// does not exist; replicas starting at once all get the one that won.
func (s *Store) Secret(_ context.Context, name string) ([]byte, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	cur, swapped, err := s.db.CmpAndSwap(secretsTable, []byte(name), nil, key)
	switch {
	case err != nil:
		return nil, fmt.Errorf("store: create secret %s: %w", name, err)
	case swapped:
		return key, nil
	case len(cur) < 32:
		return nil, fmt.Errorf("store: secret %s is corrupt", name)
	}
	return cur, nil
}

// NonceKey is the key that authenticates ACME nonces.
func (s *Store) NonceKey(ctx context.Context) ([]byte, error) { return s.Secret(ctx, nonceKeyName) }

// Spend records a nonce as spent in the shared replay set (replicas on one
// database); false if another request spent it first.
//
// On PostgreSQL the spends of concurrent requests share one statement and
// commit (Postgres.InsertNew).
func (s *Store) Spend(ctx context.Context, id nonce.ID, _ time.Time) (bool, error) {
	defer s.timed(OpNonce, time.Now())
	if in, ok := s.db.(interface {
		InsertNew(ctx context.Context, bucket, key, value []byte) (bool, error)
	}); ok {
		fresh, err := in.InsertNew(ctx, spentNoncesTable, id[:], []byte{1})
		if err != nil {
			return false, fmt.Errorf("store: spend nonce: %w", err)
		}
		return fresh, nil
	}
	_, swapped, err := s.db.CmpAndSwap(spentNoncesTable, id[:], nil, []byte{1})
	if err != nil {
		return false, fmt.Errorf("store: spend nonce: %w", err)
	}
	return swapped, nil
}

// PruneSpentNonces deletes spent nonces issued before a time, in batches of
// at most batch keys: they are expired and can no longer be replayed.
func (s *Store) PruneSpentNonces(ctx context.Context, before time.Time, batch int) (int, error) {
	sc, ok := s.db.(interface {
		Scan(bucket, start []byte, limit int) ([]*database.Entry, error)
	})
	if !ok {
		return 0, nil
	}
	if batch <= 0 {
		batch = 1000
	}
	var end nonce.ID
	copy(end[:], idPrefix(before))
	n := 0
	for ctx.Err() == nil {
		es, err := sc.Scan(spentNoncesTable, nil, batch)
		if err != nil {
			return n, fmt.Errorf("store: list spent nonces: %w", err)
		}
		done := len(es) < batch
		for _, e := range es {
			if string(e.Key) >= string(end[:]) {
				return n, nil
			}
			if err := s.db.Del(spentNoncesTable, e.Key); err != nil {
				return n, fmt.Errorf("store: prune spent nonce: %w", err)
			}
			n++
		}
		if done {
			return n, nil
		}
	}
	return n, ctx.Err()
}

func idPrefix(t time.Time) []byte {
	var id nonce.ID
	u := uint64(t.UnixNano()) //nolint:gosec // after 1970
	for i := 7; i >= 0; i-- {
		id[i] = byte(u)
		u >>= 8
	}
	return id[:8]
}

// SaveNonceSnapshot stores a single replica's replay set at a clean stop.
func (s *Store) SaveNonceSnapshot(_ context.Context, b []byte) error {
	if err := s.db.Set(secretsTable, []byte(nonceSnapshotName), b); err != nil {
		return fmt.Errorf("store: save replay set: %w", err)
	}
	return nil
}

// TakeNonceSnapshot returns and deletes the saved replay set: nil when the
// last stop was not clean (or there was none), and then nonces issued before
// this start must be refused.
func (s *Store) TakeNonceSnapshot(_ context.Context) ([]byte, error) {
	b, err := s.db.Get(secretsTable, []byte(nonceSnapshotName))
	switch {
	case errors.Is(err, database.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("store: read replay set: %w", err)
	}
	if err := s.db.Del(secretsTable, []byte(nonceSnapshotName)); err != nil {
		return nil, fmt.Errorf("store: delete replay set: %w", err)
	}
	return b, nil
}
