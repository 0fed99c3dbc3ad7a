package stepca

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/smallstep/certificates/acme"

	"github.com/crank-platform/crank-ca/internal/ari"
	"github.com/crank-platform/crank-ca/internal/limit"
	"github.com/crank-platform/crank-ca/internal/nonce"
	"github.com/crank-platform/crank-ca/internal/store"
	"github.com/crank-platform/crank-ca/provisioner"
)

// acmeDB wraps smallstep's acme.DB. smallstep's handlers call it at every
// step of the protocol, which makes it the one place that can bind accounts
// to identities, pre-authorize orders and check lifetimes before anything is
// written. Methods it does not override go straight to the inner DB.
type acmeDB struct {
	acme.DB
	specs  map[string]*Provisioner // by provisioner ID
	store  *store.Store
	tokens *tokenChecker
	log    *slog.Logger
	audit  *slog.Logger
	now    func() time.Time
	// isRevoked asks the authority (revocations it made itself).
	isRevoked func(serial string) bool
	// pending counts each account's unfinished orders (limits).
	pending *limit.Pending
	nonces  *nonce.Source
	// held is the authority's database, holding certificate records for
	// the finalize transaction.
	held *heldDB
}

// CreateNonce issues an authenticated nonce: nothing is written (see
// package nonce).
func (d *acmeDB) CreateNonce(context.Context) (acme.Nonce, error) {
	n, err := d.nonces.New()
	if err != nil {
		return "", acme.WrapErrorISE(err, "error creating nonce")
	}
	return acme.Nonce(n), nil
}

// DeleteNonce spends a nonce: of any number of uses, at one replica or
// several, exactly one is accepted (RFC 8555 section 6.5).
func (d *acmeDB) DeleteNonce(ctx context.Context, n acme.Nonce) error {
	switch err := d.nonces.Consume(ctx, string(n)); {
	case errors.Is(err, nonce.ErrMalformed), errors.Is(err, nonce.ErrExpired), errors.Is(err, nonce.ErrSpent):
		return acme.NewError(acme.ErrorBadNonceType, "%v", err)
	case err != nil:
		return acme.WrapErrorISE(err, "error consuming nonce")
	}
	return nil
}

// CreateAccount stores an account with smallstep and indexes it for
// retention, which deletes it if it never orders (retention.unusedAccounts).
//
// An account of a token provisioner is only held here: it is written with
// its binding in UpdateExternalAccountKey, which smallstep calls next.
func (d *acmeDB) CreateAccount(ctx context.Context, acc *acme.Account) error {
	if spec := d.specs[acc.ProvisionerID]; spec != nil && spec.usesTokens() {
		if held, err := d.holdAccount(ctx, acc); held {
			return err
		}
	}
	if err := d.DB.CreateAccount(ctx, acc); err != nil {
		return err
	}
	if err := d.store.IndexAccount(ctx, acc.ID, d.now()); err != nil {
		d.log.Warn("indexing an account for retention", "account", acc.ID, "err", err)
	}
	return nil
}

// GetExternalAccountKey answers smallstep's EAB lookup with a key derived
// from the stateless token instead of a stored one.
func (d *acmeDB) GetExternalAccountKey(ctx context.Context, provID, kid string) (*acme.ExternalAccountKey, error) {
	spec := d.specs[provID]
	if spec == nil || !spec.usesTokens() {
		return d.DB.GetExternalAccountKey(ctx, provID, kid)
	}
	var info tokenInfo
	if t := stateFrom(ctx).token; t != nil && t.kid == kid {
		info = *t // checked by the precheck of this very request
	} else {
		var err error
		if info, err = d.tokens.check(ctx, spec, kid); err != nil {
			return nil, err
		}
	}
	return &acme.ExternalAccountKey{
		ID:            kid,
		ProvisionerID: provID,
		Reference:     info.claims.Worker,
		HmacKey:       info.hmacKey,
		CreatedAt:     d.now(),
	}, nil
}

