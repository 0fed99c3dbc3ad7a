package admin

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// requestInfo is what one request accumulates for its audit record.
type requestInfo struct {
	who   principal   // set once authenticated
	peer  spiffeid.ID // the client's ID when it is neither admin nor controller
	attrs []any       // what was asked for and done, as slog key/value pairs
}

type requestInfoKey struct{}

// AdminID returns the SPIFFE ID of the admin on whose behalf ctx, the
// context of a request served by the API, is running, so that an Operator
// can attribute its own records. It reports false for a controller's
// request: a controller is not an admin.
func AdminID(ctx context.Context) (spiffeid.ID, bool) {
	info, ok := ctx.Value(requestInfoKey{}).(*requestInfo)
	if !ok || info.who.id.IsZero() || info.who.ctl != nil {
		return spiffeid.ID{}, false
	}
	return info.who.id, true
}

// principalOf returns the authenticated client of ctx, the context of a
// request that passed serve.
func principalOf(ctx context.Context) principal {
	if info, ok := ctx.Value(requestInfoKey{}).(*requestInfo); ok {
		return info.who
	}
	return principal{}
}

// note adds key/value pairs to the request's audit record. Never pass
// secrets.
func note(ctx context.Context, args ...any) {
	if info, ok := ctx.Value(requestInfoKey{}).(*requestInfo); ok {
		info.attrs = append(info.attrs, args...)
	}
}

// serve authenticates and authorizes every request before routing it, so
// that nothing about the API, not even which routes exist, is visible to
// anyone but an admin, and audits it whatever the outcome.
func (a *API) serve(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	info := &requestInfo{}
	r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, info))
	rec := &statusRecorder{ResponseWriter: w}
	defer func() { a.record(r, rec.status, info, time.Since(start)) }()

	p, err := a.authenticate(r)
	if err != nil {
		info.peer = p.id
		a.writeProblem(rec, r, err)
		return
	}
	info.who = p
	if err := a.csrf.Check(r); err != nil {
		a.writeProblem(rec, r, Errorf(errForbidden, "cross-origin browser request refused"))
		return
	}
	// Authorize on the route the mux will actually pick, not on a second
	// reading of the path.
	_, route := a.mux.Handler(r)
	if err := a.authorize(p, action{route: route}); err != nil {
		a.writeProblem(rec, r, err)
		return
	}
	a.mux.ServeHTTP(rec, r)
}

// authenticate returns who the client is: an admin or a controller. The
// TLS handshake has already verified the certificate chain against the CA
// root (and its expiry and clientAuth usage); what remains is whose
// certificate it is. What the client may do is authorize's business. On
// errForbidden it also returns the client's ID if it has one.
func (a *API) authenticate(r *http.Request) (principal, error) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return principal{}, errUnauthenticated
	}
	leaf := r.TLS.VerifiedChains[0][0]
	if len(leaf.URIs) != 1 {
		return principal{}, Errorf(errForbidden, "the client certificate must carry exactly one URI SAN, an admin SPIFFE ID")
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return principal{}, Errorf(errForbidden, "the client certificate's URI SAN is not a SPIFFE ID")
	}
	p := principal{id: id, ctl: a.ctls[id.String()]}
	if _, ok := a.admins[id.String()]; !ok && p.ctl == nil {
		return principal{id: id}, Errorf(errForbidden, "%s is not an admin", id)
	}
	// Operator and controller certificates are client-only. Worker
	// certificates always carry serverAuth, so even a worker whose SPIFFE
	// ID was configured to equal an admin or controller ID (a custom
	// spiffeIDTemplate, say) cannot use the API.
	if slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
		return principal{id: id}, Errorf(errForbidden, "%s presented a server certificate; operator and controller certificates are client-only", id)
	}
	return p, nil
}

// record writes the request's audit record and log line.
func (a *API) record(r *http.Request, status int, info *requestInfo, took time.Duration) {
	if status == 0 {
		status = http.StatusOK // nothing written: net/http answers 200
	}
	var outcome string
	switch {
	case status < 400:
		outcome = "ok"
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		outcome = "denied"
	case status < 500:
		outcome = "rejected"
	default:
		outcome = "failed"
	}
	args := make([]any, 0, 16+len(info.attrs))
	switch {
	case info.who.ctl != nil:
		args = append(args, "controller", info.who.id.String())
	case !info.who.id.IsZero():
		args = append(args, "admin", info.who.id.String())
	case !info.peer.IsZero():
		args = append(args, "client", info.peer.String())
	}
	args = append(args,
		"method", r.Method,
		"path", r.URL.Path,
		"status", status,
		"outcome", outcome,
		"remote", r.RemoteAddr,
		"duration", took)
	args = append(args, info.attrs...)
	ctx := context.WithoutCancel(r.Context())
	a.audit.InfoContext(ctx, "admin request", args...)
	a.log.InfoContext(ctx, "admin request", args...)
}

// statusRecorder remembers the status code written through it.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// endpoint is an admin operation: it reads the request and returns the
// status and value of a successful response, or an error for problemFor.
type endpoint func(r *http.Request) (status int, body any, err error)

// adapt turns an endpoint into a handler: bodies are capped, results
// encoded as JSON, errors turned into problem documents, and a panic in an
// Operator becomes a 500 rather than a dropped connection.
func (a *API) adapt(e endpoint) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
		status, body, err := func() (status int, body any, err error) {
			defer func() {
				if v := recover(); v != nil {
					if v == http.ErrAbortHandler {
						panic(v)
					}
					err = fmt.Errorf("panic: %v", v)
				}
			}()
			return e(r)
		}()
		if err != nil {
			a.writeProblem(w, r, err)
			return
		}
		encoded, err := json.Marshal(body)
		if err != nil {
			a.writeProblem(w, r, fmt.Errorf("encode response: %w", err))
			return
		}
		writeBody(w, status, "application/json", encoded)
	})
}
