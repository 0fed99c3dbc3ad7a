package stepca

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/smallstep/certificates/acme"
	"github.com/smallstep/certificates/api/render"
	steppro "github.com/smallstep/certificates/authority/provisioner"
	"go.step.sm/crypto/jose"

	"github.com/crank-platform/crank-ca/internal/limit"
)

// linker wraps smallstep's linker. Its Middleware is the first code that runs
// for every ACME route once smallstep has resolved the provisioner, so it is
// where crank-ca attaches per-provisioner plumbing: the validation client, an
// early EAB check with a precise problem document, and, on finalize, the
// provisioner wrapper that shapes the leaf.
type linker struct {
	acme.Linker
	specs   map[string]*Provisioner // by name
	clients map[string]acme.Client  // by name
	tokens  *tokenChecker
	db      *acmeDB
	rates   *limit.Rates
	now     func() time.Time
}

func (l *linker) Middleware(next http.Handler) http.Handler {
	return l.Linker.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		p, ok := acme.ProvisionerFromContext(ctx)
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		spec := l.specs[p.GetName()]
		stock, isACME := p.(*steppro.ACME)
		if spec == nil || !isACME {
			render.Error(w, r, acme.NewDetailedError(acme.ErrorUnauthorizedType, "provisioner %q is not served here", p.GetName()))
			return
		}
		st := stateFrom(ctx)
		st.spec = spec
		if c := l.clients[spec.Name]; c != nil {
			ctx = acme.NewClientContext(ctx, c)
		}
		route := routePattern(r)
		if err := l.precheck(ctx, r, route, spec, st.body); err != nil {
			l.renderWithNonce(w, r.WithContext(ctx), err)
			return
		}
		if strings.HasSuffix(route, "/revoke-cert") {
			// smallstep revokes without crank-ca's record: once it has,
			// record it too (ARI window now, audit).
			next.ServeHTTP(w, r.WithContext(ctx))
			l.db.recordACMERevocation(ctx, st.body)
			return
		}
		if strings.HasSuffix(route, "/new-order") {
			st.newOrder = &newOrderWrites{}
		}
		if strings.HasSuffix(route, "/finalize") {
			st.orderID = chi.URLParam(r, "ordID")
			ctx = acme.NewProvisionerContext(ctx, &finalizer{ACME: stock, spec: spec, db: l.db})
		}
		next.ServeHTTP(w, r.WithContext(ctx))
	}))
}

func routePattern(r *http.Request) string {
	if rc := chi.RouteContext(r.Context()); rc != nil {
		return rc.RoutePattern()
	}
	return r.URL.Path
}

// renderWithNonce renders a problem with a fresh Replay-Nonce, as smallstep's
// own error responses to POSTs carry one.
func (l *linker) renderWithNonce(w http.ResponseWriter, r *http.Request, err error) {
	if ra := stateFrom(r.Context()).retryAfter; ra > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(ra))
	}
	if n, nerr := l.db.CreateNonce(r.Context()); nerr == nil {
		w.Header().Set("Replay-Nonce", string(n))
		w.Header().Set("Cache-Control", "no-store")
	}
	render.Error(w, r, err)
}

// precheckEAB checks the EAB of a new-account request before smallstep does.
// smallstep answers a bad EAB signature with a 500; here a wrong HMAC key, an
// expired, spent, forged or foreign token each get an unauthorized problem.
// Anything this check cannot parse is left to smallstep, which rejects it with
// its own malformed problem; the outer JWS is verified by smallstep later, so
// nothing here is trusted beyond refusing.
func (l *linker) precheckEAB(ctx context.Context, spec *Provisioner, eabJSON json.RawMessage, jwk *jose.JSONWebKey) error {
	if len(eabJSON) == 0 || string(eabJSON) == "null" {
		return nil // smallstep answers externalAccountRequired
	}
	eab, err := jose.ParseJWS(string(eabJSON))
	if err != nil || len(eab.Signatures) != 1 {
		return acme.NewDetailedError(acme.ErrorMalformedType, "externalAccountBinding is not a JWS with one signature")
	}
	kid := eab.Signatures[0].Protected.KeyID
	if kid == "" {
		return acme.NewDetailedError(acme.ErrorMalformedType, "externalAccountBinding has no kid")
	}
	info, replay, err := l.tokens.checkRegistration(ctx, spec, kid, jwk)
	if err != nil {
		return err
	}
	if replay {
		// smallstep finds the account by its key and answers it, 200,
		// binding nothing; the EAB is not looked at again.
		return nil
	}
	if _, err := eab.Verify(info.hmacKey); err != nil {
		return acme.NewDetailedError(acme.ErrorUnauthorizedType, "the external account binding is not signed with the token's HMAC key")
	}
	info.kid = kid
	stateFrom(ctx).token = &info
	return nil
}
