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

// nonceMaxAge is how long an unused nonce is kept. Clients use a nonce within
// seconds; smallstep never expires the ones they drop.
const nonceMaxAge = time.Hour

// RetainerConfig configures a Retainer.
type RetainerConfig struct {
	DB nosql.DB
	// Keep is how long data stays after the certificate or order expired.
	Keep time.Duration
	// Unused is how long an account that never ordered (or, where
	// accounts must bind, never bound) is kept after its creation. Zero
	// keeps every account.
	Unused time.Duration
	Now    func() time.Time
	Logger *slog.Logger
}

// Retainer deletes data of expired certificates, orders, authorizations,
// stale nonces and accounts that never ordered, so that a CA issuing
// short-lived certificates keeps a bounded store. It only deletes records whose own timestamps are older than the
// cutoff, so it is safe beside live traffic.
type Retainer struct {
	db     nosql.DB
	keep   time.Duration
	unused time.Duration
	now    func() time.Time
	log    *slog.Logger
}

// NewRetainer returns a Retainer; nil Now and Logger get defaults.
func NewRetainer(cfg RetainerConfig) *Retainer {
	r := &Retainer{db: cfg.DB, keep: cfg.Keep, unused: cfg.Unused, now: cfg.Now, log: cfg.Logger}
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
}

// Run sweeps once immediately and then every interval until ctx is done.
func (r *Retainer) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		st, err := r.Sweep(ctx)
		if err != nil {
			r.log.Error("retention sweep failed", "err", err)
		} else if st != (Stats{}) {
			r.log.Info("retention sweep", "orders", st.Orders, "authorizations", st.Authorizations,
				"challenges", st.Challenges, "certificates", st.Certificates, "revocations", st.Revocations, "nonces", st.Nonces, "spentTokens", st.SpentTokens, "accounts", st.Accounts)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sweep deletes everything past the cutoff once.
func (r *Retainer) Sweep(ctx context.Context) (Stats, error) {
	now := r.now()
	cutoff := now.Add(-r.keep)
	var st Stats
	var errs []error
	steps := []func(context.Context, time.Time, *Stats) error{
		r.sweepOrders, r.sweepAuthorizations, r.sweepACMECerts, r.sweepX509Certs, r.sweepRevocations, r.sweepSpentTokens, r.sweepCertRecords,
	}
	for _, step := range steps {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		if err := step(ctx, cutoff, &st); err != nil {
			errs = append(errs, err)
		}
	}
	if r.unused > 0 {
		if err := r.sweepAccounts(ctx, now.Add(-r.unused), &st); err != nil {
			errs = append(errs, err)
		}
	}
	if err := r.sweepNonces(now.Add(-nonceMaxAge), &st); err != nil {
		errs = append(errs, err)
	}
	return st, errors.Join(errs...)
}

// list returns a table's entries; a missing table is empty.
func (r *Retainer) list(table []byte) ([]*database.Entry, error) {
	es, err := r.db.List(table)
	if database.IsErrNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("retention: list %s: %w", table, err)
	}
	return es, nil
}

func (r *Retainer) del(table, key []byte) error {
	if err := r.db.Del(table, key); err != nil && !database.IsErrNotFound(err) {
		return fmt.Errorf("retention: delete %s/%s: %w", table, key, err)
	}
	return nil
}

// sweepOrders deletes expired orders. Orders still listed in an account's
// order index are kept: smallstep reads every listed order on the account's
// next new-order and fails if one is missing, and it drops finished orders
// from the index itself then, so a later sweep deletes them. Never writing
// the index also keeps this safe beside smallstep's compare-and-swap on it.
func (r *Retainer) sweepOrders(_ context.Context, cutoff time.Time, st *Stats) error {
	indexed, err := r.indexedOrders()
	if err != nil {
		return err
	}
	es, err := r.list(ordersTable)
	if err != nil {
		return err
	}
	for _, e := range es {
		var o struct {
			NotAfter  time.Time `json:"notAfter"`
			ExpiresAt time.Time `json:"expiresAt"`
		}
		if json.Unmarshal(e.Value, &o) != nil || o.ExpiresAt.After(cutoff) || o.NotAfter.After(cutoff) || indexed[string(e.Key)] {
			continue
		}
		if err := r.del(ordersTable, e.Key); err != nil {
			return err
		}
		st.Orders++
	}
	return nil
}

