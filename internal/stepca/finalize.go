package stepca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/smallstep/certificates/acme"
	steppro "github.com/smallstep/certificates/authority/provisioner"
	"go.step.sm/crypto/jose"

	"github.com/crank-platform/crank-ca/internal/store"
	"github.com/crank-platform/crank-ca/provisioner"
)

// finalizer stands in for smallstep's ACME provisioner during finalize, the
// only moment smallstep asks the provisioner for sign options. It embeds the
// stock provisioner (lifetime claims, policy, key checks stay smallstep's) and
// adds crank-ca's: the CSR key must not be the account key, and worker
// leaves get the identity's SPIFFE profile whatever the CSR asked for.
type finalizer struct {
	*steppro.ACME
	spec *Provisioner
	db   *acmeDB
}

func (f *finalizer) AuthorizeSign(ctx context.Context, token string) ([]steppro.SignOption, error) {
	opts, err := f.ACME.AuthorizeSign(ctx, token)
	if err != nil {
		return nil, err
	}
	st := stateFrom(ctx)
	if err := f.db.claim(ctx, st.orderID); err != nil {
		return nil, err
	}
	// Read after the claim: a finalize that read the order before another
	// one completed it must not sign it again.
	o, err := f.db.GetOrder(ctx, st.orderID)
	if err != nil {
		return nil, acme.WrapErrorISE(err, "error reading order %s", st.orderID)
	}
	if o.Status == acme.StatusValid || o.Status == acme.StatusInvalid || o.CertificateID != "" {
		return nil, orderNotReady("order %s was finalized meanwhile; fetch the order", o.ID)
	}
	acc, err := f.db.GetAccount(ctx, o.AccountID)
	if err != nil {
		return nil, acme.WrapErrorISE(err, "error reading account %s", o.AccountID)
	}
	if st.csr == nil {
		// The precheck decodes every finalize; without its CSR nothing
		// here can be checked, so nothing is signed.
		return nil, acme.NewDetailedError(acme.ErrorBadCSRType, "the finalize request carries no readable CSR")
	}
	if sameKey(acc.Key, st.csr.PublicKey) {
		return nil, acme.NewDetailedError(acme.ErrorBadCSRType, "the CSR's public key is the account key; use a separate key for the certificate (RFC 8555 section 11.1)")
	}
	if err := checkLeafKey(st.csr.PublicKey); err != nil {
		return nil, acme.NewDetailedError(acme.ErrorBadCSRType, "%v", err)
	}
	opts = append(opts, accountKeyValidator{account: acc.Key})
	if f.spec.Kind != KindWorkers {
		if err := f.spec.Policy.CheckCertificate(&x509.Certificate{
			Subject: st.csr.Subject, DNSNames: st.csr.DNSNames, IPAddresses: st.csr.IPAddresses,
			URIs: st.csr.URIs, EmailAddresses: st.csr.EmailAddresses,
		}); err != nil {
			return nil, acme.NewDetailedError(acme.ErrorBadCSRType, "%v", err)
		}
		return append(opts, issuanceValidator{policy: &f.spec.Policy}), nil
	}
	b, err := f.db.store.Binding(ctx, o.AccountID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, acme.NewDetailedError(acme.ErrorUnauthorizedType, "account %s is not bound to an identity", o.AccountID)
	case err != nil:
		return nil, acme.WrapErrorISE(err, "error reading account binding")
	}
	if err := f.db.bindingUsable(ctx, b); err != nil {
		return nil, err
	}
	st.binding = &b
	id, err := f.spec.identity(b.Worker, b.Attestor, b.SPIFFEID, b.DNSNames, b.IPs)
	if err != nil {
		return nil, acme.NewDetailedError(acme.ErrorUnauthorizedType, "%v", err)
	}
	return append(opts, leafProfile{identity: id}, issuanceValidator{identity: &id}), nil
}

// claimTTL is how long a finalize claim holds off others: longer than any
// signing takes, short enough that an order whose finalizing replica died
// can be finalized again soon.
const claimTTL = time.Minute

// claim makes this request the only finalizer of the order (see
// store.ClaimOrder); the others get orderNotReady, never a second
// certificate or a 500.
func (d *acmeDB) claim(ctx context.Context, orderID string) error {
	st := stateFrom(ctx)
	if orderID == "" {
		return acme.NewDetailedError(acme.ErrorMalformedType, "finalize names no order")
	}
	holder, err := randomHolder()
	if err != nil {
		return acme.WrapErrorISE(err, "error claiming order %s", orderID)
	}
	switch err := d.store.ClaimOrder(ctx, orderID, holder, claimTTL); {
	case errors.Is(err, store.ErrClaimed):
		return orderNotReady("order %s is being finalized by another request; fetch the order", orderID)
	case err != nil:
		return acme.WrapErrorISE(err, "error claiming order %s", orderID)
	}
	st.claim = holder
	return nil
}

// orderNotReady is RFC 8555 section 7.4's refusal of a finalize of an order
// that is not ready: 403 (smallstep's own answers 400).
func orderNotReady(format string, args ...any) *acme.Error {
	e := acme.NewDetailedError(acme.ErrorOrderNotReadyType, format, args...)
	e.Status = http.StatusForbidden
	return e
}

