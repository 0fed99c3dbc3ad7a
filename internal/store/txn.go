package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/smallstep/nosql/database"
	bolt "go.etcd.io/bbolt"
)

// KV is a transaction's view of the store: reads see the transaction's own
// writes, and nothing is visible to others before it commits.
type KV interface {
	// Get returns a value or an error matching database.ErrNotFound.
	Get(bucket, key []byte) ([]byte, error)
	// GetForUpdate is Get that also holds the key against concurrent
	// transactions (at every replica) until this one ends, whether the key
	// exists or not: a read-modify-write of it is then atomic.
	GetForUpdate(bucket, key []byte) ([]byte, error)
	Set(bucket, key, value []byte) error
	Del(bucket, key []byte) error
}

// transactor is implemented by crank-ca's drivers.
type transactor interface {
	Txn(ctx context.Context, fn func(KV) error) error
}

// Txn runs fn in one transaction: one commit (one fsync pair on bbolt,
// shared with concurrent writers; one WAL flush on PostgreSQL) for all of
// a request's records instead of one per record. fn may run more than once
// (bbolt re-runs a group commit without a failed member), so it must only
// compute from what it reads. Drivers without transactions (measurements
// only) run fn directly, without atomicity.
func (s *Store) Txn(ctx context.Context, fn func(KV) error) error {
	defer s.timed(OpTxn, time.Now())
	if t, ok := s.db.(transactor); ok {
		return t.Txn(ctx, fn)
	}
	return fn(directKV{s})
}

type directKV struct{ s *Store }

func (d directKV) Get(bucket, key []byte) ([]byte, error) { return d.s.db.Get(bucket, key) }
func (d directKV) GetForUpdate(bucket, key []byte) ([]byte, error) {
	return d.s.db.Get(bucket, key)
}
func (d directKV) Set(bucket, key, value []byte) error { return d.s.db.Set(bucket, key, value) }
func (d directKV) Del(bucket, key []byte) error        { return d.s.db.Del(bucket, key) }

// Txn runs fn in a group-committed write transaction; bbolt has one writer
// at a time, so every read in it is already "for update".
func (b *Bolt) Txn(_ context.Context, fn func(KV) error) error {
	return b.write(func(tx *bolt.Tx) error { return fn(boltKV{tx}) })
}

type boltKV struct{ tx *bolt.Tx }

func (k boltKV) Get(bucket, key []byte) ([]byte, error) {
	bk, err := bucketOf(k.tx, bucket)
	if err != nil {
		return nil, err
	}
	v := bk.Get(key)
	if v == nil {
		return nil, fmt.Errorf("store: %s/%s: %w", bucket, key, database.ErrNotFound)
	}
	return append([]byte{}, v...), nil
}

func (k boltKV) GetForUpdate(bucket, key []byte) ([]byte, error) { return k.Get(bucket, key) }

func (k boltKV) Set(bucket, key, value []byte) error {
	bk, err := bucketOf(k.tx, bucket)
	if err != nil {
		return err
	}
	return bk.Put(key, value)
}

func (k boltKV) Del(bucket, key []byte) error {
	bk, err := bucketOf(k.tx, bucket)
	if err != nil {
		return err
	}
	return bk.Delete(key)
}

// Txn runs fn in one PostgreSQL transaction (read committed); GetForUpdate
// takes a transaction-scoped advisory lock on the key, which also covers a
// key that does not exist yet (a row lock would not). The transaction's
// writes are buffered and sent when fn returns, one statement per table
// (pgKV.flush): a request's records cost a few statements, not one each.
func (p *Postgres) Txn(ctx context.Context, fn func(KV) error) error {
	ctx, cancel := context.WithTimeout(ctx, p.opTimeout)
	defer cancel()
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		kv := &pgKV{ctx: ctx, tx: tx}
		if err := fn(kv); err != nil {
			return err
		}
		return kv.flush()
	})
}

