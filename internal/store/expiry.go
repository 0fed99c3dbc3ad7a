package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
)

// The expiry index lets retention find what is due without reading whole
// tables. Each entry names one record (or one issuance's records) and the
// time from which it may be deleted:
//
//	key   = <kind byte> <big-endian Unix seconds, rounded up> <id>
//	value = expiryRef as JSON (what else to delete), often empty
//
// The kind comes first so that each kind is one key range with its own
// cutoff: certificates and orders go after the configured retention,
// accounts after the unused-account limit, nonces smallstep stored after an
// hour. Within a kind, a range
// scan from the kind's first key up to the cutoff yields exactly the entries
// due. The time is the data's own expiry (not expiry plus retention), so a
// change of the retention settings applies to data already indexed.
var expiryTable = []byte("crank_expiry")

// RangeScanner is implemented by crank-ca's own drivers: entries of a table
// with keys >= start in byte order, at most limit of them (keys sorted).
type RangeScanner interface {
	Scan(bucket, start []byte, limit int) ([]*database.Entry, error)
}

// Kinds of expiry entries.
const (
	kindAuthz      byte = 'a' // id: authorization; ref: its challenges
	kindCert       byte = 'c' // id: serial; ref: the ACME certificate id
	kindNonce      byte = 'n' // id: a nonce smallstep stored (before nonces were stateless)
	kindOrder      byte = 'o' // id: order; ref: its account
	kindRevocation byte = 'r' // id: serial of a revoked certificate
	kindSpentToken byte = 't' // id: key in crank_token_uses
	kindAccount    byte = 'u' // id: account, due when it may be deleted as unused
)

// expiryKeyHeader is the kind byte and 8 bytes of time.
const expiryKeyHeader = 9

// expiryStateKey holds expiryState. It sorts before every kind.
var expiryStateKey = []byte("\x00state")

// expiryVersion is the version of the index. A store whose state records an
// older one (or none) has data written before the index existed, or before
// its format changed; the next sweep indexes it once (the legacy pass).
const expiryVersion = 1

// expiryState records that the legacy pass ran.
type expiryState struct {
	Version    int       `json:"version"`
	IndexedAt  time.Time `json:"indexedAt"`
	Backfilled int       `json:"backfilled"`
}

// expiryRef is what an entry needs besides its id to delete everything, so
// that the sweep deletes without reading the records first.
type expiryRef struct {
	// Account is an order's account, whose order index decides whether
	// the order may go.
	Account string `json:"account,omitempty"`
	// Cert is the ACME certificate id (acme_certs key) of a serial.
	Cert string `json:"cert,omitempty"`
	// Challenges are an authorization's challenge ids.
	Challenges []string `json:"challenges,omitempty"`
}

// expiry is one index entry.
type expiry struct {
	kind byte
	at   time.Time
	id   string
	ref  expiryRef
}

func (e expiry) key() []byte { return expiryKey(e.kind, expirySecond(e.at), e.id) }

func (e expiry) value() ([]byte, error) {
	if e.ref.Account == "" && e.ref.Cert == "" && len(e.ref.Challenges) == 0 {
		return []byte{}, nil
	}
	return json.Marshal(e.ref)
}

// encode checks an entry and returns its key and value. An entry without a
// time is refused: it would be due at once.
func (e expiry) encode() (key, value []byte, err error) {
	if e.id == "" {
		return nil, nil, fmt.Errorf("store: expiry entry of kind %c without an id", e.kind)
	}
	if e.at.IsZero() {
		return nil, nil, fmt.Errorf("store: expiry entry %c/%s without a time", e.kind, e.id)
	}
	v, err := e.value()
	if err != nil {
		return nil, nil, fmt.Errorf("store: encode expiry entry %c/%s: %w", e.kind, e.id, err)
	}
	return e.key(), v, nil
}

func expiryKey(kind byte, sec uint64, id string) []byte {
	k := make([]byte, expiryKeyHeader, expiryKeyHeader+len(id))
	k[0] = kind
	binary.BigEndian.PutUint64(k[1:expiryKeyHeader], sec)
	return append(k, id...)
}

// expirySecond is at in Unix seconds rounded up, so that an entry is due
// only once its time has fully passed; times before 1970 are 0.
func expirySecond(at time.Time) uint64 {
	s := at.Unix()
	if at.Nanosecond() > 0 {
		s++
	}
	if s < 0 {
		return 0
	}
	return uint64(s)
}

// parseExpiryKey splits an index key; ok is false for a key that is not one.
func parseExpiryKey(k []byte) (kind byte, sec uint64, id string, ok bool) {
	if len(k) <= expiryKeyHeader {
		return 0, 0, "", false
	}
	return k[0], binary.BigEndian.Uint64(k[1:expiryKeyHeader]), string(k[expiryKeyHeader:]), true
}

// printableKey renders an index key for errors and logs.
func printableKey(k []byte) string {
	kind, sec, id, ok := parseExpiryKey(k)
	if !ok {
		return fmt.Sprintf("%q", k)
	}
	return fmt.Sprintf("%c/%s/%s", kind, time.Unix(int64(sec), 0).UTC().Format(time.RFC3339), id) //nolint:gosec // seconds fit an int64 for 292 billion years
}

