package store

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
)

// Tables written by smallstep (acme/db/nosql and db). Retention reads only
// the few timestamp fields it needs from their records.
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
	// accounts must bind, never bound) is kept after its creation.
	Unused time.Duration
	Now    func() time.Time
	Logger *slog.Logger
}

// Retainer deletes data of expired certificates, orders, authorizations and
// stale nonces, so that a CA issuing short-lived certificates keeps a bounded
// store. It only deletes records whose own timestamps are older than the
// cutoff, so it is safe beside live traffic.
type Retainer struct {
	db   nosql.DB
	keep time.Duration
	now  func() time.Time
	log  *slog.Logger
}

// NewRetainer returns a Retainer; nil Now and Logger get defaults.
func NewRetainer(cfg RetainerConfig) *Retainer {
	r := &Retainer{db: cfg.DB, keep: cfg.Keep, now: cfg.Now, log: cfg.Logger}
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
				"challenges", st.Challenges, "certificates", st.Certificates, "revocations", st.Revocations, "nonces", st.Nonces, "spentTokens", st.SpentTokens)
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