type pgKV struct {
	ctx context.Context //nolint:containedctx // lives for one transaction callback
	tx  pgx.Tx
	// writes are the transaction's Sets and Dels not yet sent, by table
	// and key (the last one of a key wins); reads consult them first.
	writes map[string]map[string]pgWrite
}

// pgWrite is a buffered Set (value) or Del (del).
type pgWrite struct {
	value []byte
	del   bool
}

func (k *pgKV) buffered(bucket, key []byte) (pgWrite, bool) {
	w, ok := k.writes[string(bucket)][string(key)]
	return w, ok
}

func (k *pgKV) read(bucket, key []byte) ([]byte, error) {
	if w, ok := k.buffered(bucket, key); ok {
		if w.del {
			return nil, fmt.Errorf("store: %s/%s: %w", bucket, key, database.ErrNotFound)
		}
		return append([]byte{}, w.value...), nil // never nil, as get
	}
	return get(k.ctx, k.tx, bucket, key)
}

func (k *pgKV) Get(bucket, key []byte) ([]byte, error) { return k.read(bucket, key) }

func (k *pgKV) GetForUpdate(bucket, key []byte) ([]byte, error) {
	if _, err := k.tx.Exec(k.ctx, "SELECT pg_advisory_xact_lock($1)", lockKey(string(bucket)+"\x00"+string(key))); err != nil {
		return nil, fmt.Errorf("store: lock %s: %w", bucket, err)
	}
	return k.read(bucket, key)
}

func (k *pgKV) Set(bucket, key, value []byte) error {
	k.buffer(bucket, key, pgWrite{value: bytes.Clone(value)})
	return nil
}

func (k *pgKV) Del(bucket, key []byte) error {
	k.buffer(bucket, key, pgWrite{del: true})
	return nil
}

func (k *pgKV) buffer(bucket, key []byte, w pgWrite) {
	if k.writes == nil {
		k.writes = map[string]map[string]pgWrite{}
	}
	t := k.writes[string(bucket)]
	if t == nil {
		t = map[string]pgWrite{}
		k.writes[string(bucket)] = t
	}
	t[string(key)] = w
}

// flush sends the buffered writes: per table, one upsert of every Set and
// one delete of every Del. Tables and keys go in sorted order, so that two
// transactions writing the same rows lock them in the same order.
func (k *pgKV) flush() error {
	for _, table := range slices.Sorted(maps.Keys(k.writes)) {
		var setKeys, setVals, delKeys [][]byte
		for _, key := range slices.Sorted(maps.Keys(k.writes[table])) {
			w := k.writes[table][key]
			if w.del {
				delKeys = append(delKeys, []byte(key))
			} else {
				setKeys, setVals = append(setKeys, []byte(key)), append(setVals, w.value)
			}
		}
		id := ident([]byte(table))
		switch len(setKeys) {
		case 0:
		case 1:
			if err := set(k.ctx, k.tx, []byte(table), setKeys[0], setVals[0]); err != nil {
				return err
			}
		default:
			if _, err := k.tx.Exec(k.ctx, "INSERT INTO "+id+" (nkey, nvalue) SELECT * FROM unnest($1::bytea[], $2::bytea[]) ON CONFLICT (nkey) DO UPDATE SET nvalue = excluded.nvalue", setKeys, setVals); err != nil {
				return fmt.Errorf("store: write %s: %w", table, err)
			}
		}
		switch len(delKeys) {
		case 0:
		case 1:
			if err := del(k.ctx, k.tx, []byte(table), delKeys[0]); err != nil {
				return err
			}
		default:
			if _, err := k.tx.Exec(k.ctx, "DELETE FROM "+id+" WHERE nkey = ANY($1::bytea[])", delKeys); err != nil {
				return fmt.Errorf("store: delete from %s: %w", table, err)
			}
		}
	}
	k.writes = nil
	return nil
}

// IsNotFound reports whether a KV read found nothing.
func IsNotFound(err error) bool { return errors.Is(err, database.ErrNotFound) }