// UpdateExternalAccountKey is called once the account exists: it spends the
// token and records the binding, atomically refusing a second use.
func (d *acmeDB) UpdateExternalAccountKey(ctx context.Context, provID string, eak *acme.ExternalAccountKey) error {
	spec := d.specs[provID]
	if spec == nil || !spec.usesTokens() {
		return d.DB.UpdateExternalAccountKey(ctx, provID, eak)
	}
	b := store.Binding{AccountID: eak.AccountID, Provisioner: spec.Name, Worker: eak.Reference, KID: eak.ID, BoundAt: d.now().UTC()}
	// The kid was verified moments ago in this request; without the
	// precheck's record, read its expiry as of the epoch so that a token
	// expiring right now still records one.
	var claims provisioner.TokenClaims
	if t := stateFrom(ctx).token; t != nil && t.kid == eak.ID {
		claims = t.claims
	} else if c, _, err := d.tokens.key.Verify(eak.ID, time.Unix(0, 0)); err == nil {
		claims = c
	}
	b.TokenExpiresAt = claims.ExpiresAt
	if claims.Attested() {
		b.Attestor, b.SPIFFEID, b.DNSNames, b.IPs = claims.Attestor, claims.SPIFFEID, claims.DNSNames, claims.IPs
		b.PodName, b.PodUID = claims.PodName, claims.PodUID
	}
	var err error
	if a := stateFrom(ctx).account; a != nil && a.rec.ID == eak.AccountID {
		err = d.writeBoundAccount(ctx, a, b)
	} else {
		err = d.store.Bind(ctx, b)
	}
	switch {
	case errors.Is(err, errKeyTaken):
		// RFC 8555 has no problem type for this race; 409 tells the
		// client its request met a concurrent one, not that it was bad.
		e := acme.NewDetailedError(acme.ErrorMalformedType, "an account with this key was created by a concurrent request; send new-account again to fetch it")
		e.Status = http.StatusConflict
		return e
	case errors.Is(err, store.ErrTokenUsed):
		d.audit.Warn("token reuse refused", "provisioner", spec.Name, "worker", b.Worker, "account", b.AccountID, "kid", kidDigest(b.KID))
		return acme.NewDetailedError(acme.ErrorUnauthorizedType, "the join token has already been used")
	case err != nil:
		return acme.WrapErrorISE(err, "error binding account")
	}
	attrs := []any{"provisioner", spec.Name, "worker", b.Worker, "account", b.AccountID, "kid", kidDigest(b.KID)}
	if b.Attestor != "" {
		attrs = append(attrs, "attestor", b.Attestor, "spiffeID", b.SPIFFEID)
		if b.PodName != "" {
			attrs = append(attrs, "pod", b.PodName, "podUID", b.PodUID)
		}
	}
	d.audit.Info("account bound", attrs...)
	return nil
}

// kidDigest identifies a token in logs by a short digest of its key id:
// the id is not secret but long, and every token of one provisioner shares
// its leading characters, so a prefix would name them all alike.
func kidDigest(kid string) string {
	sum := sha256.Sum256([]byte(kid))
	return "sha256:" + hex.EncodeToString(sum[:8])
}

// GetExternalAccountKeyByAccountID runs first in new-order for EAB
// provisioners. An account that is not bound (its bind failed, or it was
// created some other way) is refused here, before anything is written. For
// workers the answer carries a policy of exactly the identity's names, which
// smallstep enforces with rejectedIdentifier.
func (d *acmeDB) GetExternalAccountKeyByAccountID(ctx context.Context, provID, accID string) (*acme.ExternalAccountKey, error) {
	spec := d.specs[provID]
	if spec == nil || !spec.usesTokens() {
		return d.DB.GetExternalAccountKeyByAccountID(ctx, provID, accID)
	}
	b, err := d.store.Binding(ctx, accID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, acme.NewDetailedError(acme.ErrorUnauthorizedType, "account %s is not bound to an identity; register with a join token", accID)
	case err != nil:
		return nil, acme.WrapErrorISE(err, "error reading account binding")
	}
	if b.Provisioner != spec.Name {
		return nil, acme.NewDetailedError(acme.ErrorUnauthorizedType, "account %s is bound on provisioner %q", accID, b.Provisioner)
	}
	if err := d.bindingUsable(ctx, b); err != nil {
		return nil, err
	}
	st := stateFrom(ctx)
	st.binding = &b
	if spec.Kind != KindWorkers {
		return nil, nil //nolint:nilnil // smallstep reads nil as "no account policy"
	}
	id, err := spec.identity(b.Worker, b.Attestor, b.SPIFFEID, b.DNSNames, b.IPs)
	if err != nil {
		return nil, acme.NewDetailedError(acme.ErrorUnauthorizedType, "%v", err)
	}
	st.identity = &id
	return &acme.ExternalAccountKey{
		ID:            b.KID,
		ProvisionerID: provID,
		Reference:     b.Worker,
		AccountID:     accID,
		BoundAt:       b.BoundAt,
		Policy:        identityPolicy(id),
	}, nil
}