// GetOrder, read by a finalize for its own account, refuses an order that
// is not ready (RFC 8555 section 7.4): smallstep answers a finalize of a
// valid order with 200 and the order, and of a pending one with 400. An
// order of another account is left to smallstep's ownership check.
func (d *acmeDB) GetOrder(ctx context.Context, id string) (*acme.Order, error) {
	o, err := d.DB.GetOrder(ctx, id)
	st := stateFrom(ctx)
	if err != nil || st.orderID != id || st.orderChecked || st.signer == "" || st.signer != o.AccountID {
		return o, err
	}
	st.orderChecked = true
	if err := o.UpdateStatus(ctx, d); err != nil {
		return nil, err
	}
	if o.Status != acme.StatusReady {
		return nil, orderNotReady("order %s is %s, not ready; fetch the order", o.ID, o.Status)
	}
	return o, nil
}

// releaseClaim ends this request's finalize claim, if it holds one.
func (d *acmeDB) releaseClaim(ctx context.Context) {
	d.abandonFinalize(ctx)
	st := stateFrom(ctx)
	if st.claim == "" {
		return
	}
	if err := d.store.ReleaseOrderClaim(context.WithoutCancel(ctx), st.orderID, st.claim); err != nil {
		d.log.Warn("releasing a finalize claim", "order", st.orderID, "err", err)
	}
	st.claim = ""
}

func randomHolder() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// sameKey compares keys by their RFC 7638 thumbprint.
func sameKey(account *jose.JSONWebKey, pub crypto.PublicKey) bool {
	if account == nil || pub == nil {
		return false
	}
	a, err := account.Thumbprint(crypto.SHA256)
	if err != nil {
		return false
	}
	b, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return false
	}
	return string(a) == string(b)
}

// accountKeyValidator re-checks the signed certificate's key: the early
// badCSR check reads the request before smallstep verified it, this one reads
// what is about to be signed.
type accountKeyValidator struct{ account *jose.JSONWebKey }

func (v accountKeyValidator) Valid(cert *x509.Certificate, _ steppro.SignOptions) error {
	if sameKey(v.account, cert.PublicKey) {
		return errors.New("certificate key equals the account key")
	}
	return nil
}

// issuanceValidator is the last check before signing, on the certificate
// itself (after smallstep's template and crank-ca's leaf profile): its key,
// its validity against the signing clock, and its names against the
// provisioner's policy (acme) or the bound identity (workers). It is
// independent of the new-order checks, so a request that slipped past them
// still cannot obtain a name it may not have. Its refusals are problem
// documents that smallstep passes through (errors.As finds them).
type issuanceValidator struct {
	policy   *provisioner.NamePolicy // acme provisioners
	identity *provisioner.Identity   // worker provisioners
}

func (v issuanceValidator) Valid(cert *x509.Certificate, _ steppro.SignOptions) error {
	if err := checkLeafKey(cert.PublicKey); err != nil {
		return acme.NewDetailedError(acme.ErrorBadCSRType, "%v", err)
	}
	// smallstep signs with the wall clock; an order's notBefore was
	// checked at new-order and the order stays open for orderLifetime.
	now := time.Now()
	if cert.NotBefore.After(now.Add(maxClockSkew)) || cert.NotBefore.Before(now.Add(-orderLifetime-maxClockSkew-backdateAllowance)) {
		return acme.NewDetailedError(acme.ErrorMalformedType, "the certificate would start at %s, outside the allowed skew", cert.NotBefore.UTC().Format(time.RFC3339))
	}
	switch {
	case v.policy != nil:
		if err := v.policy.CheckCertificate(cert); err != nil {
			return acme.NewDetailedError(acme.ErrorRejectedIdentifierType, "%v", err)
		}
	case v.identity != nil:
		for _, n := range cert.DNSNames {
			if err := v.identity.CheckIdentifier("dns", n); err != nil {
				return acme.NewDetailedError(acme.ErrorRejectedIdentifierType, "%v", err)
			}
		}
		for _, ip := range cert.IPAddresses {
			if err := v.identity.CheckIdentifier("ip", ip.String()); err != nil {
				return acme.NewDetailedError(acme.ErrorRejectedIdentifierType, "%v", err)
			}
		}
		if len(cert.URIs) != 1 || cert.URIs[0].String() != v.identity.SPIFFEID.String() || len(cert.EmailAddresses) > 0 {
			return acme.NewDetailedError(acme.ErrorRejectedIdentifierType, "a worker certificate carries exactly its SPIFFE ID %s", v.identity.SPIFFEID)
		}
	default:
		return acme.NewDetailedError(acme.ErrorServerInternalType, "no policy to check the certificate against")
	}
	return nil
}

// leafProfile applies the worker identity's SPIFFE leaf profile after
// smallstep's template, so the CSR cannot add names or usages.
type leafProfile struct{ identity provisioner.Identity }

func (l leafProfile) Modify(cert *x509.Certificate, _ steppro.SignOptions) error {
	if err := l.identity.ApplyLeaf(cert); err != nil {
		return fmt.Errorf("apply leaf profile: %w", err)
	}
	return nil
}