// putExpiryIn writes index entries inside a transaction.
func putExpiryIn(kv KV, es ...expiry) error {
	for _, e := range es {
		k, v, err := e.encode()
		if err != nil {
			return err
		}
		if err := kv.Set(expiryTable, k, v); err != nil {
			return fmt.Errorf("store: write expiry entry %s: %w", printableKey(k), err)
		}
	}
	return nil
}

// putExpiry writes one index entry on its own.
func (s *Store) putExpiry(e expiry) error {
	k, v, err := e.encode()
	if err != nil {
		return err
	}
	if err := s.db.Set(expiryTable, k, v); err != nil {
		return fmt.Errorf("store: write expiry entry %s: %w", printableKey(k), err)
	}
	return nil
}

// The write-time hooks: each record that retention deletes is indexed when
// it is written, in the same transaction where there is one.

// IndexCertificateIn records, inside the transaction that stores an
// issued certificate, when its data may be deleted: smallstep's
// certificate, certificate data and serial index, the ACME certificate
// record certID (empty: looked up by serial at deletion), any revocation
// record and crank-ca's CertRecord.
func IndexCertificateIn(kv KV, serial, certID string, notAfter time.Time) error {
	return putExpiryIn(kv, expiry{kind: kindCert, at: notAfter, id: serial, ref: expiryRef{Cert: certID}})
}

// IndexOrderIn records, inside the transaction that stores an order, when
// it may be deleted: once both its expiry and its requested notAfter have
// passed. An order its account's order index still lists then is kept and
// looked at again later.
func IndexOrderIn(kv KV, id, accountID string, expiresAt, notAfter time.Time) error {
	return putExpiryIn(kv, orderExpiry(id, accountID, expiresAt, notAfter))
}

func orderExpiry(id, accountID string, expiresAt, notAfter time.Time) expiry {
	at := expiresAt
	if notAfter.After(at) {
		at = notAfter
	}
	return expiry{kind: kindOrder, at: at, id: id, ref: expiryRef{Account: accountID}}
}

// IndexAuthorizationIn records, inside the transaction that stores an
// authorization, when it and its challenges may be deleted. Authorizations
// are indexed on their own, not through their order, so that one stored
// without an order still goes.
func IndexAuthorizationIn(kv KV, id string, challengeIDs []string, expiresAt time.Time) error {
	return putExpiryIn(kv, expiry{kind: kindAuthz, at: expiresAt, id: id, ref: expiryRef{Challenges: challengeIDs}})
}

// IndexRevocation records a revocation, at the revoked certificate's
// notAfter: the record leaves the CRL when the certificate's data goes.
func (s *Store) IndexRevocation(_ context.Context, serial string, notAfter time.Time) error {
	return s.putExpiry(expiry{kind: kindRevocation, at: notAfter, id: serial})
}

// IndexAccount records a new ACME account as a candidate for deletion as
// unused once it is older than the limit; the sweep deletes it only if it
// never ordered, and reads its creation time from its record.
func (s *Store) IndexAccount(_ context.Context, id string, createdAt time.Time) error {
	return s.putExpiry(expiry{kind: kindAccount, at: createdAt, id: id})
}

// IndexAccountIn is IndexAccount inside the transaction that stores the
// account.
func IndexAccountIn(kv KV, id string, createdAt time.Time) error {
	return putExpiryIn(kv, expiry{kind: kindAccount, at: createdAt, id: id})
}

// indexSpentToken records when a spent token (key in crank_token_uses) may
// be forgotten. A token without an expiry stays spent for ever.
func (s *Store) indexSpentToken(key []byte, expires time.Time) error {
	if expires.IsZero() {
		return nil
	}
	return s.putExpiry(expiry{kind: kindSpentToken, at: expires, id: string(key)})
}

// scanner reads a table's entries in key order from a start key. Drivers
// that are RangeScanners read just that; others are read whole once per
// sweep and the listing kept for the sweep (the fallback).
type scanner struct {
	db     nosql.DB
	ranges RangeScanner
	listed map[string][]*database.Entry
}

func newScanner(db nosql.DB) *scanner {
	rs, _ := db.(RangeScanner)
	return &scanner{db: db, ranges: rs, listed: map[string][]*database.Entry{}}
}

func (s *scanner) scan(table, start []byte, limit int) ([]*database.Entry, error) {
	if s.ranges != nil {
		es, err := s.ranges.Scan(table, start, limit)
		if database.IsErrNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("scan %s: %w", table, err)
		}
		return es, nil
	}
	es, ok := s.listed[string(table)]
	if !ok {
		var err error
		es, err = s.db.List(table)
		switch {
		case database.IsErrNotFound(err):
		case err != nil:
			return nil, fmt.Errorf("list %s: %w", table, err)
		}
		slices.SortFunc(es, func(a, b *database.Entry) int { return bytes.Compare(a.Key, b.Key) })
		s.listed[string(table)] = es
	}
	i := sort.Search(len(es), func(i int) bool { return bytes.Compare(es[i].Key, start) >= 0 })
	return es[i:min(i+limit, len(es))], nil
}

// after is the smallest key greater than k.
func after(k []byte) []byte { return append(bytes.Clone(k), 0) }
