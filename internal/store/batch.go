package store

import (
	"context"
	"fmt"
	"sync"
)

// insertBatcher group-commits "insert if absent" of many concurrent
// requests into one statement: on PostgreSQL every nonce a request spends
// was its own commit (a WAL flush each); under load the spends that arrive
// while one statement runs share the next. One request at a time leads:
// it takes everything pending, runs one statement, hands the lead to the
// first request that queued meanwhile, and returns; so no request carries
// the load of others for more than one round trip.
type insertBatcher struct {
	// insert inserts the keys that are absent and reports which it
	// inserted; keys are distinct.
	insert func(ctx context.Context, keys [][]byte) (map[string]bool, error)

	mu      sync.Mutex
	pending []*insertReq
	leading bool
}

type insertReq struct {
	key  []byte
	done chan insertResult // buffered 1
	lead chan struct{}     // buffered 1: take the lead
}

type insertResult struct {
	fresh bool
	err   error
}

// insertNew inserts key unless it exists: true if this call inserted it.
// Of concurrent calls with one key exactly one gets true.
func (b *insertBatcher) insertNew(ctx context.Context, key []byte) (bool, error) {
	r := &insertReq{key: key, done: make(chan insertResult, 1), lead: make(chan struct{}, 1)}
	b.mu.Lock()
	b.pending = append(b.pending, r)
	lead := !b.leading
	b.leading = true
	b.mu.Unlock()
	if !lead {
		select {
		case res := <-r.done:
			return res.fresh, res.err
		case <-r.lead:
		}
	}
	b.mu.Lock()
	batch := b.pending
	b.pending = nil
	b.mu.Unlock()
	b.flush(ctx, batch)
	b.mu.Lock()
	if len(b.pending) > 0 {
		b.pending[0].lead <- struct{}{}
	} else {
		b.leading = false
	}
	b.mu.Unlock()
	res := <-r.done
	return res.fresh, res.err
}

// flush runs one statement for batch and answers every request in it. The
// statement runs without the leader's cancellation: the others wait on it.
func (b *insertBatcher) flush(ctx context.Context, batch []*insertReq) {
	keys := make([][]byte, 0, len(batch))
	seen := make(map[string]bool, len(batch))
	for _, r := range batch {
		if !seen[string(r.key)] {
			seen[string(r.key)] = true
			keys = append(keys, r.key)
		}
	}
	inserted, err := b.insert(context.WithoutCancel(ctx), keys)
	for _, r := range batch {
		if err != nil {
			r.done <- insertResult{err: err}
			continue
		}
		// A key twice in one batch: the first request gets it.
		fresh := inserted[string(r.key)]
		delete(inserted, string(r.key))
		r.done <- insertResult{fresh: fresh}
	}
}

// InsertNew inserts key with value into bucket if it is absent, as one
// statement shared with concurrent calls (see insertBatcher): true if this
// call inserted it. Of any number of calls with one key, at any replica,
// exactly one gets true. A row with an empty value counts as present.
func (p *Postgres) InsertNew(ctx context.Context, bucket, key, value []byte) (bool, error) {
	name := string(bucket) + "\x00" + string(value)
	v, ok := p.batchers.Load(name)
	if !ok {
		v, _ = p.batchers.LoadOrStore(name, &insertBatcher{insert: func(ctx context.Context, keys [][]byte) (map[string]bool, error) {
			return p.insertAbsent(ctx, bucket, keys, value)
		}})
	}
	return v.(*insertBatcher).insertNew(ctx, key)
}

// insertAbsent is one INSERT ... ON CONFLICT DO NOTHING for many keys: one
// commit, and the row locks make it atomic against other replicas.
func (p *Postgres) insertAbsent(ctx context.Context, bucket []byte, keys [][]byte, value []byte) (map[string]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, p.opTimeout)
	defer cancel()
	rows, err := p.pool.Query(ctx, "INSERT INTO "+ident(bucket)+" (nkey, nvalue) SELECT k, $2 FROM unnest($1::bytea[]) AS k ON CONFLICT (nkey) DO NOTHING RETURNING nkey", keys, value)
	if err != nil {
		return nil, fmt.Errorf("store: insert into %s: %w", bucket, err)
	}
	defer rows.Close()
	inserted := make(map[string]bool, len(keys))
	for rows.Next() {
		var k []byte
		if err := rows.Scan(&k); err != nil {
			return nil, fmt.Errorf("store: insert into %s: %w", bucket, err)
		}
		inserted[string(k)] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: insert into %s: %w", bucket, err)
	}
	return inserted, nil
}
