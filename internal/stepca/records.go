package stepca

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/smallstep/certificates/acme"
	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/randutil"

	"github.com/crank-platform/crank-ca/internal/store"
)

// smallstep's ACME records (acme/db/nosql), written by crank-ca itself so
// that one request is one transaction: a new-order's challenges,
// authorizations, order and account index in one commit, a finalize's
// certificate, serial index, crank-ca record and order update in another.
// smallstep writes each record in its own transaction and takes a global
// lock for the index. The shapes must stay exactly what smallstep reads
// back (its getters serve every later request); records_test.go reads each
// record written here through smallstep's own getters.
type (
	stepChallenge struct {
		ID          string             `json:"id"`
		AccountID   string             `json:"accountID"`
		Type        acme.ChallengeType `json:"type"`
		Status      acme.Status        `json:"status"`
		Token       string             `json:"token"`
		Value       string             `json:"value"`
		Target      string             `json:"target,omitempty"`
		ValidatedAt string             `json:"validatedAt"`
		CreatedAt   time.Time          `json:"createdAt"`
		Error       *acme.Error        `json:"error"`
	}
	stepAuthz struct {
		ID           string          `json:"id"`
		AccountID    string          `json:"accountID"`
		Identifier   acme.Identifier `json:"identifier"`
		Status       acme.Status     `json:"status"`
		Token        string          `json:"token"`
		Fingerprint  string          `json:"fingerprint,omitempty"`
		ChallengeIDs []string        `json:"challengeIDs"`
		Wildcard     bool            `json:"wildcard"`
		CreatedAt    time.Time       `json:"createdAt"`
		ExpiresAt    time.Time       `json:"expiresAt"`
		Error        *acme.Error     `json:"error"`
	}
	stepOrder struct {
		ID               string            `json:"id"`
		AccountID        string            `json:"accountID"`
		ProvisionerID    string            `json:"provisionerID"`
		Identifiers      []acme.Identifier `json:"identifiers"`
		AuthorizationIDs []string          `json:"authorizationIDs"`
		Status           acme.Status       `json:"status"`
		NotBefore        time.Time         `json:"notBefore,omitempty"`
		NotAfter         time.Time         `json:"notAfter,omitempty"`
		CreatedAt        time.Time         `json:"createdAt"`
		ExpiresAt        time.Time         `json:"expiresAt,omitempty"`
		CertificateID    string            `json:"certificate,omitempty"`
		Error            *acme.Error       `json:"error,omitempty"`
	}
	stepCert struct {
		ID            string    `json:"id"`
		CreatedAt     time.Time `json:"createdAt"`
		AccountID     string    `json:"accountID"`
		OrderID       string    `json:"orderID"`
		Leaf          []byte    `json:"leaf"`
		Intermediates []byte    `json:"intermediates"`
	}
	stepSerial struct {
		Serial        string `json:"serial"`
		CertificateID string `json:"certificateID"`
	}
	stepAccount struct {
		ID              string           `json:"id"`
		Key             *jose.JSONWebKey `json:"key"`
		Contact         []string         `json:"contact,omitempty"`
		Status          acme.Status      `json:"status"`
		LocationPrefix  string           `json:"locationPrefix"`
		ProvisionerID   string           `json:"provisionerID,omitempty"`
		ProvisionerName string           `json:"provisionerName"`
		CreatedAt       time.Time        `json:"createdAt"`
		DeactivatedAt   time.Time        `json:"deactivatedAt"`
	}
)

var (
	challengesTable = []byte("acme_challenges")
	authzsTable     = []byte("acme_authzs")
	ordersTable     = []byte("acme_orders")
	orderIndexTable = []byte("acme_account_orders_index")
	acmeCertsTable  = []byte("acme_certs")
	serialsTable    = []byte("acme_serial_certs_index")
	accountsTable   = []byte("acme_accounts")
	accountKeyTable = []byte("acme_keyID_accountID_index")
)

// heldAccount is a new account of a token provisioner, held from
// CreateAccount until UpdateExternalAccountKey writes it with its binding
// and the token's spend: an account without its binding never exists.
type heldAccount struct {
	rec   stepAccount
	keyID string
}

