package store

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
	"go.step.sm/crypto/jose"
)

// Tables written by smallstep (acme/db/nosql and db). Retention reads only
// the few fields it needs from their records (timestamps; an account's key).
var (
	ordersTable        = []byte("acme_orders")
	accountOrdersTable = []byte("acme_account_orders_index")
	authzTable         = []byte("acme_authzs")
	challengeTable     = []byte("acme_challenges")
	acmeCertsTable     = []byte("acme_certs")
	certBySerialTable  = []byte("acme_serial_certs_index")
	x509CertsTable     = []byte("x509_certs")
	x509CertsDataTable = []byte("x509_certs_data")
	revokedTable       = []byte("revoked_x509_certs")
	nonceTable         = []byte("nonces")
	accountsTable      = []byte("acme_accounts")
	accountByKeyTable  = []byte("acme_keyID_accountID_index")
)

// nonceMaxAge is how long an unused nonce smallstep stored is kept. Clients
// use a nonce within seconds; smallstep never expires the ones they drop.
const nonceMaxAge = time.Hour

// orderRecheck is how much later an expired order is looked at again while
// its account's order index still lists it.
const orderRecheck = 24 * time.Hour

// defaultBatch is how many index entries one transaction deletes.
const defaultBatch = 500

// RetainerConfig configures a Retainer.
type RetainerConfig struct {
	DB nosql.DB
	// Keep is how long data stays after the certificate or order expired.
	Keep time.Duration
	// Unused is how long an account that never ordered (or, where
	// accounts must bind, never bound) is kept after its creation. Zero
	// keeps every account.
	Unused time.Duration
	// Batch is how many index entries are read and deleted per
	// transaction; zero means 500.
	Batch  int
	Now    func() time.Time
	Logger *slog.Logger
}

// Retainer deletes data of expired certificates, orders, authorizations,
// stale nonces and accounts that never ordered, so that a CA issuing
// short-lived certificates keeps a bounded store. It only deletes records
// whose own timestamps (as indexed when they were written) are older than
// the cutoff, so it is safe beside live traffic.
//
// It finds what is due through the expiry index (expiry.go), in batches of
// index entries read in key order from the start of each kind up to its
// cutoff, each batch deleted in one transaction; a sweep reads no whole
// table when the driver is a RangeScanner. Data written before the index
// existed is indexed once, by the first sweep (the legacy pass).
type Retainer struct {
	db     nosql.DB
	keep   time.Duration
	unused time.Duration
	batch  int
	now    func() time.Time
	log    *slog.Logger
	// mu makes sweeps (the periodic one, an operator's) take turns.
	mu sync.Mutex
	// ready is set once the tables a sweep touches exist.
	ready bool
}