func (r *Retainer) indexedOrders() (map[string]bool, error) {
	es, err := r.list(accountOrdersTable)
	if err != nil {
		return nil, err
	}
	m := map[string]bool{}
	for _, e := range es {
		var ids []string
		_ = json.Unmarshal(e.Value, &ids)
		for _, id := range ids {
			m[id] = true
		}
	}
	return m, nil
}

func (r *Retainer) sweepAuthorizations(_ context.Context, cutoff time.Time, st *Stats) error {
	es, err := r.list(authzTable)
	if err != nil {
		return err
	}
	for _, e := range es {
		var az struct {
			ChallengeIDs []string  `json:"challengeIDs"`
			ExpiresAt    time.Time `json:"expiresAt"`
		}
		if json.Unmarshal(e.Value, &az) != nil || az.ExpiresAt.After(cutoff) {
			continue
		}
		for _, ch := range az.ChallengeIDs {
			if err := r.del(challengeTable, []byte(ch)); err != nil {
				return err
			}
			st.Challenges++
		}
		if err := r.del(authzTable, e.Key); err != nil {
			return err
		}
		st.Authorizations++
	}
	return nil
}

func (r *Retainer) sweepACMECerts(_ context.Context, cutoff time.Time, _ *Stats) error {
	es, err := r.list(acmeCertsTable)
	if err != nil {
		return err
	}
	for _, e := range es {
		var c struct {
			Leaf []byte `json:"leaf"`
		}
		if json.Unmarshal(e.Value, &c) != nil {
			continue
		}
		leaf, err := parseLeaf(c.Leaf)
		if err != nil || leaf.NotAfter.After(cutoff) {
			continue
		}
		if err := r.del(certBySerialTable, []byte(leaf.SerialNumber.String())); err != nil {
			return err
		}
		if err := r.del(acmeCertsTable, e.Key); err != nil {
			return err
		}
	}
	return nil
}

// parseLeaf accepts the PEM smallstep stores in acme_certs or raw DER.
func parseLeaf(b []byte) (*x509.Certificate, error) {
	if der := pemBlock(b); der != nil {
		b = der
	}
	return x509.ParseCertificate(b)
}

func (r *Retainer) sweepX509Certs(_ context.Context, cutoff time.Time, st *Stats) error {
	es, err := r.list(x509CertsTable)
	if err != nil {
		return err
	}
	for _, e := range es {
		leaf, err := x509.ParseCertificate(e.Value)
		if err != nil || leaf.NotAfter.After(cutoff) {
			continue
		}
		if err := r.del(x509CertsDataTable, e.Key); err != nil {
			return err
		}
		if err := r.del(x509CertsTable, e.Key); err != nil {
			return err
		}
		st.Certificates++
	}
	return nil
}

func (r *Retainer) sweepRevocations(_ context.Context, cutoff time.Time, st *Stats) error {
	es, err := r.list(revokedTable)
	if err != nil {
		return err
	}
	for _, e := range es {
		var rv struct {
			ExpiresAt time.Time `json:"ExpiresAt"`
		}
		if json.Unmarshal(e.Value, &rv) != nil || rv.ExpiresAt.IsZero() || rv.ExpiresAt.After(cutoff) {
			continue
		}
		if err := r.del(revokedTable, e.Key); err != nil {
			return err
		}
		st.Revocations++
	}
	return nil
}

func (r *Retainer) sweepNonces(cutoff time.Time, st *Stats) error {
	es, err := r.list(nonceTable)
	if err != nil {
		return err
	}
	for _, e := range es {
		var n struct {
			CreatedAt time.Time `json:"CreatedAt"`
		}
		if json.Unmarshal(e.Value, &n) != nil || n.CreatedAt.After(cutoff) {
			continue
		}
		if err := r.del(nonceTable, e.Key); err != nil {
			return err
		}
		st.Nonces++
	}
	return nil
}

