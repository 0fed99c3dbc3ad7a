package workertls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/crank-platform/crank-ca/internal/agent"
)

// revocations is a RevocationChecker a test fills in, like a CRL update.
type revocations struct {
	mu      sync.Mutex
	serials map[string]bool
}

func (r *revocations) revoke(id *agent.Identity) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.serials == nil {
		r.serials = map[string]bool{}
	}
	r.serials[id.Serial()] = true
}

func (r *revocations) Revoked(serial *big.Int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.serials[serial.String()]
}

func TestRefuseRevokedMTLS(t *testing.T) {
	t.Parallel()
	ca := newCA(t, "crank root")
	apiID := spiffeid.RequireFromString(apiURI)
	tests := []struct {
		name          string
		revokeClient  bool
		revokeServer  bool
		revokeOther   bool                 // revoke an unrelated certificate
		serverAuth    tlsconfig.Authorizer // nil: AuthorizeMemberOf(td)
		wantServerErr bool                 // the server refuses the client with *RevokedError
		wantClientErr bool                 // the client refuses the server with *RevokedError
	}{
		{name: "nothing revoked"},
		{name: "another certificate revoked", revokeOther: true},
		{name: "revoked client refused by the server", revokeClient: true, wantServerErr: true},
		{name: "revoked server refused by the client", revokeServer: true, wantClientErr: true},
		{name: "revocation is checked before the authorizer", revokeClient: true, serverAuth: AuthorizeID(apiID), wantServerErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			server, client := newSource(ca.issue(t, apiURI)), newSource(ca.issue(t, dbURI))
			rc := &revocations{}
			if tt.revokeClient {
				rc.revoke(client.Current())
			}
			if tt.revokeServer {
				rc.revoke(server.Current())
			}
			if tt.revokeOther {
				rc.revoke(ca.issue(t, otherURI))
			}
			serverAuth := tt.serverAuth
			if serverAuth == nil {
				serverAuth = AuthorizeMemberOf(td)
			}
			o := connect(t,
				ServerConfig(server, RefuseRevoked(serverAuth, rc)),
				ClientConfig(client, RefuseRevoked(AuthorizeID(apiID), rc)))
			if !tt.wantServerErr && !tt.wantClientErr {
				if !o.ok() {
					t.Fatalf("server err = %v, client err = %v", o.serverErr, o.clientErr)
				}
				return
			}
			if o.clientErr == nil {
				t.Error("the client completed a refused connection")
			}
			// The refusing side reports the other side's certificate.
			got, want := o.clientErr, server.Current()
			if tt.wantServerErr {
				got, want = o.serverErr, client.Current()
			}
			var re *RevokedError
			if !errors.As(got, &re) {
				t.Fatalf("error = %v, want a *RevokedError", got)
			}
			if re.Serial.String() != want.Serial() || re.ID != want.SPIFFEID {
				t.Errorf("RevokedError = %v, want serial %s of %s", re, want.Serial(), want.SPIFFEID)
			}
			if !strings.Contains(got.Error(), "revoked") {
				t.Errorf("error %q does not say revoked", got)
			}
		})
	}
}

// TestRefuseRevokedResumed: a session established before the revocation
// does not let the revoked client back in by resumption.
func TestRefuseRevokedResumed(t *testing.T) {
	t.Parallel()
	ca := newCA(t, "root")
	server, client := newSource(ca.issue(t, apiURI)), newSource(ca.issue(t, dbURI))
	rc := &revocations{}
	serverCfg := ServerConfig(server, RefuseRevoked(AuthorizeMemberOf(td), rc))
	clientCfg := ClientConfig(client, RefuseRevoked(AuthorizeMemberOf(td), rc))
	clientCfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)

	if o := connect(t, serverCfg, clientCfg); !o.ok() {
		t.Fatalf("first connection: server err = %v, client err = %v", o.serverErr, o.clientErr)
	}
	if o := connect(t, serverCfg, clientCfg); !o.ok() || !o.server.DidResume {
		t.Fatalf("second connection: resumed=%v server err=%v client err=%v", o.server.DidResume, o.serverErr, o.clientErr)
	}
	rc.revoke(client.Current())
	o := connect(t, serverCfg, clientCfg)
	var re *RevokedError
	if !errors.As(o.serverErr, &re) || !strings.Contains(o.serverErr.Error(), "resumed session") {
		t.Errorf("server error = %v, want a resumed session refused with *RevokedError", o.serverErr)
	}
}

func TestRefuseRevokedDelegates(t *testing.T) {
	t.Parallel()
	ca := newCA(t, "root")
	revoked, fine := ca.issue(t, dbURI), ca.issue(t, dbURI)
	rc := &revocations{}
	rc.revoke(revoked)
	dbID := spiffeid.RequireFromString(dbURI)
	errAuthz := errors.New("authz says no")
	tests := []struct {
		name    string
		chains  [][]*x509.Certificate
		authz   tlsconfig.Authorizer
		wantErr error // what authz returns through the wrapper
		revoked bool  // want a *RevokedError instead
	}{
		{name: "no chains delegate", authz: AuthorizeAny()},
		{name: "no chains, authz refuses", authz: func(spiffeid.ID, [][]*x509.Certificate) error { return errAuthz }, wantErr: errAuthz},
		{name: "fine leaf delegates", chains: [][]*x509.Certificate{fine.Chain}, authz: AuthorizeID(dbID)},
		{name: "empty chain skipped", chains: [][]*x509.Certificate{{}, fine.Chain}, authz: AuthorizeAny()},
		{name: "revoked leaf in a later chain", chains: [][]*x509.Certificate{fine.Chain, revoked.Chain}, authz: AuthorizeAny(), revoked: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := RefuseRevoked(tt.authz, rc)(dbID, tt.chains)
			if tt.revoked {
				var re *RevokedError
				if !errors.As(err, &re) || re.Serial.String() != revoked.Serial() {
					t.Errorf("err = %v, want *RevokedError for %s", err, revoked.Serial())
				}
				return
			}
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestRefuseRevokedNilPanics(t *testing.T) {
	t.Parallel()
	for name, f := range map[string]func(){
		"nil authz":   func() { RefuseRevoked(nil, &revocations{}) },
		"nil checker": func() { RefuseRevoked(AuthorizeAny(), nil) },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			f()
		})
	}
}
