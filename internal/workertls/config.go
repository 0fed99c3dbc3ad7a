package workertls

import (
	"crypto/tls"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ServerConfig returns a server tls.Config for mutual TLS between workers:
// TLS 1.2 or later; the certificate presented is src.Current()'s, looked up
// at every handshake so that rotation needs no restart; a client
// certificate is required, verified against the current roots of our
// trust domain and then checked by authz on the client's SPIFFE ID.
//
// Resumed TLS sessions skip certificate verification in crypto/tls, which
// would let a session established before a change of roots outlive it, so
// the peer's certificates are verified and authorized again on resumption.
//
// Do not set Certificates on the result: crypto/tls prefers it over
// GetCertificate when the client sends no SNI, as clients dialing an IP
// address do, and the rotating certificate would never be served.
// It panics if src or authz is nil, as that is a programming error best
// caught at start-up rather than on the first handshake.
func ServerConfig(src Source, authz tlsconfig.Authorizer) *tls.Config {
	mustArgs(src, authz)
	bundles := bundleSource{src}
	cfg := tlsconfig.MTLSServerConfig(svidSource{src}, bundles, authz)
	cfg.VerifyConnection = verifyResumed(bundles, authz)
	return cfg
}

// ClientConfig is ServerConfig for the dialing side: it presents
// src.Current()'s certificate when the server asks for one, and verifies
// the server's SVID against the current roots and authz instead of by host
// name (hence InsecureSkipVerify is set; go-spiffe's VerifyPeerCertificate
// does the verification). It panics if src or authz is nil.
func ClientConfig(src Source, authz tlsconfig.Authorizer) *tls.Config {
	mustArgs(src, authz)
	bundles := bundleSource{src}
	cfg := tlsconfig.MTLSClientConfig(svidSource{src}, bundles, authz)
	cfg.VerifyConnection = verifyResumed(bundles, authz)
	return cfg
}

func mustArgs(src Source, authz tlsconfig.Authorizer) {
	if src == nil {
		panic("workertls: nil Source")
	}
	if authz == nil {
		panic("workertls: nil Authorizer")
	}
}

// verifyResumed re-runs SPIFFE verification on resumed connections, where
// crypto/tls does not call VerifyPeerCertificate. Full handshakes were
// already verified by go-spiffe's callback and are not checked twice.
func verifyResumed(bundles x509bundle.Source, authz tlsconfig.Authorizer) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if !cs.DidResume {
			return nil
		}
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("resumed session: %w", ErrNoPeerCertificate)
		}
		id, chains, err := x509svid.Verify(cs.PeerCertificates, bundles)
		if err != nil {
			return fmt.Errorf("resumed session: %w", err)
		}
		if err := authz(id, chains); err != nil {
			return fmt.Errorf("resumed session: %w", err)
		}
		return nil
	}
}

// PeerID returns the SPIFFE ID of the peer of a connection, typically
// r.TLS in an HTTP handler, so that handlers can make finer decisions than
// the connection-level Authorizer. It trusts that the peer was verified
// during the handshake, which holds for connections made with ServerConfig
// or ClientConfig; on other connections it merely reads the certificate.
func PeerID(cs *tls.ConnectionState) (spiffeid.ID, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, ErrNoPeerCertificate
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("workertls: peer certificate: %w", err)
	}
	return id, nil
}
