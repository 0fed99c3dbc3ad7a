package workertls

import (
	"errors"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// The constructors below re-export go-spiffe's so that callers of this
// package need not import tlsconfig just to state a policy. An Authorizer
// only runs after the peer's SVID has been verified against our trust
// bundle, so even AuthorizeAny admits only workers of our trust domain.

// AuthorizeID admits exactly one peer, e.g. a worker that may only be
// called by its orchestrator.
func AuthorizeID(id spiffeid.ID) tlsconfig.Authorizer { return tlsconfig.AuthorizeID(id) }

// AuthorizeMemberOf admits any peer whose SPIFFE ID is in td.
func AuthorizeMemberOf(td spiffeid.TrustDomain) tlsconfig.Authorizer {
	return tlsconfig.AuthorizeMemberOf(td)
}

// AuthorizeOneOf admits the listed peers only.
func AuthorizeOneOf(ids ...spiffeid.ID) tlsconfig.Authorizer { return tlsconfig.AuthorizeOneOf(ids...) }

// AuthorizeAny admits any peer holding a verified SVID of our trust domain.
func AuthorizeAny() tlsconfig.Authorizer { return tlsconfig.AuthorizeAny() }

// ParseAuthorizer parses an authorization policy as an operator writes it
// in a flag or a config file:
//
//	id:spiffe://crank.internal/worker/api         AuthorizeID
//	td:crank.internal                              AuthorizeMemberOf
//	oneof:spiffe://td/worker/a,spiffe://td/worker/b AuthorizeOneOf
//	any                                            AuthorizeAny
//
// Leading and trailing spaces are ignored, as are spaces around the
// entries of oneof. The td: form takes a bare trust domain name only:
// "td:spiffe://td/worker/x" is refused rather than silently widened to the
// whole trust domain. Errors are *AuthorizerError quoting the input.
func ParseAuthorizer(s string) (tlsconfig.Authorizer, error) {
	fail := func(err error) (tlsconfig.Authorizer, error) {
		return nil, &AuthorizerError{Value: s, Err: err}
	}
	in := strings.TrimSpace(s)
	if in == "any" {
		return AuthorizeAny(), nil
	}
	kind, rest, ok := strings.Cut(in, ":")
	if !ok {
		return fail(errors.New(`want "id:<spiffe-id>", "td:<trust-domain>", "oneof:<id>,<id>..." or "any"`))
	}
	rest = strings.TrimSpace(rest)
	switch kind {
	case "id":
		id, err := spiffeid.FromString(rest)
		if err != nil {
			return fail(err)
		}
		return AuthorizeID(id), nil
	case "td":
		if strings.ContainsAny(rest, ":/") {
			return fail(errors.New("td: takes a bare trust domain name such as crank.internal; use id: for one SPIFFE ID"))
		}
		td, err := spiffeid.TrustDomainFromString(rest)
		if err != nil {
			return fail(err)
		}
		return AuthorizeMemberOf(td), nil
	case "oneof":
		var ids []spiffeid.ID
		for i, part := range strings.Split(rest, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				return fail(errors.New("oneof: empty entry (want comma-separated SPIFFE IDs)"))
			}
			id, err := spiffeid.FromString(part)
			if err != nil {
				return fail(&oneofError{index: i, value: part, err: err})
			}
			ids = append(ids, id)
		}
		return AuthorizeOneOf(ids...), nil
	default:
		return fail(errors.New("unknown kind " + strconv.Quote(kind) + `; want "id:", "td:", "oneof:" or "any"`))
	}
}

// oneofError names which entry of a oneof list is wrong; lists get long.
type oneofError struct {
	index int
	value string
	err   error
}

func (e *oneofError) Error() string {
	return "oneof: entry " + strconv.Itoa(e.index+1) + " " + strconv.Quote(e.value) + ": " + e.err.Error()
}

func (e *oneofError) Unwrap() error { return e.err }