// NewRetainer returns a Retainer; nil Now and Logger and a zero Batch get
// defaults.
func NewRetainer(cfg RetainerConfig) *Retainer {
	r := &Retainer{db: cfg.DB, keep: cfg.Keep, unused: cfg.Unused, batch: cfg.Batch, now: cfg.Now, log: cfg.Logger}
	if r.batch <= 0 {
		r.batch = defaultBatch
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	return r
}

// Stats counts what one sweep deleted.
type Stats struct {
	Orders, Authorizations, Challenges, Certificates, Revocations, Nonces, SpentTokens int
	// Accounts counts ACME accounts deleted because they never ordered.
	Accounts int
	// Indexed counts records written before the expiry index existed that
	// the legacy pass indexed (on one sweep only).
	Indexed int
}

// due is an index entry found due.
type due struct {
	key []byte
	id  string
	ref expiryRef
}

// pass deletes the due entries of one kind, one batch per call.
type pass struct {
	kind   byte
	cutoff time.Time
	del    func(cutoff time.Time, batch []due, st *Stats) error
}

// Sweep deletes everything past the cutoff once.
func (r *Retainer) Sweep(ctx context.Context) (Stats, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var st Stats
	if err := r.prepare(); err != nil {
		return st, err
	}
	now := r.now()
	if err := r.backfill(ctx, now, &st); err != nil {
		return st, err
	}
	cutoff := now.Add(-r.keep)
	passes := []pass{
		{kindCert, cutoff, r.deleteCerts},
		{kindRevocation, cutoff, r.deleteIn(revokedTable, func(st *Stats, n int) { st.Revocations += n })},
		{kindOrder, cutoff, r.deleteOrders},
		{kindAuthz, cutoff, r.deleteAuthzs},
		{kindSpentToken, cutoff, r.deleteIn(tokenUsesTable, func(st *Stats, n int) { st.SpentTokens += n })},
		{kindNonce, now.Add(-nonceMaxAge), r.deleteIn(nonceTable, func(st *Stats, n int) { st.Nonces += n })},
	}
	if r.unused > 0 {
		passes = append(passes, pass{kindAccount, now.Add(-r.unused), r.deleteAccounts})
	}
	sc := newScanner(r.db)
	var errs []error
	for _, p := range passes {
		if err := ctx.Err(); err != nil {
			return st, errors.Join(append(errs, err)...)
		}
		if err := r.sweepKind(ctx, sc, p, &st); err != nil {
			errs = append(errs, err)
		}
	}
	return st, errors.Join(errs...)
}

// prepare creates every table a sweep touches (idempotent), so that a
// transaction never names a missing one.
func (r *Retainer) prepare() error {
	if r.ready {
		return nil
	}
	for _, t := range [][]byte{
		expiryTable, ordersTable, accountOrdersTable, authzTable, challengeTable, acmeCertsTable, certBySerialTable,
		x509CertsTable, x509CertsDataTable, revokedTable, nonceTable, accountsTable, accountByKeyTable,
		bindingTable, tokenUsesTable, certsTable, orderClaimsTable,
	} {
		if err := r.db.CreateTable(t); err != nil {
			return fmt.Errorf("retention: create table %s: %w", t, err)
		}
	}
	r.ready = true
	return nil
}

// cutoffSecond is the last index second due at cutoff (entry seconds are
// rounded up, so an entry at or before it expired at or before cutoff).
func cutoffSecond(cutoff time.Time) (uint64, bool) {
	s := cutoff.Unix()
	return uint64(max(s, 0)), s >= 0 //nolint:gosec // clamped to non-negative
}

// sweepKind hands the entries of one kind due by its cutoff to its delete
// function, a batch at a time, until none is left or ctx is done. Each batch
// starts after the previous one's last key, so entries kept (or moved later)
// are not read twice.
func (r *Retainer) sweepKind(ctx context.Context, sc *scanner, p pass, st *Stats) error {
	cut, ok := cutoffSecond(p.cutoff)
	if !ok {
		return nil
	}
	start := []byte{p.kind}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		es, err := sc.scan(expiryTable, start, r.batch)
		if err != nil {
			return fmt.Errorf("retention: %w", err)
		}
		more := len(es) == r.batch
		batch := make([]due, 0, len(es))
		for _, e := range es {
			_, sec, id, ok := parseExpiryKey(e.Key)
			if len(e.Key) == 0 || e.Key[0] != p.kind || (ok && sec > cut) {
				more = false
				break
			}
			if !ok {
				continue
			}
			d := due{key: e.Key, id: id}
			if len(e.Value) > 0 && json.Unmarshal(e.Value, &d.ref) != nil {
				r.log.Warn("retention: unreadable expiry entry; deleting what its key names", "entry", printableKey(e.Key))
			}
			batch = append(batch, d)
		}
		if len(batch) > 0 {
			if err := p.del(p.cutoff, batch, st); err != nil {
				return err
			}
		}
		if !more {
			return nil
		}
		start = after(es[len(es)-1].Key)
	}
}

func (r *Retainer) commit(tx *database.Tx) error {
	if len(tx.Operations) == 0 {
		return nil
	}
	if err := r.db.Update(tx); err != nil {
		return fmt.Errorf("retention: delete batch: %w", err)
	}
	return nil
}

