package provisioner

import "errors"

// Sentinel errors. Callers match them with errors.Is; the package always
// wraps them with %w and adds detail, so the message tells an operator what
// happened while the sentinel tells code how to react (e.g. which ACME problem
// type to return).
var (
	// ErrUnknownWorker means the worker name matches neither the explicit
	// worker list nor the pattern, or its rendered names are invalid.
	ErrUnknownWorker = errors.New("unknown worker")
	// ErrTokenMalformed means the token or KID is not in the expected format.
	ErrTokenMalformed = errors.New("malformed join token")
	// ErrTokenForged means the MAC did not verify (tampered or foreign key),
	// or the token was minted for another provisioner.
	ErrTokenForged = errors.New("join token signature invalid")
	// ErrTokenExpired means the token was genuine but is past its expiry.
	ErrTokenExpired = errors.New("join token expired")
	// ErrNameNotAllowed means a requested identifier is outside the
	// worker's identity or an acme provisioner's NamePolicy.
	ErrNameNotAllowed = errors.New("name not allowed")
	// ErrInvalidConfig is wrapped by every error NewIdentities and
	// NewJoinTokenAttestor report, so callers can tell configuration
	// mistakes from runtime failures.
	ErrInvalidConfig = errors.New("invalid provisioner configuration")
	// ErrInvalidIdentity means an Identity cannot be turned into a
	// certificate (e.g. it has no SPIFFE ID).
	ErrInvalidIdentity = errors.New("invalid identity")
)

// FieldError is one configuration problem, naming the offending field with a
// path such as "workers[2].ips[0]" so an operator can find it in the config
// file without guessing.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }

// Unwrap exposes both the detail and ErrInvalidConfig to errors.Is.
func (e *FieldError) Unwrap() []error { return []error{e.Err, ErrInvalidConfig} }
