package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
)

var (
	bindingTable   = []byte("crank_account_bindings")
	tokenUsesTable = []byte("crank_token_uses")
)

// ErrNotFound is returned when a record does not exist.
var ErrNotFound = errors.New("not found")

// ErrTokenUsed is returned when a join token (or EAB key) has already been spent.
var ErrTokenUsed = errors.New("token already used")

// Binding records that an ACME account belongs to a worker identity. Orders,
// audit, and (later) admin listing and disabling all read this one record.
type Binding struct {
	AccountID   string    `json:"accountID"`
	Provisioner string    `json:"provisioner"`
	Worker      string    `json:"worker,omitempty"`
	KID         string    `json:"kid"`
	BoundAt     time.Time `json:"boundAt"`
	// TokenExpiresAt lets retention forget the spent token once it could
	// not be used anyway.
	TokenExpiresAt time.Time `json:"tokenExpiresAt,omitzero"`
	// An account bound through a JWT attestation records the attested
	// identity itself (it is not a configured worker) and where it came
	// from; its binding ages out after the provisioner's maxBindingAge.
	Attestor string   `json:"attestor,omitempty"`
	SPIFFEID string   `json:"spiffeID,omitempty"`
	DNSNames []string `json:"dnsNames,omitempty"`
	IPs      []string `json:"ips,omitempty"`
	PodName  string   `json:"podName,omitempty"`
	PodUID   string   `json:"podUID,omitempty"`
}

// SpendJTI records the "jti" of an attestation JWT as used, so that one
// token attests once, also across replicas: ErrTokenUsed on a replay.
// Retention forgets it once the token has expired.
func (s *Store) SpendJTI(ctx context.Context, issuer, jti string, expires time.Time) error {
	val, err := json.Marshal(Binding{KID: "jti", TokenExpiresAt: expires.UTC()})
	if err != nil {
		return fmt.Errorf("store: encode jti: %w", err)
	}
	key := tokenUseKey("jti\x00" + issuer + "\x00" + jti)
	if err := s.spend(ctx, key, val); err != nil {
		return err
	}
	return s.indexSpentToken(key, expires)
}

// Config configures a Store.
type Config struct {
	// DB is the open nosql database shared with smallstep.
	DB nosql.DB
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Observe, if set, is told the duration of crank-ca's own store work
	// (metrics): every transaction (op OpTxn, a whole request's records in
	// one commit) and every nonce spend (OpNonce; only a shared
	// store has them, bbolt's replay set is in memory). smallstep's record by
	// record operations are timed where they enter the store instead.
	Observe func(op string, d time.Duration)
}

// Operations as Config.Observe names them.
const (
	OpTxn   = "txn"
	OpNonce = "nonce"
)

// Store reads and writes crank-ca's records.
type Store struct {
	db      nosql.DB
	now     func() time.Time
	observe func(op string, d time.Duration)
	// local holds finalize claims in memory when one process owns the
	// store (bbolt); nil for a shared store.
	local *localClaims
}