// errKeyTaken is a concurrent new-account with the same key that won.
var errKeyTaken = errors.New("an account with this key was created by a concurrent request")

// holdAccount gives acc its id and keeps its record for the binding
// transaction. It reports false when the request carries no state (a call
// from outside a request), so the caller stores the account at once.
func (d *acmeDB) holdAccount(ctx context.Context, acc *acme.Account) (bool, error) {
	st, ok := stateIn(ctx)
	if !ok {
		return false, nil
	}
	kid, err := acme.KeyToID(acc.Key)
	if err != nil {
		return true, err
	}
	id, err := newRecordID()
	if err != nil {
		return true, err
	}
	acc.ID = id
	st.account = &heldAccount{keyID: kid, rec: stepAccount{
		ID: id, Key: acc.Key, Contact: acc.Contact, Status: acc.Status, CreatedAt: stepNow(),
		LocationPrefix: acc.LocationPrefix, ProvisionerID: acc.ProvisionerID, ProvisionerName: acc.ProvisionerName,
	}}
	return true, nil
}

// writeBoundAccount stores a held account, its key index, its retention
// index entry and its binding (spending the token) in one transaction.
func (d *acmeDB) writeBoundAccount(ctx context.Context, a *heldAccount, b store.Binding) error {
	return d.store.Txn(ctx, func(kv store.KV) error {
		switch _, err := kv.GetForUpdate(accountKeyTable, []byte(a.keyID)); {
		case err == nil:
			return errKeyTaken
		case !store.IsNotFound(err):
			return err
		}
		if err := kv.Set(accountKeyTable, []byte(a.keyID), []byte(a.rec.ID)); err != nil {
			return err
		}
		if err := putJSON(kv, accountsTable, a.rec.ID, a.rec); err != nil {
			return err
		}
		if err := store.IndexAccountIn(kv, a.rec.ID, a.rec.CreatedAt); err != nil {
			return err
		}
		return store.BindIn(kv, b)
	})
}

// newRecordID is smallstep's record id: 32 random alphanumerics.
func newRecordID() (string, error) { return randutil.Alphanumeric(32) }

// stepNow is smallstep's record clock: UTC, whole seconds.
func stepNow() time.Time { return time.Now().UTC().Truncate(time.Second) }

// newOrderWrites are a new-order's records, held until CreateOrder writes
// them with the order: nothing of a refused order reaches the store.
type newOrderWrites struct {
	challenges []stepChallenge
	authzs     []stepAuthz
}

// finalizeWrites are a finalize's records after signing, written with the
// order update.
type finalizeWrites struct {
	// authority is smallstep's own record of the signature (x509_certs).
	authority    heldCert
	hasAuthority bool
	cert         stepCert
	serial       stepSerial
	record       store.CertRecord
	audit        []any
}

// putJSON marshals v into a transaction.
func putJSON(kv store.KV, table []byte, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s %s: %w", table, key, err)
	}
	return kv.Set(table, []byte(key), b)
}

// errTxnRefused carries a problem out of a transaction callback.
type errTxnRefused struct{ problem *acme.Error }

func (e errTxnRefused) Error() string { return e.problem.Error() }

