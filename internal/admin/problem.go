package admin

import (
	"encoding/json"
	"errors"
	"net/http"
)

// Problem type URIs of the admin API.
const (
	ProblemInvalid          = "urn:crank:admin:error:invalid"
	ProblemNotFound         = "urn:crank:admin:error:notFound"
	ProblemConflict         = "urn:crank:admin:error:conflict"
	ProblemUnauthorized     = "urn:crank:admin:error:unauthorized"
	ProblemForbidden        = "urn:crank:admin:error:forbidden"
	ProblemMethodNotAllowed = "urn:crank:admin:error:methodNotAllowed"
	ProblemInternal         = "urn:crank:admin:error:internal"
)

// problemContentType is the media type of problem documents (RFC 7807).
const problemContentType = "application/problem+json"

// internalDetail is all a client learns about an unexpected error.
const internalDetail = "the server could not complete the request; the error has been logged"

// Errors raised by the HTTP layer itself; Operators use the exported ones.
var (
	errUnauthenticated  = errors.New("a verified client certificate is required")
	errForbidden        = errors.New("forbidden")
	errMethodNotAllowed = errors.New("method not allowed")
)

// Problem is an RFC 7807 problem document, the body of every error response.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// problemFor is the one place where errors become problem documents. The
// error's message is the detail for every client error (domain errors are
// worded for clients); anything unrecognised is an internal error whose
// detail is generic, and internal reports whether that was the case so the
// caller logs the real error.
func problemFor(err error) (p Problem, internal bool) {
	switch {
	case errors.Is(err, errUnauthenticated):
		return Problem{ProblemUnauthorized, "Unauthorized", http.StatusUnauthorized, err.Error()}, false
	case errors.Is(err, errForbidden):
		return Problem{ProblemForbidden, "Forbidden", http.StatusForbidden, err.Error()}, false
	case errors.Is(err, errMethodNotAllowed):
		return Problem{ProblemMethodNotAllowed, "Method not allowed", http.StatusMethodNotAllowed, err.Error()}, false
	case errors.Is(err, ErrInvalid):
		return Problem{ProblemInvalid, "Invalid request", http.StatusBadRequest, err.Error()}, false
	case errors.Is(err, ErrNotFound):
		return Problem{ProblemNotFound, "Not found", http.StatusNotFound, err.Error()}, false
	case errors.Is(err, ErrConflict):
		return Problem{ProblemConflict, "Conflict", http.StatusConflict, err.Error()}, false
	default:
		return Problem{ProblemInternal, "Internal server error", http.StatusInternalServerError, internalDetail}, true
	}
}

// writeProblem answers r with the problem document for err, logging err if
// it is internal.
func (a *API) writeProblem(w http.ResponseWriter, r *http.Request, err error) {
	p, internal := problemFor(err)
	if internal {
		a.log.ErrorContext(r.Context(), "admin: request failed",
			"method", r.Method, "path", r.URL.Path, "error", err)
	}
	if p.Status == http.StatusUnauthorized || p.Status == http.StatusForbidden {
		// Why a client was refused belongs in the audit record: for a
		// controller it names the limit it ran into.
		note(r.Context(), "detail", p.Detail)
	}
	body, _ := json.Marshal(p) // a struct of strings and an int always encodes
	writeBody(w, p.Status, problemContentType, body)
}