// New creates the tables it needs (idempotent) and returns a Store.
func New(cfg Config) (*Store, error) {
	if cfg.DB == nil {
		return nil, errors.New("store: nil DB")
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	for _, t := range [][]byte{bindingTable, tokenUsesTable, certsTable, workersTable, secretsTable, spentNoncesTable, orderClaimsTable, expiryTable} {
		if err := cfg.DB.CreateTable(t); err != nil {
			return nil, fmt.Errorf("store: create table %s: %w", t, err)
		}
	}
	s := &Store{db: cfg.DB, now: now, observe: cfg.Observe}
	if _, ok := cfg.DB.(*Bolt); ok {
		s.local = &localClaims{m: map[string]string{}}
	}
	return s, nil
}

// tokenUseKey is the key of a spent token: a digest, because kids carry
// name hints and can exceed PostgreSQL's 255-byte key limit in nosql tables.
func tokenUseKey(kid string) []byte {
	sum := sha256.Sum256([]byte(kid))
	return []byte("sha256:" + hex.EncodeToString(sum[:]))
}

// TokenUsed reports whether a token id has been spent.
func (s *Store) TokenUsed(_ context.Context, kid string) (bool, error) {
	_, err := s.db.Get(tokenUsesTable, tokenUseKey(kid))
	switch {
	case err == nil:
		return true, nil
	case database.IsErrNotFound(err):
		return false, nil
	default:
		return false, fmt.Errorf("store: read token use: %w", err)
	}
}

// Bind spends the token b.KID and binds b.AccountID to b's identity. The spend
// is an atomic compare-and-swap from "absent", so of two concurrent binds of
// one token exactly one wins; the loser gets ErrTokenUsed and nothing is
// written for it.
func (s *Store) Bind(ctx context.Context, b Binding) error {
	if b.AccountID == "" || b.KID == "" {
		return errors.New("store: binding needs an account and a token id")
	}
	if b.BoundAt.IsZero() {
		b.BoundAt = s.now().UTC()
	}
	val, err := json.Marshal(b)
	if err != nil {
		return fmt.Errorf("store: encode binding: %w", err)
	}
	if err := s.spend(ctx, tokenUseKey(b.KID), val); err != nil {
		return err
	}
	if err := s.indexSpentToken(tokenUseKey(b.KID), b.TokenExpiresAt); err != nil {
		return err
	}
	if err := s.db.Set(bindingTable, []byte(b.AccountID), val); err != nil {
		// The token is spent but the account stays unbound: fail closed.
		return fmt.Errorf("store: write binding: %w", err)
	}
	return nil
}

// BindIn is Bind inside a transaction, so that a new account, its binding
// and the token's spend commit together or not at all: an account is never
// left unbound by a lost race or a crash between the writes. The token's
// key is held for update, so of two transactions spending one token (at
// any replica) exactly one commits; the other gets ErrTokenUsed.
func BindIn(kv KV, b Binding) error {
	if b.AccountID == "" || b.KID == "" || b.BoundAt.IsZero() {
		return errors.New("store: binding needs an account, a token id and a time")
	}
	val, err := json.Marshal(b)
	if err != nil {
		return fmt.Errorf("store: encode binding: %w", err)
	}
	key := tokenUseKey(b.KID)
	switch _, err := kv.GetForUpdate(tokenUsesTable, key); {
	case err == nil:
		return ErrTokenUsed
	case !IsNotFound(err):
		return fmt.Errorf("store: read token use: %w", err)
	}
	if err := kv.Set(tokenUsesTable, key, val); err != nil {
		return fmt.Errorf("store: spend token: %w", err)
	}
	if !b.TokenExpiresAt.IsZero() {
		if err := putExpiryIn(kv, expiry{kind: kindSpentToken, at: b.TokenExpiresAt, id: string(key)}); err != nil {
			return err
		}
	}
	if err := kv.Set(bindingTable, []byte(b.AccountID), val); err != nil {
		return fmt.Errorf("store: write binding: %w", err)
	}
	return nil
}

// spend records a token as used if it is not yet: ErrTokenUsed otherwise.
// crank-ca's drivers make the compare-and-swap from "absent" atomic, also
// across replicas on one PostgreSQL database, so of two concurrent spends
// exactly one wins.
func (s *Store) spend(_ context.Context, key, val []byte) error {
	if _, swapped, err := s.db.CmpAndSwap(tokenUsesTable, key, nil, val); err != nil {
		return fmt.Errorf("store: spend token: %w", err)
	} else if !swapped {
		return ErrTokenUsed
	}
	return nil
}

// AccountByKeyID returns the id of the ACME account registered with the
// key of this thumbprint (acme.KeyToID), read from smallstep's index, or
// ErrNotFound.
func (s *Store) AccountByKeyID(_ context.Context, keyID string) (string, error) {
	v, err := s.db.Get(accountByKeyTable, []byte(keyID))
	switch {
	case database.IsErrNotFound(err):
		return "", ErrNotFound
	case err != nil:
		return "", fmt.Errorf("store: read account key index: %w", err)
	}
	return string(v), nil
}

// Binding returns the binding of an account, or ErrNotFound.
func (s *Store) Binding(_ context.Context, accountID string) (Binding, error) {
	val, err := s.db.Get(bindingTable, []byte(accountID))
	switch {
	case database.IsErrNotFound(err):
		return Binding{}, ErrNotFound
	case err != nil:
		return Binding{}, fmt.Errorf("store: read binding: %w", err)
	}
	var b Binding
	if err := json.Unmarshal(val, &b); err != nil {
		return Binding{}, fmt.Errorf("store: decode binding of %s: %w", accountID, err)
	}
	return b, nil
}

// timed reports the time since start to the observer, if any: deferred as
// defer s.timed(op, time.Now()).
func (s *Store) timed(op string, start time.Time) {
	if s.observe != nil {
		s.observe(op, time.Since(start))
	}
}
