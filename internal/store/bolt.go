package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/smallstep/nosql/database"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Bolt is crank-ca's nosql driver for an embedded bbolt file. It keeps
// smallstep's layout (one top-level bucket per table, keys and values as
// given), so files written by smallstep's driver open unchanged, and adds
// group commit: smallstep writes every record in its own transaction, and
// a bbolt commit costs two fdatasync calls. Writers that arrive while a
// commit is running wait and are committed together in the next
// transaction: one writer alone pays no delay, and under load N concurrent
// writers share one pair of syncs. Every write still returns only after its
// transaction is on disk, so a crash loses nothing that was acknowledged.
type Bolt struct {
	db *bolt.DB

	mu      sync.Mutex
	queue   []*boltOp
	leading bool
}

// boltOp is one writer's work inside a group commit.
type boltOp struct {
	fn   func(*bolt.Tx) error
	done chan error
	// lead is closed when this queued writer is to lead the next commit.
	lead chan struct{}
}

// BoltConfig configures OpenBolt.
type BoltConfig struct {
	// Path is the database file; it is created 0600 if missing.
	Path string
	// Timeout bounds the wait for the file lock another process holds.
	Timeout time.Duration
	// CompactMinSize is the file size from which a mostly free file is
	// compacted at open; zero means 64 MiB.
	CompactMinSize int64
}

// OpenBolt opens (or creates) a bbolt store, compacting it first when most
// of the file is free pages (see compactIfSparse).
func OpenBolt(cfg BoltConfig) (*Bolt, error) {
	db, err := openBoltFile(cfg)
	if err != nil {
		return nil, err
	}
	if db, err = compactIfSparse(db, cfg); err != nil {
		return nil, err
	}
	return &Bolt{db: db}, nil
}

