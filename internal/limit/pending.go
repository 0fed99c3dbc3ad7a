package limit

import (
	"sync"
	"time"
)

// Pending counts the orders of each account that are neither finalized nor
// expired, so that one account cannot pile up unbounded orders (each with
// authorizations and challenges in the store). It is safe for concurrent use.
type Pending struct {
	now  func() time.Time
	mu   sync.Mutex
	byID map[string]map[string]time.Time // account -> order -> expiry
}

// NewPending returns an empty tracker; nil now means time.Now.
func NewPending(now func() time.Time) *Pending {
	if now == nil {
		now = time.Now
	}
	return &Pending{now: now, byID: make(map[string]map[string]time.Time)}
}

// Count returns how many orders of the account are pending now.
func (p *Pending) Count(account string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pruneLocked(account)
}

// Add records a new pending order until it expires.
func (p *Pending) Add(account, order string, expires time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.byID[account]
	if m == nil {
		m = make(map[string]time.Time)
		p.byID[account] = m
	}
	m[order] = expires
}

// Done forgets an order that was finalized.
func (p *Pending) Done(account, order string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m := p.byID[account]; m != nil {
		delete(m, order)
		if len(m) == 0 {
			delete(p.byID, account)
		}
	}
}

func (p *Pending) pruneLocked(account string) int {
	m := p.byID[account]
	now := p.now()
	for id, exp := range m {
		if !exp.After(now) {
			delete(m, id)
		}
	}
	if len(m) == 0 {
		delete(p.byID, account)
	}
	return len(m)
}
