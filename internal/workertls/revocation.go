package workertls

import (
	"crypto/x509"
	"math/big"
	"strconv"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// RevocationChecker tells whether a certificate issued by our CA has been
// revoked; *agent.Agent implements it from the CA's CRL. Revoked is called
// on every handshake, so it must be cheap and safe for concurrent use.
type RevocationChecker interface {
	Revoked(serial *big.Int) bool
}

// RevokedError refuses a peer whose certificate the CA has revoked.
type RevokedError struct {
	ID     spiffeid.ID // the peer's SPIFFE ID, for the log line
	Serial *big.Int    // the revoked certificate's serial
}

func (e *RevokedError) Error() string {
	return "workertls: peer " + strconv.Quote(e.ID.String()) + " presented certificate serial " + e.Serial.String() + ", which the CA has revoked"
}

// RefuseRevoked wraps authz so that a peer whose leaf certificate rc reports
// revoked is refused with a *RevokedError before authz is consulted; others
// are decided by authz. Only leaves are checked: the CA's CRL covers the
// certificates it issues to workers, and the rest of a verified chain is
// our own intermediate and pinned root.
//
// The check runs where authz runs: on every full handshake and, through
// ServerConfig's and ClientConfig's re-verification, on every resumed one,
// so a session ticket does not outlive a revocation. Connections already
// open are not closed; they end with their idle timeout.
// It panics if authz or rc is nil, as ServerConfig does for its arguments.
func RefuseRevoked(authz tlsconfig.Authorizer, rc RevocationChecker) tlsconfig.Authorizer {
	if authz == nil {
		panic("workertls: nil Authorizer")
	}
	if rc == nil {
		panic("workertls: nil RevocationChecker")
	}
	return func(id spiffeid.ID, verifiedChains [][]*x509.Certificate) error {
		for _, chain := range verifiedChains {
			if len(chain) == 0 {
				continue
			}
			if s := chain[0].SerialNumber; rc.Revoked(s) {
				return &RevokedError{ID: id, Serial: s}
			}
		}
		return authz(id, verifiedChains)
	}
}