// deleteIn deletes the records the entries name in one table.
func (r *Retainer) deleteIn(table []byte, count func(*Stats, int)) func(time.Time, []due, *Stats) error {
	return func(_ time.Time, batch []due, st *Stats) error {
		tx := new(database.Tx)
		for _, d := range batch {
			tx.Del(table, []byte(d.id))
			tx.Del(expiryTable, d.key)
		}
		if err := r.commit(tx); err != nil {
			return err
		}
		count(st, len(batch))
		return nil
	}
}

// deleteCerts deletes expired certificates: smallstep's certificate, its
// data, serial index, ACME certificate record and revocation record (which
// has left the CRL by now), and crank-ca's CertRecord.
func (r *Retainer) deleteCerts(_ time.Time, batch []due, st *Stats) error {
	tx := new(database.Tx)
	for _, d := range batch {
		serial := []byte(d.id)
		certID := d.ref.Cert
		if certID == "" {
			var err error
			if certID, err = r.acmeCertID(serial); err != nil {
				return err
			}
		}
		for _, t := range [][]byte{x509CertsTable, x509CertsDataTable, revokedTable, certBySerialTable, certsTable} {
			tx.Del(t, serial)
		}
		if certID != "" {
			tx.Del(acmeCertsTable, []byte(certID))
		}
		tx.Del(expiryTable, d.key)
	}
	if err := r.commit(tx); err != nil {
		return err
	}
	st.Certificates += len(batch)
	return nil
}

// acmeCertID reads the ACME certificate id of a serial from smallstep's
// serial index; "" if there is none.
func (r *Retainer) acmeCertID(serial []byte) (string, error) {
	b, err := r.db.Get(certBySerialTable, serial)
	switch {
	case database.IsErrNotFound(err):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("retention: read serial index %s: %w", serial, err)
	}
	var s struct {
		CertificateID string `json:"certificateID"`
	}
	_ = json.Unmarshal(b, &s)
	return s.CertificateID, nil
}

// deleteOrders deletes expired orders. Orders still listed in an account's
// order index are kept and looked at again orderRecheck later: smallstep
// reads every listed order on the account's next new-order and fails if one
// is missing, and it drops finished orders from the index itself then.
// Never writing the index also keeps this safe beside smallstep's
// compare-and-swap on it.
func (r *Retainer) deleteOrders(cutoff time.Time, batch []due, st *Stats) error {
	tx := new(database.Tx)
	listed := map[string]map[string]bool{}
	n := 0
	for _, d := range batch {
		acc, exists := d.ref.Account, true
		if acc == "" {
			var err error
			if acc, exists, err = r.orderAccount(d.id); err != nil {
				return err
			}
		}
		ids, err := r.listedOrders(listed, acc)
		if err != nil {
			return err
		}
		if ids[d.id] {
			later := expiry{kind: kindOrder, at: cutoff.Add(orderRecheck), id: d.id, ref: expiryRef{Account: acc}}
			k, v, err := later.encode()
			if err != nil {
				return err
			}
			tx.Set(expiryTable, k, v)
		} else {
			tx.Del(ordersTable, []byte(d.id))
			// A finalize claim is released when the finalize ends;
			// one left by a replica that died goes with the order.
			tx.Del(orderClaimsTable, []byte(d.id))
			if exists {
				n++
			}
		}
		tx.Del(expiryTable, d.key)
	}
	if err := r.commit(tx); err != nil {
		return err
	}
	st.Orders += n
	return nil
}

// orderAccount reads an order's account from its record.
func (r *Retainer) orderAccount(id string) (string, bool, error) {
	b, err := r.db.Get(ordersTable, []byte(id))
	switch {
	case database.IsErrNotFound(err):
		return "", false, nil
	case err != nil:
		return "", false, fmt.Errorf("retention: read order %s: %w", id, err)
	}
	var o struct {
		AccountID string `json:"accountID"`
	}
	_ = json.Unmarshal(b, &o)
	return o.AccountID, true, nil
}