func openBoltFile(cfg BoltConfig) (*bolt.DB, error) {
	db, err := bolt.Open(cfg.Path, 0o600, &bolt.Options{
		Timeout: cfg.Timeout,
		// The freelist is rebuilt by scanning at open instead of being
		// written at every commit: one page less per transaction.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		holder := ""
		if pid := lockHolder(cfg.Path); pid > 0 {
			holder = fmt.Sprintf(" by process %d", pid)
		}
		return nil, fmt.Errorf("%w: %s is locked%s: is another `crank-ca serve` running on this configuration? Stop it, or give this one its own storage.dataSource", ErrStoreInUse, cfg.Path, holder)
	case err != nil:
		return nil, fmt.Errorf("store: open %s: %w", cfg.Path, err)
	}
	return db, nil
}

// Compaction defaults: bbolt reuses freed pages but never shrinks its
// file, so a burst of issuances (100,000 within a day: about 650 MB) leaves
// a large file of free pages after retention deleted the data.
const (
	compactMinSize      = 64 << 20
	compactFreeFraction = 0.5
)

// compactIfSparse rewrites the file when it is larger than compactMinSize
// and more than half of it is free, before anything is served: the copy is
// written beside it, synced, and renamed over it while the original is
// still open and locked. A failure keeps the original.
func compactIfSparse(db *bolt.DB, cfg BoltConfig) (*bolt.DB, error) {
	fi, err := os.Stat(cfg.Path)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	free := int64(db.Stats().FreePageN) * int64(db.Info().PageSize)
	minSize := cfg.CompactMinSize
	if minSize <= 0 {
		minSize = compactMinSize
	}
	if fi.Size() < minSize || float64(free) < compactFreeFraction*float64(fi.Size()) {
		return db, nil
	}
	tmp := cfg.Path + ".compact"
	_ = os.Remove(tmp)
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return db, nil //nolint:nilerr // compaction is an optimisation; serve the original
	}
	if err := bolt.Compact(dst, db, 64<<20); err != nil {
		_ = dst.Close()
		_ = os.Remove(tmp)
		return db, nil //nolint:nilerr // as above
	}
	if err := dst.Sync(); err != nil || dst.Close() != nil {
		_ = os.Remove(tmp)
		return db, nil //nolint:nilerr // as above
	}
	if err := os.Rename(tmp, cfg.Path); err != nil {
		_ = os.Remove(tmp)
		return db, nil //nolint:nilerr // as above
	}
	if d, err := os.Open(filepath.Dir(cfg.Path)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	_ = db.Close()
	return openBoltFile(cfg)
}

// Open is part of nosql.DB; a Bolt is opened by OpenBolt.
func (b *Bolt) Open(string, ...database.Option) error {
	return errors.New("store: a Bolt store is opened with OpenBolt")
}

// Close closes the file.
func (b *Bolt) Close() error { return b.db.Close() }

// write runs fn in a group commit and returns fn's own error, or the
// commit's.
func (b *Bolt) write(fn func(*bolt.Tx) error) error {
	op := &boltOp{fn: fn, done: make(chan error, 1), lead: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, op)
	if b.leading {
		b.mu.Unlock()
		select {
		case err := <-op.done:
			return err
		case <-op.lead:
			// The previous leader committed its batch and handed over.
		}
	} else {
		b.leading = true
		b.mu.Unlock()
	}
	// This writer leads: it commits everything queued (its own op
	// included), then hands the lead to the first writer that queued
	// meanwhile, so that it returns after one commit however busy the
	// store is.
	b.mu.Lock()
	batch := b.queue
	b.queue = nil
	b.mu.Unlock()
	b.commit(batch)
	b.mu.Lock()
	if len(b.queue) > 0 {
		close(b.queue[0].lead)
	} else {
		b.leading = false
	}
	b.mu.Unlock()
	return <-op.done
}

// commit runs a batch in one transaction. An operation that fails is
// answered with its error and the transaction is rolled back and run again
// without it, so one writer's failure never writes another's half.
func (b *Bolt) commit(batch []*boltOp) {
	for len(batch) > 0 {
		failed := -1
		var opErr error
		err := b.db.Update(func(tx *bolt.Tx) error {
			for i, op := range batch {
				if err := op.fn(tx); err != nil {
					failed, opErr = i, err
					return err
				}
			}
			return nil
		})
		if failed < 0 {
			for _, op := range batch {
				op.done <- err
			}
			return
		}
		batch[failed].done <- opErr
		batch = append(batch[:failed:failed], batch[failed+1:]...)
	}
}

func bucketOf(tx *bolt.Tx, name []byte) (*bolt.Bucket, error) {
	bk := tx.Bucket(name)
	if bk == nil {
		return nil, fmt.Errorf("store: table %s: %w", name, database.ErrNotFound)
	}
	return bk, nil
}

// Get returns a copy of the value, or an error matching database.ErrNotFound.
func (b *Bolt) Get(bucket, key []byte) ([]byte, error) {
	var out []byte
	err := b.db.View(func(tx *bolt.Tx) error {
		bk, err := bucketOf(tx, bucket)
		if err != nil {
			return err
		}
		v := bk.Get(key)
		if v == nil {
			return fmt.Errorf("store: %s/%s: %w", bucket, key, database.ErrNotFound)
		}
		out = bytes.Clone(v)
		return nil
	})
	return out, err
}

// Set writes a value.
func (b *Bolt) Set(bucket, key, value []byte) error {
	return b.write(func(tx *bolt.Tx) error {
		bk, err := bucketOf(tx, bucket)
		if err != nil {
			return err
		}
		return bk.Put(key, value)
	})
}

// Del deletes a key (absent keys are not an error).
func (b *Bolt) Del(bucket, key []byte) error {
	return b.write(func(tx *bolt.Tx) error {
		bk, err := bucketOf(tx, bucket)
		if err != nil {
			return err
		}
		return bk.Delete(key)
	})
}

// CmpAndSwap writes newValue if the stored value equals oldValue (nil:
// absent). It returns the value now stored and whether it swapped.
func (b *Bolt) CmpAndSwap(bucket, key, oldValue, newValue []byte) ([]byte, bool, error) {
	var cur []byte
	var swapped bool
	err := b.write(func(tx *bolt.Tx) error {
		bk, err := bucketOf(tx, bucket)
		if err != nil {
			return err
		}
		v := bk.Get(key)
		if !bytes.Equal(v, oldValue) {
			cur, swapped = bytes.Clone(v), false
			return nil
		}
		cur, swapped = newValue, true
		return bk.Put(key, newValue)
	})
	if err != nil {
		return nil, false, err
	}
	return cur, swapped, nil
}

// List returns every entry of a table.
func (b *Bolt) List(bucket []byte) ([]*database.Entry, error) {
	return b.Scan(bucket, nil, 0)
}

// Scan returns entries with keys >= start in key order, at most limit of
// them (0: all). Retention reads its expiry index with it in batches.
func (b *Bolt) Scan(bucket, start []byte, limit int) ([]*database.Entry, error) {
	var out []*database.Entry
	err := b.db.View(func(tx *bolt.Tx) error {
		bk, err := bucketOf(tx, bucket)
		if err != nil {
			return err
		}
		c := bk.Cursor()
		k, v := c.First()
		if start != nil {
			k, v = c.Seek(start)
		}
		for ; k != nil && (limit <= 0 || len(out) < limit); k, v = c.Next() {
			out = append(out, &database.Entry{Bucket: bucket, Key: bytes.Clone(k), Value: bytes.Clone(v)})
		}
		return nil
	})
	return out, err
}

// Update runs nosql operations in one transaction.
func (b *Bolt) Update(t *database.Tx) error {
	return b.write(func(tx *bolt.Tx) error {
		for _, q := range t.Operations {
			switch q.Cmd {
			case database.CreateTable:
				if _, err := tx.CreateBucketIfNotExists(q.Bucket); err != nil {
					return err
				}
				continue
			case database.DeleteTable:
				if err := tx.DeleteBucket(q.Bucket); err != nil {
					return err
				}
				continue
			}
			bk, err := bucketOf(tx, q.Bucket)
			if err != nil {
				return err
			}
			switch q.Cmd {
			case database.Get:
				v := bk.Get(q.Key)
				if v == nil {
					return fmt.Errorf("store: %s/%s: %w", q.Bucket, q.Key, database.ErrNotFound)
				}
				q.Result = bytes.Clone(v)
			case database.Set:
				if err := bk.Put(q.Key, q.Value); err != nil {
					return err
				}
			case database.Delete:
				if err := bk.Delete(q.Key); err != nil {
					return err
				}
			case database.CmpAndSwap:
				v := bk.Get(q.Key)
				if !bytes.Equal(v, q.CmpValue) {
					q.Result, q.Swapped = bytes.Clone(v), false
					continue
				}
				if err := bk.Put(q.Key, q.Value); err != nil {
					return err
				}
				q.Result, q.Swapped = q.Value, true
			default:
				return fmt.Errorf("store: operation %s is not supported", q.Cmd)
			}
		}
		return nil
	})
}

// CreateTable creates a table if it does not exist.
func (b *Bolt) CreateTable(bucket []byte) error {
	return b.write(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	})
}

// DeleteTable deletes a table.
func (b *Bolt) DeleteTable(bucket []byte) error {
	return b.write(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucket) })
}

// Ping reads the file's meta page: the readiness probe of an embedded store.
func (b *Bolt) Ping() error {
	return b.db.View(func(*bolt.Tx) error { return nil })
}