// sweepSpentTokens forgets spent tokens whose expiry passed the cutoff: they
// are refused as expired from then on. Bindings stay as long as accounts do.
func (r *Retainer) sweepSpentTokens(_ context.Context, cutoff time.Time, st *Stats) error {
	es, err := r.list(tokenUsesTable)
	if err != nil {
		return err
	}
	for _, e := range es {
		var b Binding
		if json.Unmarshal(e.Value, &b) != nil || b.TokenExpiresAt.IsZero() || b.TokenExpiresAt.After(cutoff) {
			continue
		}
		if err := r.del(tokenUsesTable, e.Key); err != nil {
			return err
		}
		st.SpentTokens++
	}
	return nil
}

// sweepCertRecords deletes crank-ca's records of certificates expired before
// the cutoff (the certificates themselves go in sweepX509Certs).
func (r *Retainer) sweepCertRecords(_ context.Context, cutoff time.Time, _ *Stats) error {
	es, err := r.list(certsTable)
	if err != nil {
		return err
	}
	for _, e := range es {
		var c CertRecord
		if json.Unmarshal(e.Value, &c) != nil || c.NotAfter.After(cutoff) {
			continue
		}
		if err := r.del(certsTable, e.Key); err != nil {
			return err
		}
	}
	return nil
}

// sweepAccounts deletes ACME accounts created before the cutoff that never
// ordered: anyone can register accounts on an ordinary ACME provisioner, and
// smallstep keeps them forever.
//
// "Never ordered" means the account has no entry at all in smallstep's order
// index. smallstep writes the entry with the account's first order and never
// deletes it; it only prunes finished orders from the list, down to an empty
// list or an empty value. An entry in any state therefore marks an account
// that did order and may hold live certificates, and it is kept. Retention
// never writes the index, so it cannot make an account look unused either.
//
// Binding needs no rule of its own: on a provisioner that binds, new-order
// refuses an unbound account, so an account that never bound never ordered.
// A bound account that never ordered goes too, with its binding; its token
// stays spent.
//
// The key index entry is deleted first, so that the key can register again
// even if the sweep stops part way; then the binding; then the account, after
// which a request signed with its kid answers accountDoesNotExist. An account
// interrupted half way is found again by the next sweep.
//
// An account that orders for the first time just as it is swept can lose
// that race: the index is read again right before deleting, which narrows
// the window without closing it. Its client then sees accountDoesNotExist
// and registers again.
//
// nosql cannot page, so the accounts table and the order index are read
// whole on every sweep, like the other tables.
func (r *Retainer) sweepAccounts(ctx context.Context, cutoff time.Time, st *Stats) error {
	ordered, err := r.orderIndexKeys()
	if err != nil {
		return err
	}
	es, err := r.list(accountsTable)
	if err != nil {
		return err
	}
	for _, e := range es {
		if err := ctx.Err(); err != nil {
			return err
		}
		var a struct {
			Key       *jose.JSONWebKey `json:"key"`
			CreatedAt time.Time        `json:"createdAt"`
		}
		// A record that cannot be read, or has no creation time, is kept:
		// deleting it is never needed for correctness.
		if json.Unmarshal(e.Value, &a) != nil || a.CreatedAt.IsZero() || a.CreatedAt.After(cutoff) || ordered[string(e.Key)] {
			continue
		}
		deleted, err := r.deleteUnusedAccount(e.Key, a.Key)
		if err != nil {
			return err
		}
		if deleted {
			st.Accounts++
		}
	}
	return nil
}

// orderIndexKeys returns the accounts that have an entry in smallstep's order
// index, whatever its value.
func (r *Retainer) orderIndexKeys() (map[string]bool, error) {
	es, err := r.list(accountOrdersTable)
	if err != nil {
		return nil, err
	}
	m := make(map[string]bool, len(es))
	for _, e := range es {
		m[string(e.Key)] = true
	}
	return m, nil
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
