package stepca

import (
	"context"
	"crypto/x509"

	"github.com/crank-platform/crank-ca/internal/store"
	"github.com/crank-platform/crank-ca/provisioner"
)

// state carries what one ACME request learnt in one seam to the next seam of
// the same request: smallstep passes the context through its handlers but
// gives no other way to share facts between the linker middleware, the DB
// calls and the provisioner hooks. It lives exactly as long as the request and
// is only touched by the request's goroutine.
type state struct {
	spec *Provisioner
	// body is the request body, read once by the outer handler.
	body []byte
	// token is the outcome of the new-account EAB precheck, so that
	// smallstep's own EAB lookup in the same request does not verify the
	// token and read the store a second time. The atomic spend at binding
	// still decides single use.
	token *tokenInfo
	// Set by GetExternalAccountKeyByAccountID during new-order.
	binding  *store.Binding
	identity *provisioner.Identity
	// preauthorized counts authorizations created valid in this new-order.
	preauthorized int
	// Set by the linker middleware on finalize: the CSR is decoded and
	// checked by the precheck, from the very bytes smallstep verifies.
	orderID string
	csr     *x509.CertificateRequest
	// retryAfter, in seconds, is sent with a rateLimited refusal.
	retryAfter int
	// newOrder, set on new-order requests, holds the challenges and
	// authorizations until CreateOrder writes them with the order.
	newOrder *newOrderWrites
	// finalize holds a signed certificate's records until the order
	// update writes them with it.
	finalize *finalizeWrites
	// signer is the account the request's JWS names by its kid, as read
	// by the precheck: trusted only after smallstep verified the JWS.
	signer string
	// orderChecked is set once a finalize has checked its order is ready.
	orderChecked bool
	// claim is the finalize claim this request holds on orderID (a
	// random holder name), released when the request ends.
	claim string
	// replaces is the certID of a new-order's "replaces" field (RFC 9773);
	// read before smallstep verifies the request, used only after.
	replaces string
	// account, on new-account at a token provisioner, is the new account
	// until its binding is written with it.
	account *heldAccount
}

type stateKey struct{}

func withState(ctx context.Context) context.Context {
	return context.WithValue(ctx, stateKey{}, &state{})
}

// stateIn returns the request's state and whether there is one: seams
// that hold writes for later in the request must not hold them in a
// throwaway state.
func stateIn(ctx context.Context) (*state, bool) {
	s, ok := ctx.Value(stateKey{}).(*state)
	return s, ok && s != nil
}

// stateFrom returns the request's state; a zero state when absent (tests or
// smallstep-internal calls) so callers need no nil checks.
func stateFrom(ctx context.Context) *state {
	if s, ok := ctx.Value(stateKey{}).(*state); ok && s != nil {
		return s
	}
	return &state{}
}
