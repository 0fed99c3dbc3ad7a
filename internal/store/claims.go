package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// orderClaimsTable holds the finalize claims of orders being finalized.
var orderClaimsTable = []byte("crank_order_claims")

// ErrClaimed is returned when another request is finalizing the order.
var ErrClaimed = errors.New("order is being finalized by another request")

type orderClaim struct {
	Holder string    `json:"holder"`
	At     time.Time `json:"at"`
}

// ClaimOrder claims an order for finalization: of concurrent finalizes of
// one order, at one replica or several, exactly one gets the claim and
// signs; the others get ErrClaimed. A claim older than ttl (its holder
// died while signing) may be taken over. The holder must re-read the order
// after claiming: a finalize that read the order before another one
// completed must not sign it again.
func (s *Store) ClaimOrder(_ context.Context, orderID, holder string, ttl time.Duration) error {
	if s.local != nil {
		return s.local.claim(orderID, holder)
	}
	now := s.now().UTC()
	val, err := json.Marshal(orderClaim{Holder: holder, At: now})
	if err != nil {
		return fmt.Errorf("store: encode claim: %w", err)
	}
	cur, swapped, err := s.db.CmpAndSwap(orderClaimsTable, []byte(orderID), nil, val)
	switch {
	case err != nil:
		return fmt.Errorf("store: claim order %s: %w", orderID, err)
	case swapped:
		return nil
	}
	var c orderClaim
	if json.Unmarshal(cur, &c) == nil && now.Sub(c.At) < ttl {
		return ErrClaimed
	}
	if _, swapped, err = s.db.CmpAndSwap(orderClaimsTable, []byte(orderID), cur, val); err != nil {
		return fmt.Errorf("store: claim order %s: %w", orderID, err)
	} else if !swapped {
		return ErrClaimed
	}
	return nil
}

// ReleaseOrderClaim ends a finalize's claim (whatever its outcome): the
// order is then valid, or still ready for a retry.
func (s *Store) ReleaseOrderClaim(_ context.Context, orderID, holder string) error {
	if s.local != nil {
		s.local.release(orderID, holder)
		return nil
	}
	cur, err := s.db.Get(orderClaimsTable, []byte(orderID))
	if err != nil {
		return nil //nolint:nilerr // absent: nothing to release
	}
	var c orderClaim
	if json.Unmarshal(cur, &c) != nil || c.Holder != holder {
		return nil
	}
	// Only a claim older than the ttl can change hands between the read
	// and the delete; its new holder re-reads the order before signing.
	if err := s.db.Del(orderClaimsTable, []byte(orderID)); err != nil {
		return fmt.Errorf("store: release claim of %s: %w", orderID, err)
	}
	return nil
}

// ReleaseOrderClaimIn ends a finalize claim inside the transaction that
// completes the order.
func (s *Store) ReleaseOrderClaimIn(kv KV, orderID string) error {
	if s.local != nil {
		s.local.release(orderID, "")
		return nil
	}
	if err := kv.Del(orderClaimsTable, []byte(orderID)); err != nil {
		return fmt.Errorf("store: release claim of %s: %w", orderID, err)
	}
	return nil
}

// localClaims are the claims of a store one process owns (bbolt locks its
// file): in memory, they cost no write, and die with the process as they
// should.
type localClaims struct {
	mu sync.Mutex
	m  map[string]string // order id: holder
}

func (l *localClaims) claim(orderID, holder string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, held := l.m[orderID]; held {
		return ErrClaimed
	}
	l.m[orderID] = holder
	return nil
}

// release drops a claim of holder ("": whoever holds it).
func (l *localClaims) release(orderID, holder string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h, ok := l.m[orderID]; ok && (holder == "" || h == holder) {
		delete(l.m, orderID)
	}
}