// bindingUsable refuses bindings of a disabled worker, and bindings made
// before its last disable: enabling a worker again needs a new token.
func (d *acmeDB) bindingUsable(ctx context.Context, b store.Binding) error {
	if b.Worker == "" {
		return nil
	}
	ws, err := d.store.Worker(ctx, b.Provisioner, b.Worker)
	if err != nil {
		return acme.WrapErrorISE(err, "error reading worker state")
	}
	if ws.Disabled {
		return acme.NewDetailedError(acme.ErrorUnauthorizedType, "worker %q is disabled", b.Worker)
	}
	if spec := d.specs["acme/"+b.Provisioner]; spec != nil && b.Attestor != "" && spec.MaxBindingAge > 0 {
		if age := d.now().Sub(b.BoundAt); age > spec.MaxBindingAge {
			return acme.NewDetailedError(acme.ErrorUnauthorizedType, "the account was bound by attestation %s ago, more than maxBindingAge %s; attest again for a new account", age.Round(time.Second), spec.MaxBindingAge)
		}
	}
	if !ws.DisabledAt.IsZero() && !b.BoundAt.After(ws.DisabledAt) {
		return acme.NewDetailedError(acme.ErrorUnauthorizedType, "worker %q was disabled after this account was bound; a new join token is needed", b.Worker)
	}
	return nil
}

// identityPolicy allows exactly the identity's names. An identity without
// names gets a policy that matches nothing, so it can order nothing.
func identityPolicy(id provisioner.Identity) *acme.Policy {
	p := &acme.Policy{}
	p.X509.Allowed.DNSNames = append([]string{}, id.DNSNames...)
	for _, ip := range id.IPs {
		p.X509.Allowed.IPRanges = append(p.X509.Allowed.IPRanges, netip.PrefixFrom(ip, ip.BitLen()).String())
	}
	if len(p.X509.Allowed.DNSNames) == 0 && len(p.X509.Allowed.IPRanges) == 0 {
		p.X509.Denied.DNSNames = []string{"*"}
	}
	return p
}

// covered reports whether this request's bound identity covers a value. The
// challenge record carries no identifier type, so both are tried.
func covered(ctx context.Context, accountID, value string) bool {
	st := stateFrom(ctx)
	if st.identity == nil || st.binding == nil || st.binding.AccountID != accountID {
		return false
	}
	return st.identity.Covers("dns", value) || st.identity.Covers("ip", value)
}

// CreateChallenge records the challenge; for a pre-authorized identifier
// it is valid from the start, so nobody can trigger a validation dial. In a
// new-order it is written with the order (see writeNewOrder).
func (d *acmeDB) CreateChallenge(ctx context.Context, ch *acme.Challenge) error {
	w := stateFrom(ctx).newOrder
	if w == nil {
		return d.createChallengeNow(ctx, ch)
	}
	id, err := newRecordID()
	if err != nil {
		return acme.WrapErrorISE(err, "error generating challenge id")
	}
	ch.ID, ch.Status = id, acme.StatusPending
	if covered(ctx, ch.AccountID, ch.Value) {
		ch.Status = acme.StatusValid
		ch.ValidatedAt = d.now().UTC().Format(time.RFC3339)
	}
	w.challenges = append(w.challenges, stepChallenge{
		ID: ch.ID, AccountID: ch.AccountID, Value: ch.Value, Status: ch.Status, Token: ch.Token,
		CreatedAt: stepNow(), Type: ch.Type, Target: ch.Target, ValidatedAt: ch.ValidatedAt,
	})
	return nil
}

// createChallengeNow is CreateChallenge outside a new-order (no caller in
// smallstep today): smallstep's write, then the pre-authorization.
func (d *acmeDB) createChallengeNow(ctx context.Context, ch *acme.Challenge) error {
	if err := d.DB.CreateChallenge(ctx, ch); err != nil {
		return err
	}
	if !covered(ctx, ch.AccountID, ch.Value) {
		return nil
	}
	ch.Status = acme.StatusValid
	ch.ValidatedAt = d.now().UTC().Format(time.RFC3339)
	return d.DB.UpdateChallenge(ctx, ch)
}

// UpdateChallenge makes a failed validation final. smallstep leaves a
// challenge whose target could not be reached pending (so that the client
// may retry), and re-runs the validation on every later POST to it: one
// order would then buy unlimited connection attempts to a target of the
// client's choice, with their timing to learn from. RFC 8555 section 7.5.1
// lets the server fail the challenge and its authorization instead, and a
// client must then start a new order (which the limits count).
func (d *acmeDB) UpdateChallenge(ctx context.Context, ch *acme.Challenge) error {
	failed := ch.Status == acme.StatusPending && ch.Error != nil
	if failed {
		ch.Status = acme.StatusInvalid
	}
	if err := d.DB.UpdateChallenge(ctx, ch); err != nil {
		return err
	}
	if !failed || ch.AuthorizationID == "" {
		return nil
	}
	az, err := d.DB.GetAuthorization(ctx, ch.AuthorizationID)
	if err != nil {
		return err
	}
	if az.Status != acme.StatusPending {
		return nil
	}
	az.Status = acme.StatusInvalid
	az.Error = ch.Error
	return d.DB.UpdateAuthorization(ctx, az)
}

