package workertls

import (
	"errors"
	"strconv"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrNoIdentity is returned during a handshake when the Source has no
// identity yet. Refusing the handshake is the only safe answer: there is no
// certificate to present and no roots to verify the peer against.
var ErrNoIdentity = errors.New("workertls: no current identity")

// ErrNoPeerCertificate reports a connection without a peer certificate, for
// example a plain TLS connection or a nil connection state, so PeerID has no
// SPIFFE ID to return.
var ErrNoPeerCertificate = errors.New("workertls: no peer certificate")

// TrustDomainError reports a peer from a trust domain we hold no bundle
// for. A worker only trusts its own trust domain (the roots pinned at
// bootstrap), so federation is refused explicitly rather than by a
// confusing chain-verification failure.
type TrustDomainError struct {
	Got  spiffeid.TrustDomain // the peer's trust domain
	Want spiffeid.TrustDomain // ours
}

func (e *TrustDomainError) Error() string {
	return "workertls: no trust bundle for trust domain " + strconv.Quote(e.Got.Name()) +
		" (only " + strconv.Quote(e.Want.Name()) + " is trusted)"
}

// AuthorizerError reports an authorization policy string that ParseAuthorizer
// cannot understand. It carries the value verbatim because such strings come
// from flags and config files, and the operator must see which one is wrong.
type AuthorizerError struct {
	Value string // the input, verbatim
	Err   error  // what is wrong with it
}

func (e *AuthorizerError) Error() string {
	return "workertls: invalid authorizer " + strconv.Quote(e.Value) + ": " + e.Err.Error()
}

// Unwrap exposes the cause (often a go-spiffe spiffeid parse error).
func (e *AuthorizerError) Unwrap() error { return e.Err }

// ErrExpired is returned instead of presenting an expired certificate.
var ErrExpired = errors.New("workertls: the current certificate has expired")