// listedOrders returns the orders an account's order index lists, reading
// each account's entry once per batch.
func (r *Retainer) listedOrders(cache map[string]map[string]bool, acc string) (map[string]bool, error) {
	if acc == "" {
		return nil, nil
	}
	if ids, ok := cache[acc]; ok {
		return ids, nil
	}
	b, err := r.db.Get(accountOrdersTable, []byte(acc))
	if err != nil && !database.IsErrNotFound(err) {
		return nil, fmt.Errorf("retention: read order index of account %s: %w", acc, err)
	}
	var list []string
	_ = json.Unmarshal(b, &list)
	ids := make(map[string]bool, len(list))
	for _, id := range list {
		ids[id] = true
	}
	cache[acc] = ids
	return ids, nil
}

// deleteAuthzs deletes expired authorizations with their challenges.
func (r *Retainer) deleteAuthzs(_ time.Time, batch []due, st *Stats) error {
	tx := new(database.Tx)
	nAz, nCh := 0, 0
	for _, d := range batch {
		chs := d.ref.Challenges
		if len(chs) == 0 {
			var err error
			if chs, err = r.authzChallenges(d.id); err != nil {
				return err
			}
		}
		for _, ch := range chs {
			tx.Del(challengeTable, []byte(ch))
		}
		tx.Del(authzTable, []byte(d.id))
		tx.Del(expiryTable, d.key)
		nAz++
		nCh += len(chs)
	}
	if err := r.commit(tx); err != nil {
		return err
	}
	st.Authorizations += nAz
	st.Challenges += nCh
	return nil
}

// authzChallenges reads an authorization's challenge ids from its record.
func (r *Retainer) authzChallenges(id string) ([]string, error) {
	b, err := r.db.Get(authzTable, []byte(id))
	switch {
	case database.IsErrNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("retention: read authorization %s: %w", id, err)
	}
	var az struct {
		ChallengeIDs []string `json:"challengeIDs"`
	}
	_ = json.Unmarshal(b, &az)
	return az.ChallengeIDs, nil
}

// deleteAccounts deletes ACME accounts created before the cutoff that never
// ordered: anyone can register accounts on an ordinary ACME provisioner, and
// smallstep keeps them forever.
//
// "Never ordered" means the account has no entry at all in smallstep's order
// index. smallstep writes the entry with the account's first order and never
// deletes it; it only prunes finished orders from the list, down to an empty
// list or an empty value. An entry in any state therefore marks an account
// that did order and may hold live certificates, and it is kept (and its
// index entry dropped: it will never be unused again). Retention never
// writes the order index, so it cannot make an account look unused either.
//
// Binding needs no rule of its own: on a provisioner that binds, new-order
// refuses an unbound account, so an account that never bound never ordered.
// A bound account that never ordered goes too, with its binding; its token
// stays spent.
//
// The key index entry is deleted first, so that the key can register again
// even if the sweep stops part way; then the binding; then the account, after
// which a request signed with its kid answers accountDoesNotExist. An account
// interrupted half way keeps its index entry and is found again by the next
// sweep.
//
// An account that orders for the first time just as it is swept can lose
// that race: the order index is read again right before deleting, which
// narrows the window without closing it. Its client then sees
// accountDoesNotExist and registers again.
func (r *Retainer) deleteAccounts(cutoff time.Time, batch []due, st *Stats) (err error) {
	tx := new(database.Tx)
	defer func() {
		// Entries of accounts handled so far go even if a later one fails.
		err = errors.Join(err, r.commit(tx))
	}()
	for _, d := range batch {
		b, err := r.db.Get(accountsTable, []byte(d.id))
		switch {
		case database.IsErrNotFound(err):
			tx.Del(expiryTable, d.key)
			continue
		case err != nil:
			return fmt.Errorf("retention: read account %s: %w", d.id, err)
		}
		var a struct {
			Key       *jose.JSONWebKey `json:"key"`
			CreatedAt time.Time        `json:"createdAt"`
		}
		switch {
		case json.Unmarshal(b, &a) != nil || a.CreatedAt.IsZero():
			// A record that cannot be read, or has no creation time, is
			// kept: deleting it is never needed for correctness.
		case a.CreatedAt.After(cutoff):
			later := expiry{kind: kindAccount, at: a.CreatedAt, id: d.id}
			tx.Set(expiryTable, later.key(), []byte{})
		default:
			deleted, err := r.deleteUnusedAccount([]byte(d.id), a.Key)
			if err != nil {
				return err
			}
			if deleted {
				st.Accounts++
			}
		}
		tx.Del(expiryTable, d.key)
	}
	return nil
}

