package stepca

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/smallstep/certificates/acme"
	"go.step.sm/crypto/jose"

	"github.com/crank-platform/crank-ca/internal/store"
	"github.com/crank-platform/crank-ca/provisioner"
)

// tokenChecker decides whether an EAB key id (a crank-ca join token or EAB
// credential) may register an account on a provisioner. Both the early check
// in the linker and smallstep's own EAB lookup call it, so they cannot
// disagree.
type tokenChecker struct {
	key   *provisioner.TokenKey
	store *store.Store
	now   func() time.Time
	audit *slog.Logger
}

// errTokenSpent marks the refusal of a spent token, which a replayed
// new-account of the account the token bound is excused from.
var errTokenSpent = errors.New("the join token has already been used")

type tokenInfo struct {
	kid      string
	claims   provisioner.TokenClaims
	hmacKey  []byte
	identity *provisioner.Identity // workers only
}

// check decides, and records every refusal in the audit stream: a refused
// token is an attestation decision as much as a binding is.
func (t *tokenChecker) check(ctx context.Context, spec *Provisioner, kid string) (tokenInfo, error) {
	info, err := t.decide(ctx, spec, kid)
	if err != nil {
		t.refused(spec, info, kid, err)
		return tokenInfo{}, err
	}
	return info, nil
}

// checkRegistration is check for a new-account signed with jwk, which
// also recognises a replay: the same key registering again with the token
// that bound its account (the first response was lost, say to a replica
// that died). replay is then true and err nil.
func (t *tokenChecker) checkRegistration(ctx context.Context, spec *Provisioner, kid string, jwk *jose.JSONWebKey) (info tokenInfo, replay bool, err error) {
	info, err = t.decide(ctx, spec, kid)
	switch {
	case err == nil:
		return info, false, nil
	case t.boundByThisToken(ctx, err, jwk, kid):
		t.audit.Info("new-account replayed by the account its token bound", "provisioner", spec.Name, "worker", info.claims.Worker, "kid", kidDigest(kid))
		return tokenInfo{}, true, nil
	}
	t.refused(spec, info, kid, err)
	return tokenInfo{}, false, err
}

// refused records a refusal in the audit stream.
func (t *tokenChecker) refused(spec *Provisioner, info tokenInfo, kid string, err error) {
	reason := err.Error()
	var ae *acme.Error
	if errors.As(err, &ae) {
		reason = ae.Detail
	}
	t.audit.Warn("join token refused", "provisioner", spec.Name, "worker", info.claims.Worker, "kid", kidDigest(kid), "reason", reason)
}

// boundByThisToken reports whether err refuses a spent token that bound
// the account of jwk. The JWS is not verified yet when this runs; smallstep
// verifies it with jwk before answering, so a request that names someone
// else's key gets nothing from the excuse.
func (t *tokenChecker) boundByThisToken(ctx context.Context, err error, jwk *jose.JSONWebKey, kid string) bool {
	var ae *acme.Error
	if jwk == nil || !errors.As(err, &ae) || !errors.Is(ae.Err, errTokenSpent) {
		return false
	}
	keyID, err := acme.KeyToID(jwk)
	if err != nil {
		return false
	}
	accID, err := t.store.AccountByKeyID(ctx, keyID)
	if err != nil {
		return false
	}
	b, err := t.store.Binding(ctx, accID)
	return err == nil && b.KID == kid
}

func (t *tokenChecker) decide(ctx context.Context, spec *Provisioner, kid string) (tokenInfo, error) {
	claims, hmacKey, err := t.key.Verify(kid, t.now())
	switch {
	case errors.Is(err, provisioner.ErrTokenExpired):
		return tokenInfo{}, acme.NewDetailedError(acme.ErrorUnauthorizedType, "the join token has expired; mint a new one")
	case errors.Is(err, provisioner.ErrTokenForged):
		return tokenInfo{}, acme.NewDetailedError(acme.ErrorUnauthorizedType, "the join token is not valid for this CA (tampered or minted elsewhere)")
	case err != nil:
		return tokenInfo{}, acme.NewDetailedError(acme.ErrorUnauthorizedType, "the external account binding kid is not a crank-ca token")
	}
	if claims.Provisioner != spec.Name {
		return tokenInfo{claims: claims}, acme.NewDetailedError(acme.ErrorUnauthorizedType, "the token was minted for provisioner %q, not %q", claims.Provisioner, spec.Name)
	}
	info := tokenInfo{claims: claims, hmacKey: hmacKey}
	switch spec.Kind {
	case KindWorkers:
		if claims.Worker == "" {
			return tokenInfo{claims: claims}, acme.NewDetailedError(acme.ErrorUnauthorizedType, "the token names no worker")
		}
		id, err := spec.identity(claims.Worker, claims.Attestor, claims.SPIFFEID, claims.DNSNames, claims.IPs)
		if err != nil {
			return tokenInfo{claims: claims}, acme.NewDetailedError(acme.ErrorUnauthorizedType, "%v", err)
		}
		info.identity = &id
		ws, err := t.store.Worker(ctx, spec.Name, claims.Worker)
		if err != nil {
			return tokenInfo{claims: claims}, acme.WrapErrorISE(err, "error reading worker state")
		}
		if ws.Disabled {
			return tokenInfo{claims: claims}, acme.NewDetailedError(acme.ErrorUnauthorizedType, "worker %q is disabled", claims.Worker)
		}
		if !ws.DisabledAt.IsZero() && !claims.IssuedAt.After(ws.DisabledAt) {
			return tokenInfo{claims: claims}, acme.NewDetailedError(acme.ErrorUnauthorizedType, "the join token was minted before worker %q was disabled; mint a new one", claims.Worker)
		}
	default:
		if claims.Worker != "" {
			return tokenInfo{claims: claims}, acme.NewDetailedError(acme.ErrorUnauthorizedType, "a worker token cannot register on provisioner %q", spec.Name)
		}
	}
	used, err := t.store.TokenUsed(ctx, kid)
	if err != nil {
		return tokenInfo{}, acme.WrapErrorISE(err, "error reading token state")
	}
	if used {
		e := acme.NewDetailedError(acme.ErrorUnauthorizedType, "the join token has already been used")
		e.Err = errTokenSpent
		return tokenInfo{claims: claims}, e
	}
	return info, nil
}
