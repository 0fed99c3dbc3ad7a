package nonce

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Layout of a nonce before base64url: issue time (Unix nanoseconds, big
// endian), random bytes, then the truncated HMAC tag over both. The ID (time
// and random bytes) is what the replay set records; it sorts by issue time,
// so expired entries are a key range.
const (
	timeLen   = 8
	randLen   = 12
	tagLen    = 16
	IDLen     = timeLen + randLen
	rawLen    = IDLen + tagLen
	encodeLen = (rawLen*8 + 5) / 6
)

// Errors a check returns; all of them mean badNonce to the client.
var (
	ErrMalformed = errors.New("nonce is malformed or was not issued by this CA")
	ErrExpired   = errors.New("nonce has expired")
	ErrSpent     = errors.New("nonce has already been used")
)

// ID identifies a nonce in the replay set.
type ID [IDLen]byte

// IssuedAt is when the nonce was issued.
func (id ID) IssuedAt() time.Time {
	return time.Unix(0, int64(binary.BigEndian.Uint64(id[:timeLen]))) //nolint:gosec // written from a positive int64
}

// Spender records spent nonces. Spend reports false if id was spent before;
// it keeps id at least until expires.
type Spender interface {
	Spend(ctx context.Context, id ID, expires time.Time) (fresh bool, err error)
}

// Config configures a Source.
type Config struct {
	// Key authenticates nonces; at least 32 bytes, shared by replicas.
	Key []byte
	// MaxAge is how long a nonce stays usable; zero means DefaultMaxAge.
	MaxAge time.Duration
	// NotBefore refuses nonces issued earlier: set after an unclean stop,
	// when the replay set of the nonces spent before it was lost.
	NotBefore time.Time
	Spent     Spender
	Now       func() time.Time
}

// DefaultMaxAge bounds the replay set: it holds one entry per request of the
// last MaxAge. A client holding an older nonce gets badNonce with a fresh
// one and retries (RFC 8555 section 6.5).
const DefaultMaxAge = 5 * time.Minute

// maxFuture tolerates clock steps between replicas.
const maxFuture = time.Minute

// Source issues and checks nonces.
type Source struct {
	key       []byte
	maxAge    time.Duration
	notBefore time.Time
	spent     Spender
	now       func() time.Time
}

// New returns a Source.
func New(cfg Config) (*Source, error) {
	if len(cfg.Key) < 32 {
		return nil, errors.New("nonce: key must be at least 32 bytes")
	}
	if cfg.Spent == nil {
		return nil, errors.New("nonce: a replay set is required")
	}
	s := &Source{key: cfg.Key, maxAge: cfg.MaxAge, notBefore: cfg.NotBefore, spent: cfg.Spent, now: cfg.Now}
	if s.maxAge <= 0 {
		s.maxAge = DefaultMaxAge
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// MaxAge is how long a nonce stays usable.
func (s *Source) MaxAge() time.Duration { return s.maxAge }

// New issues a nonce.
func (s *Source) New() (string, error) {
	var raw [rawLen]byte
	binary.BigEndian.PutUint64(raw[:timeLen], uint64(s.now().UnixNano())) //nolint:gosec // time after 1970
	if _, err := rand.Read(raw[timeLen:IDLen]); err != nil {
		return "", fmt.Errorf("nonce: %w", err)
	}
	copy(raw[IDLen:], s.tag(raw[:IDLen]))
	return base64.RawURLEncoding.EncodeToString(raw[:]), nil
}

func (s *Source) tag(id []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write(id)
	return m.Sum(nil)[:tagLen]
}

// Parse checks a nonce's form, tag and age without spending it.
func (s *Source) Parse(nonce string) (ID, error) {
	var id ID
	if len(nonce) != encodeLen {
		return id, ErrMalformed
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(nonce)
	if err != nil || len(raw) != rawLen {
		return id, ErrMalformed
	}
	if !hmac.Equal(raw[IDLen:], s.tag(raw[:IDLen])) {
		return id, ErrMalformed
	}
	copy(id[:], raw[:IDLen])
	at, now := id.IssuedAt(), s.now()
	switch {
	case at.After(now.Add(maxFuture)):
		return id, ErrMalformed
	case now.Sub(at) > s.maxAge, at.Before(s.notBefore):
		return id, ErrExpired
	}
	return id, nil
}

// Consume checks a nonce and spends it: of any number of concurrent uses,
// at one replica or several, exactly one succeeds.
func (s *Source) Consume(ctx context.Context, nonce string) error {
	id, err := s.Parse(nonce)
	if err != nil {
		return err
	}
	fresh, err := s.spent.Spend(ctx, id, id.IssuedAt().Add(s.maxAge))
	switch {
	case err != nil:
		return fmt.Errorf("nonce: record spent nonce: %w", err)
	case !fresh:
		return ErrSpent
	}
	return nil
}
