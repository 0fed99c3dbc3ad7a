package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// MaxBodyBytes bounds request bodies; every request of the API is tiny.
const MaxBodyBytes = 64 << 10

// decodeJSON reads exactly one JSON value from r's body into v, refusing
// unknown fields and trailing data; adapt has capped the body at
// MaxBodyBytes. Every failure wraps ErrInvalid.
func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return bodyError(err)
	}
	if err := dec.Decode(&json.RawMessage{}); !errors.Is(err, io.EOF) {
		if err == nil {
			return fmt.Errorf("%w: request body must hold exactly one JSON value", ErrInvalid)
		}
		return bodyError(err)
	}
	return nil
}

// bodyError describes a decoding failure without echoing the body.
func bodyError(err error) error {
	var tooBig *http.MaxBytesError
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &tooBig):
		return fmt.Errorf("%w: request body exceeds %d bytes", ErrInvalid, tooBig.Limit)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: request body must be a JSON object", ErrInvalid)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: request body is truncated JSON", ErrInvalid)
	case errors.As(err, &syntax):
		return fmt.Errorf("%w: request body is not valid JSON (offset %d)", ErrInvalid, syntax.Offset)
	case errors.As(err, &typ):
		return fmt.Errorf("%w: request body: field %q must be %s", ErrInvalid, typ.Field, typ.Type)
	default:
		// Unknown fields and similar: encoding/json's message names the
		// field but never the value.
		return fmt.Errorf("%w: request body: %v", ErrInvalid, err)
	}
}

// queryParams returns r's query, refusing parameters not in allowed and
// repeated ones, so that a misspelt filter is an error rather than silently
// ignored.
func queryParams(r *http.Request, allowed ...string) (map[string]string, error) {
	q := r.URL.Query()
	out := make(map[string]string, len(q))
	for k, vs := range q {
		known := false
		for _, a := range allowed {
			known = known || a == k
		}
		if !known {
			return nil, fmt.Errorf("%w: unknown query parameter %q", ErrInvalid, k)
		}
		if len(vs) != 1 {
			return nil, fmt.Errorf("%w: query parameter %q given %d times", ErrInvalid, k, len(vs))
		}
		out[k] = vs[0]
	}
	return out, nil
}

// parseBool parses an optional boolean query parameter.
func parseBool(q map[string]string, name string) (bool, error) {
	s, ok := q[name]
	if !ok || s == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("%w: query parameter %q must be true or false", ErrInvalid, name)
	}
	return b, nil
}

// writeBody writes an encoded JSON body. Responses are never cached: some
// carry secrets (TokenResponse) and all describe changing state.
func writeBody(w http.ResponseWriter, status int, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