// CreateAuthorization stores a pre-authorized identifier's authorization as
// valid: the bound identity is the proof.
func (d *acmeDB) CreateAuthorization(ctx context.Context, az *acme.Authorization) error {
	st := stateFrom(ctx)
	if covered(ctx, az.AccountID, az.Identifier.Value) {
		az.Status = acme.StatusValid
		st.preauthorized++
	}
	if st.newOrder == nil {
		if err := d.DB.CreateAuthorization(ctx, az); err != nil {
			return err
		}
		chIDs := make([]string, len(az.Challenges))
		for i, ch := range az.Challenges {
			chIDs[i] = ch.ID
		}
		return d.store.Txn(ctx, func(kv store.KV) error { return store.IndexAuthorizationIn(kv, az.ID, chIDs, az.ExpiresAt) })
	}
	id, err := newRecordID()
	if err != nil {
		return acme.WrapErrorISE(err, "error generating authorization id")
	}
	az.ID = id
	rec := stepAuthz{
		ID: az.ID, AccountID: az.AccountID, Status: az.Status, CreatedAt: stepNow(), ExpiresAt: az.ExpiresAt,
		Identifier: az.Identifier, Token: az.Token, Fingerprint: az.Fingerprint, Wildcard: az.Wildcard,
		ChallengeIDs: make([]string, len(az.Challenges)),
	}
	for i, ch := range az.Challenges {
		rec.ChallengeIDs[i] = ch.ID
	}
	st.newOrder.authzs = append(st.newOrder.authzs, rec)
	return nil
}

// backdateAllowance is smallstep's default backdate of an order's NotBefore;
// orderLifetime is how long its orders stay open (acme/api/order.go).
const (
	backdateAllowance = time.Minute
	orderLifetime     = 24 * time.Hour
)

// CreateOrder is the second, independent check of a new-order: it sees the
// order as smallstep parsed it (not the precheck's decoding) and refuses
// identifiers outside the provisioner's policy or the bound identity,
// validity outside the skew or the claims (smallstep would only notice at
// finalize, and answer 500), and accounts with too many pending orders. It
// marks fully pre-authorized orders ready.
func (d *acmeDB) CreateOrder(ctx context.Context, o *acme.Order) error {
	spec := d.specs[o.ProvisionerID]
	if spec == nil {
		return acme.NewDetailedError(acme.ErrorUnauthorizedType, "provisioner %q is not served here", o.ProvisionerID)
	}
	st := stateFrom(ctx)
	if n := len(o.Identifiers); n == 0 || n > spec.Limits.MaxIdentifiersPerOrder {
		return acme.NewDetailedError(acme.ErrorMalformedType, "an order must name 1 to %d identifiers, this one names %d", spec.Limits.MaxIdentifiersPerOrder, n)
	}
	for _, id := range o.Identifiers {
		switch spec.Kind {
		case KindACME:
			if err := spec.Policy.Check(string(id.Type), id.Value); err != nil {
				return policyProblem(spec, err)
			}
		case KindWorkers:
			if st.identity == nil || st.binding == nil || st.binding.AccountID != o.AccountID {
				return acme.NewDetailedError(acme.ErrorUnauthorizedType, "account %s is not bound to a worker identity", o.AccountID)
			}
			if err := st.identity.CheckIdentifier(string(id.Type), id.Value); err != nil {
				return acme.NewDetailedError(acme.ErrorRejectedIdentifierType, "%v", err)
			}
		}
	}
	// smallstep stamps the order with its own clock: ExpiresAt is its now
	// plus the order lifetime. Comparing with that clock (not crank-ca's
	// injected one) keeps the check exact.
	now := o.ExpiresAt.Add(-orderLifetime)
	if o.NotBefore.After(now.Add(maxClockSkew)) || o.NotBefore.Before(now.Add(-maxClockSkew-backdateAllowance)) {
		return acme.NewDetailedError(acme.ErrorMalformedType, "notBefore %s is more than %s away from now", o.NotBefore.UTC().Format(time.RFC3339), maxClockSkew)
	}
	if err := checkLifetime(spec, o.NotBefore, o.NotAfter); err != nil {
		return err
	}
	if n := d.pending.Count(o.AccountID); n >= spec.Limits.MaxPendingOrdersPerAccount {
		st.retryAfter = 60
		return rateLimited("account %s has %d pending orders (at most %d); finalize or let them expire first", o.AccountID, n, spec.Limits.MaxPendingOrdersPerAccount)
	}
	if st.preauthorized > 0 && st.preauthorized == len(o.AuthorizationIDs) {
		o.Status = acme.StatusReady
	}
	if err := d.createOrder(ctx, o); err != nil {
		return err
	}
	d.pending.Add(o.AccountID, o.ID, o.ExpiresAt)
	return nil
}