// backfill is the legacy pass: unless the index state says it ran, it
// indexes every record written before the index existed, then records that
// it ran. It reads each table once, whole, but a batch at a time from a
// RangeScanner, writing each batch's entries in one transaction. The sweep
// that follows deletes what is due among them through the index, like
// everything else.
func (r *Retainer) backfill(ctx context.Context, now time.Time, st *Stats) error {
	var state expiryState
	switch b, err := r.db.Get(expiryTable, expiryStateKey); {
	case database.IsErrNotFound(err):
	case err != nil:
		return fmt.Errorf("retention: read expiry index state: %w", err)
	default:
		_ = json.Unmarshal(b, &state)
	}
	if state.Version >= expiryVersion {
		return nil
	}
	n := 0
	for _, l := range legacyTables() {
		c, err := r.backfillTable(ctx, l.table, l.entry)
		if err != nil {
			return err
		}
		n += c
	}
	b, err := json.Marshal(expiryState{Version: expiryVersion, IndexedAt: now.UTC(), Backfilled: n})
	if err != nil {
		return err
	}
	if err := r.db.Set(expiryTable, expiryStateKey, b); err != nil {
		return fmt.Errorf("retention: write expiry index state: %w", err)
	}
	st.Indexed += n
	if n > 0 {
		r.log.Info("retention: indexed data written before the expiry index", "records", n)
	}
	return nil
}

// backfillTable indexes the records of one table that entry finds a time in.
func (r *Retainer) backfillTable(ctx context.Context, table []byte, entry func(key, value []byte) (expiry, bool)) (int, error) {
	sc := newScanner(r.db)
	n := 0
	for start := []byte{}; ; {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		es, err := sc.scan(table, start, r.batch)
		if err != nil {
			return n, fmt.Errorf("retention: legacy pass: %w", err)
		}
		tx := new(database.Tx)
		for _, e := range es {
			x, ok := entry(e.Key, e.Value)
			if !ok || x.at.IsZero() {
				continue
			}
			k, v, err := x.encode()
			if err != nil {
				continue
			}
			tx.Set(expiryTable, k, v)
		}
		if err := r.commit(tx); err != nil {
			return n, fmt.Errorf("retention: legacy pass: %w", err)
		}
		n += len(tx.Operations)
		if len(es) < r.batch {
			return n, nil
		}
		start = after(es[len(es)-1].Key)
	}
}

// legacyTable is a table the legacy pass indexes, and how: entry returns
// the index entry of a record, if it has a time.
type legacyTable struct {
	table []byte
	entry func(key, value []byte) (expiry, bool)
}