// writeNewOrder stores an order with the challenges and authorizations of
// its request, adds it to the account's order index (held for update, so
// concurrent new-orders of one account, at any replica, both land) and,
// when it replaces a certificate, claims that certificate (RFC 9773).
func (d *acmeDB) writeNewOrder(ctx context.Context, o *acme.Order, replacesSerial string) error {
	id, err := newRecordID()
	if err != nil {
		return acme.WrapErrorISE(err, "error generating order id")
	}
	o.ID = id
	now := stepNow()
	rec := stepOrder{
		ID: o.ID, AccountID: o.AccountID, ProvisionerID: o.ProvisionerID, Status: o.Status,
		CreatedAt: now, ExpiresAt: o.ExpiresAt, Identifiers: o.Identifiers,
		NotBefore: o.NotBefore, NotAfter: o.NotAfter, AuthorizationIDs: o.AuthorizationIDs,
	}
	w := stateFrom(ctx).newOrder
	err = d.store.Txn(ctx, func(kv store.KV) error {
		if replacesSerial != "" {
			if err := store.ClaimReplacementIn(kv, replacesSerial, o.AccountID, o.ID); err != nil {
				return err
			}
		}
		if w != nil {
			for _, ch := range w.challenges {
				if err := putJSON(kv, challengesTable, ch.ID, ch); err != nil {
					return err
				}
			}
			for _, az := range w.authzs {
				if err := putJSON(kv, authzsTable, az.ID, az); err != nil {
					return err
				}
				if err := store.IndexAuthorizationIn(kv, az.ID, az.ChallengeIDs, az.ExpiresAt); err != nil {
					return err
				}
			}
		}
		if err := putJSON(kv, ordersTable, rec.ID, rec); err != nil {
			return err
		}
		if err := store.IndexOrderIn(kv, rec.ID, rec.AccountID, rec.ExpiresAt, rec.NotAfter); err != nil {
			return err
		}
		ids, err := openOrderIDs(kv, o.AccountID, now)
		if err != nil {
			return err
		}
		return putJSON(kv, orderIndexTable, o.AccountID, append(ids, o.ID))
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrNotFound):
		return acme.NewDetailedError(acme.ErrorMalformedType, "replaces names certificate %s, which this CA does not know", replacesSerial)
	case errors.Is(err, store.ErrOtherAccount):
		return acme.NewDetailedError(acme.ErrorUnauthorizedType, "certificate %s was issued to another account", replacesSerial)
	case errors.Is(err, store.ErrAlreadyReplaced):
		return &acme.Error{Type: "urn:ietf:params:acme:error:alreadyReplaced", Detail: fmt.Sprintf("certificate %s has already been replaced", replacesSerial), Status: http.StatusConflict}
	}
	return acme.WrapErrorISE(err, "error storing order")
}

// openOrderIDs reads an account's order index for update and keeps the
// orders that may still be pending or ready (smallstep keeps pending ones;
// the listing filters again on read). An index smallstep's listing left
// empty, or one naming orders retention removed, is tolerated.
func openOrderIDs(kv store.KV, accountID string, now time.Time) ([]string, error) {
	b, err := kv.GetForUpdate(orderIndexTable, []byte(accountID))
	switch {
	case store.IsNotFound(err):
		return []string{}, nil
	case err != nil:
		return nil, err
	}
	var ids []string
	if len(b) > 0 {
		if err := json.Unmarshal(b, &ids); err != nil {
			return nil, fmt.Errorf("order index of %s: %w", accountID, err)
		}
	}
	keep := []string{}
	for _, id := range ids {
		ob, err := kv.Get(ordersTable, []byte(id))
		if store.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var o stepOrder
		if err := json.Unmarshal(ob, &o); err != nil {
			return nil, fmt.Errorf("order %s: %w", id, err)
		}
		if (o.Status == acme.StatusPending || o.Status == acme.StatusReady) && !now.After(o.ExpiresAt) {
			keep = append(keep, id)
		}
	}
	return keep, nil
}