// GetOrdersByAccountID lists an account's pending orders (RFC 8555 section
// 7.1.2.1) without smallstep's rewrite of its index, which leaves a value
// its next new-order cannot parse once nothing is pending. Orders removed by
// retention are skipped rather than failing the listing.
func (d *acmeDB) GetOrdersByAccountID(ctx context.Context, accID string) ([]string, error) {
	return d.listOrders(ctx, accID, false)
}

// GetAllOrdersByAccountID is GetOrdersByAccountID including ready orders.
func (d *acmeDB) GetAllOrdersByAccountID(ctx context.Context, accID string) ([]string, error) {
	return d.listOrders(ctx, accID, true)
}

func (d *acmeDB) listOrders(ctx context.Context, accID string, includeReady bool) ([]string, error) {
	ids, err := d.store.AccountOrderIDs(ctx, accID)
	if err != nil {
		return nil, acme.WrapErrorISE(err, "error listing orders")
	}
	out := []string{}
	for _, id := range ids {
		// smallstep reports a missing order as malformed, not as not
		// found: ask the store whether retention removed it.
		if ok, err := d.store.Has(ctx, ordersTable, id); err != nil {
			return nil, acme.WrapErrorISE(err, "error listing orders")
		} else if !ok {
			continue
		}
		o, err := d.DB.GetOrder(ctx, id)
		if err != nil {
			return nil, err
		}
		if err := o.UpdateStatus(ctx, d); err != nil {
			return nil, err
		}
		if o.Status == acme.StatusPending || (includeReady && o.Status == acme.StatusReady) {
			out = append(out, id)
		}
	}
	return out, nil
}

// createOrder stores the order with its request's records in one
// transaction (see writeNewOrder), claiming the certificate it replaces.
func (d *acmeDB) createOrder(ctx context.Context, o *acme.Order) error {
	replaces := stateFrom(ctx).replaces
	serial := ""
	if replaces != "" {
		id, err := ari.ParseCertID(replaces)
		if err != nil {
			return acme.NewDetailedError(acme.ErrorMalformedType, "replaces: %v", err)
		}
		serial = id.Serial.String()
	}
	if err := d.writeNewOrder(ctx, o, serial); err != nil {
		return err
	}
	if serial != "" {
		d.audit.Info("certificate replacement ordered", "serial", serial, "order", o.ID, "account", o.AccountID)
	}
	return nil
}

func checkLifetime(spec *Provisioner, nb, na time.Time) error {
	if !na.After(nb) {
		return acme.NewDetailedError(acme.ErrorMalformedType, "notAfter must be after notBefore")
	}
	life := na.Sub(nb)
	if life < spec.MinDuration || life > spec.MaxDuration+backdateAllowance {
		return acme.NewDetailedError(acme.ErrorMalformedType,
			"requested lifetime %s is outside the provisioner's bounds [%s, %s]", life.Round(time.Second), spec.MinDuration, spec.MaxDuration)
	}
	return nil
}

// CreateCertificate holds the issued certificate's records for the order
// update that follows it in finalize (see completeOrder); outside a
// finalize it writes them at once.
func (d *acmeDB) CreateCertificate(ctx context.Context, cert *acme.Certificate) error {
	if err := d.holdCertificate(ctx, cert); err != nil {
		return err
	}
	st := stateFrom(ctx)
	if st.orderID == cert.OrderID && st.orderID != "" {
		return nil
	}
	o, err := d.DB.GetOrder(ctx, cert.OrderID)
	if err != nil {
		return err
	}
	o.CertificateID, o.Status = cert.ID, acme.StatusValid
	return d.completeOrder(ctx, o)
}

// UpdateOrder completes a finalize in one transaction; other updates
// (status changes smallstep computes on read) go to smallstep's write.
func (d *acmeDB) UpdateOrder(ctx context.Context, o *acme.Order) error {
	if w := stateFrom(ctx).finalize; w != nil && w.cert.OrderID == o.ID && o.CertificateID == w.cert.ID {
		return d.completeOrder(ctx, o)
	}
	return d.DB.UpdateOrder(ctx, o)
}
