package stepca

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/smallstep/certificates/acme"

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
		reason := err.Error()
		var ae *acme.Error
		if errors.As(err, &ae) {
			reason = ae.Detail
		}
		t.audit.Warn("join token refused", "provisioner", spec.Name, "worker", info.claims.Worker, "kid", kidDigest(kid), "reason", reason)
		return tokenInfo{}, err
	}
	return info, nil
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
		return tokenInfo{claims: claims}, acme.NewDetailedError(acme.ErrorUnauthorizedType, "the join token has already been used")
	}
	return info, nil
}
