package stepca

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/smallstep/certificates/acme"
	"go.step.sm/crypto/jose"

	"github.com/crank-platform/crank-ca/internal/ari"
	"github.com/crank-platform/crank-ca/internal/limit"
)

// Bounds of account contacts: "mailto:" and an RFC 5321 address.
const (
	maxContacts   = 4
	maxContactLen = 7 + 254
)

// Limits of DNS names (RFC 1035 2.3.4).
const (
	maxDNSName  = 253
	maxDNSLabel = 63
)

// precheck refuses requests that smallstep would accept against RFC 8555 or
// crank-ca's policy, or answer with a 500. It runs before smallstep verifies
// the JWS, so it only ever refuses: everything it lets through is checked
// again by smallstep and by crank-ca's DB and finalize hooks. It fails
// closed: a POST whose JWS or payload it cannot fully decode is refused
// here, never handed on for smallstep to interpret differently.
func (l *linker) precheck(ctx context.Context, r *http.Request, route string, spec *Provisioner, body []byte) error {
	if r.Method != http.MethodPost {
		return nil
	}
	// RFC 8555 6.2: flattened JSON serialization only.
	if t := bytes.TrimSpace(body); len(t) == 0 || t[0] != '{' {
		return acme.NewDetailedError(acme.ErrorMalformedType, "the request must be a JWS in the flattened JSON serialization")
	}
	jws, err := parseFlatJWS(body)
	if err != nil {
		return acme.NewDetailedError(acme.ErrorMalformedType, "the request must be a JWS in the flattened JSON serialization with exactly one signature (RFC 8555 6.2): %v", err)
	}
	payload := jws.payload
	if jws.kid != "" {
		stateFrom(ctx).signer = jws.kid[strings.LastIndex(jws.kid, "/")+1:]
	}
	client := limit.ClientKey(r.RemoteAddr)
	switch {
	case strings.HasSuffix(route, "/new-account"):
		contacts, onlyExisting, eab, err := decodeNewAccount(payload)
		if err != nil {
			return err
		}
		if err := checkContacts(contacts); err != nil {
			return err
		}
		if !onlyExisting {
			if err := l.rate(ctx, spec.Name+"|new-account|"+client, spec.Limits.NewAccountsPerMinute, "new accounts"); err != nil {
				return err
			}
		}
		if spec.usesTokens() && !onlyExisting {
			// The binding is checked against the account key, which only
			// go-jose's full parse of the header yields.
			full, err := jose.ParseJWS(string(body))
			if err != nil || len(full.Signatures) != 1 {
				return acme.NewDetailedError(acme.ErrorMalformedType, "the request must be a JWS with exactly one signature")
			}
			return l.precheckEAB(ctx, spec, eab, full.Signatures[0].Protected.JSONWebKey)
		}
	case strings.HasSuffix(route, "/account/{accID}"):
		if err := checkKIDMatchesPath(jws.kid, chi.URLParam(r, "accID")); err != nil {
			return err
		}
		contacts, err := decodeAccountUpdate(payload)
		if err != nil {
			return err
		}
		return checkContacts(contacts)
	case strings.HasSuffix(route, "/new-order"):
		nor, err := decodeNewOrder(payload, spec.Limits.MaxIdentifiersPerOrder, l.now())
		if err != nil {
			return err
		}
		if spec.Kind == KindACME {
			for _, id := range nor.Identifiers {
				if err := spec.Policy.Check(id.Type, id.Value); err != nil {
					return policyProblem(spec, err)
				}
			}
		}
		if nor.Replaces != "" {
			if _, err := ari.ParseCertID(nor.Replaces); err != nil {
				return acme.NewDetailedError(acme.ErrorMalformedType, "replaces: %v", err)
			}
			stateFrom(ctx).replaces = nor.Replaces
		}
		if err := l.rate(ctx, spec.Name+"|new-order|"+client, spec.Limits.NewOrdersPerMinute, "new orders"); err != nil {
			return err
		}
	case strings.HasSuffix(route, "/finalize"):
		csr, err := decodeFinalize(payload)
		if err != nil {
			return err
		}
		stateFrom(ctx).csr = csr
	case strings.HasSuffix(route, "/revoke-cert"):
		return decodeRevocation(payload)
	case strings.HasSuffix(route, "/challenge/{authzID}/{chID}"):
		// RFC 8555 7.5.1: an empty object; smallstep ignores the content,
		// but it must at least be an object.
		if err := checkObject(payload, "keyAuthorization"); err != nil {
			return malformed("challenge response", err)
		}
	}
	return nil
}

// policyProblem renders a name-policy refusal.
func policyProblem(spec *Provisioner, err error) error {
	return acme.NewDetailedError(acme.ErrorRejectedIdentifierType, "provisioner %q does not issue this: %v", spec.Name, err)
}

// rate takes a token from a per-client bucket, or refuses with rateLimited
// and Retry-After (RFC 8555 section 6.6).
func (l *linker) rate(ctx context.Context, key string, perMinute int, what string) error {
	ok, wait := l.rates.Allow(key, perMinute)
	if ok {
		return nil
	}
	secs := int((wait + time.Second - 1) / time.Second)
	stateFrom(ctx).retryAfter = secs
	return rateLimited("too many %s from this address (at most %d per minute); retry after %d s", what, perMinute, secs)
}

// unverifiedPayload returns the JWS payload without verifying it, or nil.
func unverifiedPayload(body []byte) []byte {
	jws, err := jose.ParseJWS(string(body))
	if err != nil {
		return nil
	}
	return jws.UnsafePayloadWithoutVerification()
}

// checkContacts accepts mailto: contacts only (RFC 8555 7.3:
// unsupportedContact for other schemes).
func checkContacts(contacts []string) error {
	// Contacts are stored with the account; bound them so an account
	// cannot carry a quarter megabyte of them.
	if len(contacts) > maxContacts {
		return invalidContact("at most %d contacts, not %d", maxContacts, len(contacts))
	}
	for _, c := range contacts {
		if len(c) > maxContactLen {
			return invalidContact("a contact is at most %d characters", maxContactLen)
		}
		if c != "" && !strings.HasPrefix(strings.ToLower(c), "mailto:") {
			return acme.NewDetailedError(acme.ErrorUnsupportedContactType, "only mailto: contacts are supported, not %q", truncate(c, 80))
		}
	}
	return nil
}

// invalidContact is RFC 8555's invalidContact problem; smallstep's
// ErrorInvalidContactType renders as incorrectResponse.
func invalidContact(format string, args ...any) *acme.Error {
	return &acme.Error{Type: "urn:ietf:params:acme:error:invalidContact", Detail: fmt.Sprintf(format, args...), Status: http.StatusBadRequest}
}

// checkKIDMatchesPath refuses a request to /account/X signed as another
// account: smallstep answers with the signer's account whatever X is.
// The precheck has parsed the JWS and checked it has one signature.
func checkKIDMatchesPath(kid, accID string) error {
	if kid == "" {
		return nil
	}
	if i := strings.LastIndex(kid, "/"); i < 0 || kid[i+1:] != accID {
		return acme.NewDetailedError(acme.ErrorUnauthorizedType, "the request is signed by another account than %s", accID)
	}
	return nil
}

// plausibleDNSName checks lengths and characters; smallstep checks the rest.
func plausibleDNSName(name string) bool {
	name = strings.TrimPrefix(name, "*.")
	if name == "" || len(name) > maxDNSName {
		return false
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > maxDNSLabel {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
