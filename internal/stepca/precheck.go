package stepca

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/smallstep/certificates/acme"
	"go.step.sm/crypto/jose"

	"github.com/crank-platform/crank-ca/internal/ari"
)

// Limits of DNS names (RFC 1035 2.3.4).
const (
	maxDNSName  = 253
	maxDNSLabel = 63
)

// precheck refuses requests that smallstep would accept against RFC 8555 or
// answer with a 500. It runs before smallstep verifies the JWS, so it only
// ever refuses: everything it lets through is checked again by smallstep.
func (l *linker) precheck(ctx context.Context, r *http.Request, route string, spec *Provisioner, body []byte) error {
	if r.Method != http.MethodPost {
		return nil
	}
	// RFC 8555 6.2: flattened JSON serialization only.
	if t := bytes.TrimSpace(body); len(t) > 0 && t[0] != '{' {
		return acme.NewDetailedError(acme.ErrorMalformedType, "the JWS must use the flattened JSON serialization")
	}
	switch {
	case strings.HasSuffix(route, "/new-account"):
		var nar struct {
			Contact []string        `json:"contact"`
			EAB     json.RawMessage `json:"externalAccountBinding"`
		}
		if json.Unmarshal(unverifiedPayload(body), &nar) != nil {
			return nil // smallstep answers malformed
		}
		if err := checkContacts(nar.Contact); err != nil {
			return err
		}
		if spec.usesTokens() {
			return l.precheckEAB(ctx, spec, nar.EAB)
		}
	case strings.HasSuffix(route, "/account/{accID}"):
		if err := checkKIDMatchesPath(body, chi.URLParam(r, "accID")); err != nil {
			return err
		}
		var upd struct {
			Contact []string `json:"contact"`
		}
		if json.Unmarshal(unverifiedPayload(body), &upd) == nil {
			return checkContacts(upd.Contact)
		}
	case strings.HasSuffix(route, "/new-order"):
		var nor struct {
			Identifiers []struct {
				Type  string `json:"type"`
				Value string `json:"value"`
			} `json:"identifiers"`
			Replaces string `json:"replaces"`
		}
		if json.Unmarshal(unverifiedPayload(body), &nor) != nil {
			return nil
		}
		if nor.Replaces != "" {
			if _, err := ari.ParseCertID(nor.Replaces); err != nil {
				return acme.NewDetailedError(acme.ErrorMalformedType, "replaces: %v", err)
			}
			stateFrom(ctx).replaces = nor.Replaces
		}
		for _, id := range nor.Identifiers {
			if id.Type == "dns" && !plausibleDNSName(id.Value) {
				return acme.NewDetailedError(acme.ErrorRejectedIdentifierType, "%q is not a valid DNS name (labels of at most %d and names of at most %d characters)", truncate(id.Value, 80), maxDNSLabel, maxDNSName)
			}
			if spec.Kind == KindACME && !spec.allows(id.Type, id.Value) {
				return acme.NewDetailedError(acme.ErrorRejectedIdentifierType, "%s identifier %q is outside the name policy of provisioner %q", id.Type, truncate(id.Value, 80), spec.Name)
			}
		}
	case strings.HasSuffix(route, "/revoke-cert"):
		p := unverifiedPayload(body)
		var obj map[string]json.RawMessage
		if len(p) > 0 && json.Unmarshal(p, &obj) != nil {
			return acme.NewDetailedError(acme.ErrorMalformedType, "the revocation request payload must be a JSON object")
		}
	}
	return nil
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
	for _, c := range contacts {
		if c != "" && !strings.HasPrefix(strings.ToLower(c), "mailto:") {
			return acme.NewDetailedError(acme.ErrorUnsupportedContactType, "only mailto: contacts are supported, not %q", truncate(c, 80))
		}
	}
	return nil
}

// checkKIDMatchesPath refuses a request to /account/X signed as another
// account: smallstep answers with the signer's account whatever X is.
func checkKIDMatchesPath(body []byte, accID string) error {
	jws, err := jose.ParseJWS(string(body))
	if err != nil || len(jws.Signatures) != 1 {
		return nil
	}
	kid := jws.Signatures[0].Protected.KeyID
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
