package provisioner

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Attestor turns evidence presented by a worker into the identity it may be
// issued. Join tokens are the first implementation; JWTs come later, which is
// why the adapter depends on this interface rather than on tokens.
type Attestor interface {
	Attest(ctx context.Context, evidence string) (Identity, TokenClaims, error)
}

var _ Attestor = (*JoinTokenAttestor)(nil)

// JoinTokenConfig configures a JoinTokenAttestor.
type JoinTokenConfig struct {
	Provisioner string           // tokens minted for any other provisioner are refused
	Key         *TokenKey        // verifies token MACs
	Identities  *Identities      // resolves the worker a token names
	Now         func() time.Time // nil = time.Now; injectable for tests
}

// JoinTokenAttestor attests workers by join token. The evidence is the KID
// (the EAB key identifier); the MAC over the ACME request, keyed with the
// HMAC key from HMACKey, is checked by the adapter. Single use is the
// caller's job.
type JoinTokenAttestor struct{ cfg JoinTokenConfig }

// NewJoinTokenAttestor validates the configuration.
func NewJoinTokenAttestor(cfg JoinTokenConfig) (*JoinTokenAttestor, error) {
	var errs []error
	if err := checkProvisionerName(cfg.Provisioner); err != nil {
		errs = append(errs, &FieldError{Field: "provisioner", Err: err})
	}
	if cfg.Key == nil || len(cfg.Key.secret) == 0 {
		errs = append(errs, &FieldError{Field: "key", Err: errors.New("missing")})
	}
	if cfg.Identities == nil {
		errs = append(errs, &FieldError{Field: "identities", Err: errors.New("missing")})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &JoinTokenAttestor{cfg: cfg}, nil
}

// Attest verifies the KID, checks it was minted for this provisioner and
// names a worker, and looks that worker up. Errors wrap ErrTokenMalformed,
// ErrTokenForged, ErrTokenExpired or ErrUnknownWorker.
func (a *JoinTokenAttestor) Attest(ctx context.Context, kid string) (Identity, TokenClaims, error) {
	if err := ctx.Err(); err != nil {
		return Identity{}, TokenClaims{}, err
	}
	c, _, err := a.verify(kid)
	if err != nil {
		return Identity{}, TokenClaims{}, err
	}
	if c.Worker == "" {
		return Identity{}, TokenClaims{}, fmt.Errorf("%w: token names no worker", ErrUnknownWorker)
	}
	id, err := a.cfg.Identities.Lookup(c.Worker)
	if err != nil {
		return Identity{}, TokenClaims{}, err
	}
	return id, c, nil
}

// HMACKey returns the derived EAB HMAC key for a KID. It performs the same
// checks as Attest's token verification (format, MAC, expiry, provisioner),
// so a key is only ever handed out for a genuine, live token.
func (a *JoinTokenAttestor) HMACKey(kid string) ([]byte, error) {
	_, key, err := a.verify(kid)
	return key, err
}

func (a *JoinTokenAttestor) verify(kid string) (TokenClaims, []byte, error) {
	c, key, err := a.cfg.Key.Verify(kid, a.cfg.Now())
	if err != nil {
		return TokenClaims{}, nil, err
	}
	if c.Provisioner != a.cfg.Provisioner {
		return TokenClaims{}, nil, fmt.Errorf("%w: token minted for provisioner %q", ErrTokenForged, c.Provisioner)
	}
	return c, key, nil
}
