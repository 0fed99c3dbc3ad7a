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
// key that does not exist yet (a row lock would not).
//
// Each round trip to PostgreSQL costs a wake-up and a pair of system calls
// at both ends, which on a CA sharing its cores with the database is a
// large part of a request's CPU, so the transaction is pipelined:
//   - BEGIN is sent with the first statement, and a transaction that reads
//     nothing and writes nothing sends nothing;
//   - GetForUpdate sends the lock and the read together (the read runs after
//     the lock is granted, so it sees what the previous holder committed);
//   - writes are buffered and sent at the end with COMMIT, one statement per
//     table (pgKV.commit), all in one round trip.
//
// A transaction left open by an error (a statement that failed, a
// connection that broke) is rolled back, and a connection whose state is
// not known is closed rather than returned to the pool (pgxpool destroys a
// connection released inside a transaction).
func (p *Postgres) Txn(ctx context.Context, fn func(KV) error) error {
	ctx, cancel := context.WithTimeout(ctx, p.opTimeout)
	defer cancel()
	c, err := p.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("store: begin: %w", err)
	}
	defer c.Release()
	kv := &pgKV{ctx: ctx, conn: c.Conn()}
	err = fn(kv)
	if err == nil {
		err = kv.commit()
	}
	if err != nil && !kv.conn.IsClosed() && kv.conn.PgConn().TxStatus() != 'I' {
		// Best effort: if ROLLBACK fails, the connection is not idle and
		// Release closes it, which ends the transaction as well.
		_, _ = kv.conn.Exec(ctx, "ROLLBACK")
	}
	return err
}

type pgKV struct {
	ctx  context.Context //nolint:containedctx // lives for one transaction callback
	conn *pgx.Conn
	// begun is set while the server has the transaction open.
	begun bool
	// failed is the first statement error: PostgreSQL aborts the
	// transaction at it, and so does commit, even if the callback
	// swallowed it.
	failed error
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

// batch starts a pipeline, opening the transaction if this is its first
// statement.
func (k *pgKV) batch() *pgx.Batch {
	b := &pgx.Batch{}
	if !k.begun {
		b.Queue("BEGIN")
	}
	return b
}

// send runs a pipeline; results reads its statements' results after
// BEGIN's. Whether the transaction is open afterwards is asked of the
// connection, not assumed: a pipeline can fail before BEGIN runs (a
// statement PostgreSQL refuses to prepare), and writes sent later without
// a BEGIN would commit one by one.
func (k *pgKV) send(b *pgx.Batch, results func(pgx.BatchResults) error) error {
	opening := !k.begun
	br := k.conn.SendBatch(k.ctx, b)
	var err error
	if opening {
		_, err = br.Exec()
	}
	if err == nil {
		err = results(br)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	k.begun = !k.conn.IsClosed() && k.conn.PgConn().TxStatus() != 'I'
	if err != nil && k.failed == nil {
		k.failed = err
	}
	return err
}

// read returns the buffered write of a key, or reads it, with the lock of
// lockID (non-zero) taken first in the same round trip.
func (k *pgKV) read(bucket, key []byte, lockID int64) ([]byte, error) {
	if w, ok := k.buffered(bucket, key); ok && lockID == 0 {
		return bufferedValue(bucket, key, w)
	}
	b := k.batch()
	if lockID != 0 {
		b.Queue("SELECT pg_advisory_xact_lock($1)", lockID)
	}
	b.Queue("SELECT nvalue FROM "+ident(bucket)+" WHERE nkey = $1", key)
	var v []byte
	var found bool
	err := k.send(b, func(br pgx.BatchResults) error {
		if lockID != 0 {
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("store: lock %s: %w", bucket, err)
			}
		}
		err := br.QueryRow().Scan(&v)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return fmt.Errorf("store: read %s: %w", bucket, err)
		default:
			found = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// The transaction's own write wins over what the read found (the lock
	// was still needed: it is held until commit).
	if w, ok := k.buffered(bucket, key); ok {
		return bufferedValue(bucket, key, w)
	}
	if !found {
		return nil, fmt.Errorf("store: %s/%s: %w", bucket, key, database.ErrNotFound)
	}
	if v == nil {
		v = []byte{}
	}
	return v, nil
}

func bufferedValue(bucket, key []byte, w pgWrite) ([]byte, error) {
	if w.del {
		return nil, fmt.Errorf("store: %s/%s: %w", bucket, key, database.ErrNotFound)
	}
	return append([]byte{}, w.value...), nil // never nil, as get
}

func (k *pgKV) Get(bucket, key []byte) ([]byte, error) { return k.read(bucket, key, 0) }

func (k *pgKV) GetForUpdate(bucket, key []byte) ([]byte, error) {
	return k.read(bucket, key, lockKey(string(bucket)+"\x00"+string(key)))
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

// commit sends the buffered writes and COMMIT in one pipeline: per table,
// one upsert of every Set and one delete of every Del. Tables and keys go
// in sorted order, so that two transactions writing the same rows lock
// them in the same order. A transaction that wrote nothing and read
// nothing has nothing to send.
func (k *pgKV) commit() error {
	if k.failed != nil {
		return fmt.Errorf("store: commit: %w: an earlier statement failed: %w", pgx.ErrTxCommitRollback, k.failed)
	}
	if !k.begun && len(k.writes) == 0 {
		return nil
	}
	b := k.batch()
	var what []string // what each statement after BEGIN does, for errors
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
			b.Queue(setSQL([]byte(table)), setKeys[0], setVals[0])
			what = append(what, "write "+table)
		default:
			b.Queue("INSERT INTO "+id+" (nkey, nvalue) SELECT * FROM unnest($1::bytea[], $2::bytea[]) ON CONFLICT (nkey) DO UPDATE SET nvalue = excluded.nvalue", setKeys, setVals)
			what = append(what, "write "+table)
		}
		switch len(delKeys) {
		case 0:
		case 1:
			b.Queue(delSQL([]byte(table)), delKeys[0])
			what = append(what, "delete from "+table)
		default:
			b.Queue("DELETE FROM "+id+" WHERE nkey = ANY($1::bytea[])", delKeys)
			what = append(what, "delete from "+table)
		}
	}
	b.Queue("COMMIT")
	what = append(what, "commit")
	err := k.send(b, func(br pgx.BatchResults) error {
		for _, w := range what {
			tag, err := br.Exec()
			if err != nil {
				return fmt.Errorf("store: %s: %w", w, err)
			}
			// COMMIT of a transaction an earlier statement failed in
			// answers ROLLBACK, not an error: the callback may have
			// swallowed that statement's error, and nothing was written.
			if w == "commit" && tag.String() == "ROLLBACK" {
				return fmt.Errorf("store: commit: %w", pgx.ErrTxCommitRollback)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	k.writes = nil
	return nil
}

// IsNotFound reports whether a KV read found nothing.
func IsNotFound(err error) bool { return errors.Is(err, database.ErrNotFound) }