// holdCertificate keeps a signed certificate's records for the order update
// that follows it in finalize.
func (d *acmeDB) holdCertificate(ctx context.Context, cert *acme.Certificate) error {
	id, err := newRecordID()
	if err != nil {
		return acme.WrapErrorISE(err, "error generating certificate id")
	}
	cert.ID = id
	st := stateFrom(ctx)
	w := &finalizeWrites{
		cert: stepCert{
			ID: id, AccountID: cert.AccountID, OrderID: cert.OrderID, CreatedAt: time.Now().UTC(),
			Leaf: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Leaf.Raw}),
		},
		serial: stepSerial{Serial: cert.Leaf.SerialNumber.String(), CertificateID: id},
	}
	w.authority, w.hasAuthority = d.held.take(w.serial.Serial)
	for _, c := range cert.Intermediates {
		w.cert.Intermediates = append(w.cert.Intermediates, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	w.record = store.CertRecord{
		Serial: cert.Leaf.SerialNumber.String(), AccountID: cert.AccountID, OrderID: cert.OrderID,
		DNSNames: cert.Leaf.DNSNames, NotBefore: cert.Leaf.NotBefore, NotAfter: cert.Leaf.NotAfter, IssuedAt: d.now().UTC(),
		AKI: hex.EncodeToString(cert.Leaf.AuthorityKeyId),
	}
	for _, ip := range cert.Leaf.IPAddresses {
		w.record.IPs = append(w.record.IPs, ip.String())
	}
	if len(cert.Leaf.URIs) == 1 {
		w.record.SPIFFEID = cert.Leaf.URIs[0].String()
	}
	if st.spec != nil {
		w.record.Provisioner = st.spec.Name
	}
	if st.binding != nil {
		w.record.Worker = st.binding.Worker
	}
	w.audit = []any{
		"serial", w.record.Serial, "account", cert.AccountID, "order", cert.OrderID,
		"notBefore", cert.Leaf.NotBefore, "notAfter", cert.Leaf.NotAfter, "dns", cert.Leaf.DNSNames,
	}
	if st.spec != nil {
		w.audit = append(w.audit, "provisioner", st.spec.Name)
	}
	for _, u := range cert.Leaf.URIs {
		w.audit = append(w.audit, "uri", u.String())
	}
	st.finalize = w
	return nil
}

// completeOrder writes the held certificate, its serial index, crank-ca's
// record (which drives ARI and revocation: without it the certificate would
// never be told to renew) and the order update in one transaction, and
// releases the finalize claim. Until it commits the client has nothing to
// download; if it fails, the order stays ready and a retry signs anew (the
// unsent certificate stays in the authority's x509 table only).
func (d *acmeDB) completeOrder(ctx context.Context, o *acme.Order) error {
	st := stateFrom(ctx)
	w := st.finalize
	err := d.store.Txn(ctx, func(kv store.KV) error {
		b, err := kv.GetForUpdate(ordersTable, []byte(o.ID))
		if err != nil {
			return err
		}
		var rec stepOrder
		if err := json.Unmarshal(b, &rec); err != nil {
			return fmt.Errorf("order %s: %w", o.ID, err)
		}
		if rec.CertificateID != "" {
			return errTxnRefused{orderNotReady("order %s was finalized meanwhile; fetch the order", o.ID)}
		}
		rec.Status, rec.Error, rec.CertificateID = o.Status, o.Error, o.CertificateID
		if w.hasAuthority {
			if err := w.authority.put(kv, w.serial.Serial); err != nil {
				return err
			}
		}
		if err := putJSON(kv, acmeCertsTable, w.cert.ID, w.cert); err != nil {
			return err
		}
		if err := putJSON(kv, serialsTable, w.serial.Serial, w.serial); err != nil {
			return err
		}
		if err := store.PutCertIn(kv, w.record); err != nil {
			return err
		}
		if err := store.IndexCertificateIn(kv, w.record.Serial, w.cert.ID, w.record.NotAfter); err != nil {
			return err
		}
		if err := putJSON(kv, ordersTable, rec.ID, rec); err != nil {
			return err
		}
		if st.claim != "" {
			return d.store.ReleaseOrderClaimIn(kv, o.ID)
		}
		return nil
	})
	var refused errTxnRefused
	switch {
	case errors.As(err, &refused):
		return refused.problem
	case err != nil:
		return acme.WrapErrorISE(err, "error recording certificate for order %s", o.ID)
	}
	st.finalize, st.claim = nil, ""
	d.pending.Done(o.AccountID, o.ID)
	d.audit.Info("certificate issued", w.audit...)
	return nil
}

// abandonFinalize runs when a finalize request ends without completing its
// order: the signature still gets the authority's record.
func (d *acmeDB) abandonFinalize(ctx context.Context) {
	st := stateFrom(ctx)
	w := st.finalize
	if w == nil || !w.hasAuthority {
		return
	}
	st.finalize = nil
	if err := d.held.flush(context.WithoutCancel(ctx), d.store, w.serial.Serial, w.authority); err != nil {
		d.log.Error("recording a signed certificate", "serial", w.serial.Serial, "err", err)
	}
}
