package limit

import (
	"math"
	"net/netip"
	"sync"
	"time"
)

// maxKeys bounds the memory of a Rates: when more clients than this are
// tracked, buckets that have refilled completely (idle clients) are dropped,
// and if that is not enough the whole table is reset. Resetting errs towards
// admitting requests, never towards refusing a legitimate client forever.
const maxKeys = 100_000

// Rates is a set of token buckets keyed by a string (e.g. provisioner,
// route and client address). Each bucket holds PerMinute tokens and refills
// at PerMinute per minute. It is safe for concurrent use.
type Rates struct {
	now     func() time.Time
	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
	max    float64
}

// NewRates returns an empty set; nil now means time.Now.
func NewRates(now func() time.Time) *Rates {
	if now == nil {
		now = time.Now
	}
	return &Rates{now: now, buckets: make(map[string]*bucket)}
}

// Allow takes one token from key's bucket of perMinute tokens. When the
// bucket is empty it reports false and how long until a token is back.
func (r *Rates) Allow(key string, perMinute int) (bool, time.Duration) {
	if perMinute <= 0 {
		return true, 0
	}
	now := r.now()
	rate := float64(perMinute) / 60 // tokens per second
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.buckets[key]
	if b == nil {
		if len(r.buckets) >= maxKeys {
			r.evictLocked(now, rate)
		}
		b = &bucket{tokens: float64(perMinute), last: now, max: float64(perMinute)}
		r.buckets[key] = b
	}
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = math.Min(b.max, b.tokens+dt*rate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration(math.Ceil((1 - b.tokens) / rate * float64(time.Second)))
	return false, wait
}

// evictLocked drops idle buckets, or all of them if none is idle.
func (r *Rates) evictLocked(now time.Time, rate float64) {
	for k, b := range r.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*rate >= b.max {
			delete(r.buckets, k)
		}
	}
	if len(r.buckets) >= maxKeys {
		clear(r.buckets)
	}
}

// ClientKey is the part of a client address that identifies one client for
// rate limiting: the IPv4 address, or the /64 of an IPv6 address (one host
// commonly owns a whole /64). An unparsable address is used verbatim.
func ClientKey(remoteAddr string) string {
	ap, err := netip.ParseAddrPort(remoteAddr)
	var addr netip.Addr
	if err == nil {
		addr = ap.Addr()
	} else if addr, err = netip.ParseAddr(remoteAddr); err != nil {
		return remoteAddr
	}
	addr = addr.Unmap().WithZone("")
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p.String()
	}
	return addr.String()
}
