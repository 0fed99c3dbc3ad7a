package workertls

import (
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/crank-platform/crank-ca/internal/agent"
)

// Source yields the identity to use right now; *agent.Agent implements it.
// Current is called on every handshake, so it must be cheap and safe for
// concurrent use. It may return nil before the first certificate exists;
// handshakes then fail with ErrNoIdentity.
type Source interface {
	Current() *agent.Identity
}

// svidSource adapts a Source to go-spiffe's x509svid.Source. It holds the
// Source, not an identity, so each handshake sees the latest rotation.
type svidSource struct{ src Source }

func (s svidSource) GetX509SVID() (*x509svid.SVID, error) {
	id := s.src.Current()
	if id == nil {
		return nil, ErrNoIdentity
	}
	// An expired certificate is never presented: the peer would refuse it
	// anyway, and a handshake error names the real problem.
	if !time.Now().Before(id.NotAfter()) {
		return nil, fmt.Errorf("%w: serial %s expired at %s", ErrExpired, id.Serial(), id.NotAfter().UTC().Format(time.RFC3339))
	}
	return &x509svid.SVID{ID: id.SPIFFEID, Certificates: id.Chain, PrivateKey: id.Key}, nil
}

// bundleSource adapts a Source to go-spiffe's x509bundle.Source: the bundle
// of our own trust domain is the current identity's pinned roots, and no
// other trust domain has one.
type bundleSource struct{ src Source }

func (b bundleSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	id := b.src.Current()
	if id == nil {
		return nil, ErrNoIdentity
	}
	own := id.SPIFFEID.TrustDomain()
	if td != own {
		return nil, &TrustDomainError{Got: td, Want: own}
	}
	return x509bundle.FromX509Authorities(own, id.Roots), nil
}