func legacyTables() []legacyTable {
	// Certificates are indexed by their ACME record, which names the ACME
	// certificate id, and those without one by smallstep's copy.
	acme := map[string]bool{}
	return []legacyTable{
		{acmeCertsTable, func(k, v []byte) (expiry, bool) {
			var c struct {
				Leaf []byte `json:"leaf"`
			}
			if json.Unmarshal(v, &c) != nil {
				return expiry{}, false
			}
			leaf, err := parseLeaf(c.Leaf)
			if err != nil {
				return expiry{}, false
			}
			acme[leaf.SerialNumber.String()] = true
			return expiry{kind: kindCert, at: leaf.NotAfter, id: leaf.SerialNumber.String(), ref: expiryRef{Cert: string(k)}}, true
		}},
		{x509CertsTable, func(k, v []byte) (expiry, bool) {
			if acme[string(k)] {
				return expiry{}, false
			}
			leaf, err := x509.ParseCertificate(v)
			if err != nil {
				return expiry{}, false
			}
			return expiry{kind: kindCert, at: leaf.NotAfter, id: string(k)}, true
		}},
		{revokedTable, func(k, v []byte) (expiry, bool) {
			var rv struct {
				ExpiresAt time.Time `json:"ExpiresAt"`
			}
			err := json.Unmarshal(v, &rv)
			return expiry{kind: kindRevocation, at: rv.ExpiresAt, id: string(k)}, err == nil
		}},
		{ordersTable, func(k, v []byte) (expiry, bool) {
			var o struct {
				AccountID string    `json:"accountID"`
				NotAfter  time.Time `json:"notAfter"`
				ExpiresAt time.Time `json:"expiresAt"`
			}
			err := json.Unmarshal(v, &o)
			return orderExpiry(string(k), o.AccountID, o.ExpiresAt, o.NotAfter), err == nil
		}},
		{authzTable, func(k, v []byte) (expiry, bool) {
			var az struct {
				ChallengeIDs []string  `json:"challengeIDs"`
				ExpiresAt    time.Time `json:"expiresAt"`
			}
			err := json.Unmarshal(v, &az)
			return expiry{kind: kindAuthz, at: az.ExpiresAt, id: string(k), ref: expiryRef{Challenges: az.ChallengeIDs}}, err == nil
		}},
		{tokenUsesTable, func(k, v []byte) (expiry, bool) {
			var b Binding
			err := json.Unmarshal(v, &b)
			return expiry{kind: kindSpentToken, at: b.TokenExpiresAt, id: string(k)}, err == nil
		}},
		// Nonces smallstep stored; crank-ca's are not stored (package nonce).
		{nonceTable, func(k, v []byte) (expiry, bool) {
			var n struct {
				CreatedAt time.Time `json:"CreatedAt"`
			}
			err := json.Unmarshal(v, &n)
			return expiry{kind: kindNonce, at: n.CreatedAt, id: string(k)}, err == nil
		}},
		{accountsTable, func(k, v []byte) (expiry, bool) {
			var a struct {
				CreatedAt time.Time `json:"createdAt"`
			}
			err := json.Unmarshal(v, &a)
			return expiry{kind: kindAccount, at: a.CreatedAt, id: string(k)}, err == nil
		}},
	}
}

// parseLeaf accepts the PEM smallstep stores in acme_certs or raw DER.
func parseLeaf(b []byte) (*x509.Certificate, error) {
	if der := pemBlock(b); der != nil {
		b = der
	}
	return x509.ParseCertificate(b)
}

func (r *Retainer) del(table, key []byte) error {
	if err := r.db.Del(table, key); err != nil && !database.IsErrNotFound(err) {
		return fmt.Errorf("retention: delete %s/%s: %w", table, key, err)
	}
	return nil
}

// deleteUnusedAccount deletes one account found unused, unless it ordered
// meanwhile or its key cannot be read (then its key index entry could not be
// found, and deleting the account alone would make the key unable to
// register again).
func (r *Retainer) deleteUnusedAccount(id []byte, key *jose.JSONWebKey) (bool, error) {
	switch _, err := r.db.Get(accountOrdersTable, id); {
	case err == nil:
		return false, nil
	case !database.IsErrNotFound(err):
		return false, fmt.Errorf("retention: read order index of account %s: %w", id, err)
	}
	if key == nil {
		r.log.Warn("retention: unused account has no key; kept", "account", string(id))
		return false, nil
	}
	tp, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		r.log.Warn("retention: unused account's key has no thumbprint; kept", "account", string(id), "err", err)
		return false, nil
	}
	kid := []byte(base64.RawURLEncoding.EncodeToString(tp))
	// The index entry is deleted only while it still names this account:
	// once it is gone, the same key may have registered a new account.
	switch owner, err := r.db.Get(accountByKeyTable, kid); {
	case database.IsErrNotFound(err):
	case err != nil:
		return false, fmt.Errorf("retention: read key index of account %s: %w", id, err)
	case bytes.Equal(owner, id):
		if err := r.del(accountByKeyTable, kid); err != nil {
			return false, err
		}
	}
	if err := r.del(bindingTable, id); err != nil {
		return false, err
	}
	if err := r.del(accountsTable, id); err != nil {
		return false, err
	}
	r.log.Debug("retention: deleted unused account", "account", string(id))
	return true, nil
}
