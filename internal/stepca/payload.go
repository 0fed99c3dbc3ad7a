package stepca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/smallstep/certificates/acme"
)

// The strict decoders of ACME request payloads. smallstep decodes payloads
// leniently (unknown fields ignored, field names matched case-insensitively,
// the last of duplicate keys wins); crank-ca decodes every payload it makes a
// decision on strictly first and refuses what it does not fully understand,
// so that no request can mean one thing to the precheck and another to
// smallstep.

// maxJSONDepth bounds nesting; no ACME payload nests deeper than 4.
const maxJSONDepth = 8

// checkObject verifies that raw is exactly one JSON object whose keys are
// unique at every level and, at the top level, all in allowed (exact case).
func checkObject(raw []byte, allowed ...string) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	type frame struct {
		obj       bool
		expectKey bool
		keys      map[string]bool
	}
	var stack []*frame
	started := false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("not valid JSON: %w", err)
		}
		if started && len(stack) == 0 {
			return errors.New("unexpected data after the JSON object")
		}
		if !started {
			if d, ok := tok.(json.Delim); !ok || d != '{' {
				return errors.New("the payload must be a JSON object")
			}
			started = true
			stack = append(stack, &frame{obj: true, expectKey: true, keys: map[string]bool{}})
			continue
		}
		top := stack[len(stack)-1]
		if top.obj && top.expectKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].obj {
					stack[len(stack)-1].expectKey = true
				}
				continue
			}
			k, _ := tok.(string)
			if top.keys[k] {
				return fmt.Errorf("duplicate field %q", truncate(k, 40))
			}
			top.keys[k] = true
			if len(stack) == 1 && !contains(allowed, k) {
				return fmt.Errorf("unknown field %q (allowed: %s)", truncate(k, 40), strings.Join(allowed, ", "))
			}
			top.expectKey = false
			continue
		}
		switch d, _ := tok.(json.Delim); d {
		case '{', '[':
			if len(stack) >= maxJSONDepth {
				return errors.New("the payload nests too deeply")
			}
			stack = append(stack, &frame{obj: d == '{', expectKey: d == '{', keys: map[string]bool{}})
		case '}', ']':
			stack = stack[:len(stack)-1]
			if len(stack) > 0 && stack[len(stack)-1].obj {
				stack[len(stack)-1].expectKey = true
			}
		default:
			if top.obj {
				top.expectKey = true
			}
		}
	}
	if !started || len(stack) != 0 {
		return errors.New("the payload must be a JSON object")
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// field decodes one raw field into v, naming the field and the expected
// type when the JSON type is wrong.
func field(raw json.RawMessage, name, want string, v any) error {
	if len(raw) == 0 {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return acme.NewDetailedError(acme.ErrorMalformedType, "%s must be %s", name, want)
	}
	return nil
}

// malformed turns a checkObject error into the problem document.
func malformed(what string, err error) error {
	return acme.NewDetailedError(acme.ErrorMalformedType, "%s: %v", what, err)
}

// identifier is one ACME identifier of a new-order.
type identifier struct {
	Type  string
	Value string
}

// newOrderRequest is a new-order payload as crank-ca understands it:
// RFC 8555 section 7.4 (identifiers, notBefore, notAfter) and RFC 9773
// (replaces). Zero times mean "not requested" (the step CLI sends the zero
// time for unset fields).
type newOrderRequest struct {
	Identifiers []identifier
	NotBefore   time.Time
	NotAfter    time.Time
	Replaces    string
}

// decodeNewOrder decodes a new-order payload strictly and checks what can be
// checked without the provisioner: identifier types and syntax, their
// number, and the requested validity against now and the allowed skew.
func decodeNewOrder(raw []byte, maxIdentifiers int, now time.Time) (newOrderRequest, error) {
	var req newOrderRequest
	if err := checkObject(raw, "identifiers", "notBefore", "notAfter", "replaces"); err != nil {
		return req, malformed("new-order", err)
	}
	var fields struct {
		Identifiers json.RawMessage `json:"identifiers"`
		NotBefore   json.RawMessage `json:"notBefore"`
		NotAfter    json.RawMessage `json:"notAfter"`
		Replaces    json.RawMessage `json:"replaces"`
	}
	if err := json.Unmarshal(raw, &fields); err != nil {
		return req, malformed("new-order", err)
	}
	var ids []json.RawMessage
	if err := field(fields.Identifiers, "identifiers", "an array of identifier objects", &ids); err != nil {
		return req, err
	}
	switch {
	case len(ids) == 0:
		return req, acme.NewDetailedError(acme.ErrorMalformedType, "identifiers must list at least one identifier")
	case len(ids) > maxIdentifiers:
		return req, acme.NewDetailedError(acme.ErrorMalformedType, "an order may name at most %d identifiers, this one names %d", maxIdentifiers, len(ids))
	}
	for i, rawID := range ids {
		id, err := decodeIdentifier(rawID, i)
		if err != nil {
			return req, err
		}
		req.Identifiers = append(req.Identifiers, id)
	}
	var err error
	if req.NotBefore, err = decodeTime(fields.NotBefore, "notBefore"); err != nil {
		return req, err
	}
	if req.NotAfter, err = decodeTime(fields.NotAfter, "notAfter"); err != nil {
		return req, err
	}
	if err := checkRequestedValidity(req.NotBefore, req.NotAfter, now); err != nil {
		return req, err
	}
	if err := field(fields.Replaces, "replaces", "a string (an ARI certificate identifier)", &req.Replaces); err != nil {
		return req, err
	}
	if len(fields.Replaces) > 0 && req.Replaces == "" {
		return req, acme.NewDetailedError(acme.ErrorMalformedType, "replaces must not be empty")
	}
	return req, nil
}

func decodeIdentifier(raw json.RawMessage, i int) (identifier, error) {
	var id identifier
	if err := checkObject(raw, "type", "value"); err != nil {
		return id, malformed(fmt.Sprintf("identifiers[%d]", i), err)
	}
	var f struct {
		Type  json.RawMessage `json:"type"`
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		return id, malformed(fmt.Sprintf("identifiers[%d]", i), err)
	}
	if err := field(f.Type, fmt.Sprintf("identifiers[%d].type", i), "a string", &id.Type); err != nil {
		return id, err
	}
	if err := field(f.Value, fmt.Sprintf("identifiers[%d].value", i), "a string", &id.Value); err != nil {
		return id, err
	}
	switch id.Type {
	case "dns":
		if !plausibleDNSName(id.Value) {
			return id, acme.NewDetailedError(acme.ErrorRejectedIdentifierType, "%q is not a valid DNS name (labels of at most %d and names of at most %d characters)", truncate(id.Value, 80), maxDNSLabel, maxDNSName)
		}
	case "ip":
		a, err := netip.ParseAddr(id.Value)
		if err != nil || a.Zone() != "" {
			return id, acme.NewDetailedError(acme.ErrorRejectedIdentifierType, "%q is not an IP address", truncate(id.Value, 80))
		}
	case "":
		return id, acme.NewDetailedError(acme.ErrorMalformedType, "identifiers[%d] has no type", i)
	default:
		return id, acme.NewDetailedError(acme.ErrorUnsupportedIdentifierType, "identifier type %q is not supported (dns and ip are)", truncate(id.Type, 40))
	}
	return id, nil
}

func decodeTime(raw json.RawMessage, name string) (time.Time, error) {
	var s string
	if err := field(raw, name, "an RFC 3339 date-time string", &s); err != nil || len(raw) == 0 {
		return time.Time{}, err
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, acme.NewDetailedError(acme.ErrorMalformedType, "%s must be an RFC 3339 date-time, not %q", name, truncate(s, 40))
	}
	if t.IsZero() {
		return time.Time{}, nil
	}
	return t, nil
}

// maxClockSkew is how far a requested notBefore may lie from now, in either
// direction. A leaf valid from the future would dodge `rotate
// --issued-before` and ARI windows; one back-dated by days would misstate
// when it was issued.
const maxClockSkew = 5 * time.Minute

// checkRequestedValidity refuses notBefore/notAfter outside the skew; the
// lifetime itself is checked against the provisioner's claims later.
func checkRequestedValidity(nb, na, now time.Time) error {
	if !nb.IsZero() {
		if nb.After(now.Add(maxClockSkew)) {
			return acme.NewDetailedError(acme.ErrorMalformedType, "notBefore %s is in the future; certificates start at issuance (allowed skew %s)", nb.UTC().Format(time.RFC3339), maxClockSkew)
		}
		if nb.Before(now.Add(-maxClockSkew)) {
			return acme.NewDetailedError(acme.ErrorMalformedType, "notBefore %s is in the past; certificates cannot be back-dated (allowed skew %s)", nb.UTC().Format(time.RFC3339), maxClockSkew)
		}
	}
	if !na.IsZero() {
		if !na.After(now) {
			return acme.NewDetailedError(acme.ErrorMalformedType, "notAfter %s is not in the future", na.UTC().Format(time.RFC3339))
		}
		if !nb.IsZero() && !na.After(nb) {
			return acme.NewDetailedError(acme.ErrorMalformedType, "notAfter must be after notBefore")
		}
	}
	return nil
}

// decodeFinalize decodes a finalize payload strictly and returns its CSR,
// whose signature and key have been checked: anything else is badCSR, a 4xx
// (smallstep would answer some of these with a 500).
func decodeFinalize(raw []byte) (*x509.CertificateRequest, error) {
	if err := checkObject(raw, "csr"); err != nil {
		return nil, malformed("finalize", err)
	}
	var f struct {
		CSR json.RawMessage `json:"csr"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, malformed("finalize", err)
	}
	var b64 string
	if err := field(f.CSR, "csr", "a base64url string", &b64); err != nil {
		return nil, err
	}
	if b64 == "" {
		return nil, acme.NewDetailedError(acme.ErrorMalformedType, "csr is required")
	}
	der, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(b64, "="))
	if err != nil {
		return nil, acme.NewDetailedError(acme.ErrorMalformedType, "csr is not base64url")
	}
	return parseCSR(der)
}

// parseCSR parses a DER CSR and checks its signature and key.
func parseCSR(der []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, acme.NewDetailedError(acme.ErrorBadCSRType, "the CSR cannot be parsed: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, acme.NewDetailedError(acme.ErrorBadCSRType, "the CSR's signature does not verify: %v", err)
	}
	if err := checkLeafKey(csr.PublicKey); err != nil {
		return nil, acme.NewDetailedError(acme.ErrorBadCSRType, "%v", err)
	}
	return csr, nil
}

// RSA key sizes crank-ca certifies.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// checkLeafKey admits the keys crank-ca certifies: ECDSA P-256 and P-384,
// Ed25519, and RSA of 2048 to 8192 bits (in steps of 8). Weaker keys are
// refused; larger RSA keys only cost the CA and relying parties time.
func checkLeafKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s is not accepted; use P-256 or P-384", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < minRSABits || n > maxRSABits || n%8 != 0 {
			return fmt.Errorf("RSA keys must have %d to %d bits; this one has %d", minRSABits, maxRSABits, n)
		}
	default:
		return fmt.Errorf("key type %T is not accepted; use ECDSA P-256/P-384, Ed25519 or RSA %d-%d", pub, minRSABits, maxRSABits)
	}
	return nil
}

// decodeNewAccount decodes a new-account payload strictly (RFC 8555
// section 7.3) and returns its contacts, whether it only looks an account
// up, and the raw externalAccountBinding.
func decodeNewAccount(raw []byte) (contacts []string, onlyExisting bool, eab json.RawMessage, err error) {
	if err := checkObject(raw, "contact", "termsOfServiceAgreed", "onlyReturnExisting", "externalAccountBinding"); err != nil {
		return nil, false, nil, malformed("new-account", err)
	}
	var f struct {
		Contact  json.RawMessage `json:"contact"`
		ToS      json.RawMessage `json:"termsOfServiceAgreed"`
		Existing json.RawMessage `json:"onlyReturnExisting"`
		EAB      json.RawMessage `json:"externalAccountBinding"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, false, nil, malformed("new-account", err)
	}
	var tos bool
	if err := errors.Join(
		field(f.Contact, "contact", "an array of strings", &contacts),
		field(f.ToS, "termsOfServiceAgreed", "a boolean", &tos),
		field(f.Existing, "onlyReturnExisting", "a boolean", &onlyExisting),
	); err != nil {
		return nil, false, nil, firstProblem(err)
	}
	if len(f.EAB) > 0 && string(f.EAB) != "null" && f.EAB[0] != '{' {
		return nil, false, nil, acme.NewDetailedError(acme.ErrorMalformedType, "externalAccountBinding must be a JWS object")
	}
	return contacts, onlyExisting, f.EAB, nil
}

// decodeAccountUpdate decodes the payload of a POST to an account URL: empty
// (POST-as-GET) or RFC 8555 section 7.3.2/7.3.6 fields.
func decodeAccountUpdate(raw []byte) ([]string, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, nil
	}
	if err := checkObject(raw, "contact", "status", "termsOfServiceAgreed"); err != nil {
		return nil, malformed("account update", err)
	}
	var f struct {
		Contact json.RawMessage `json:"contact"`
		Status  json.RawMessage `json:"status"`
		ToS     json.RawMessage `json:"termsOfServiceAgreed"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, malformed("account update", err)
	}
	var (
		contacts []string
		status   string
		tos      bool
	)
	if err := errors.Join(
		field(f.Contact, "contact", "an array of strings", &contacts),
		field(f.Status, "status", "a string", &status),
		field(f.ToS, "termsOfServiceAgreed", "a boolean", &tos),
	); err != nil {
		return nil, firstProblem(err)
	}
	return contacts, nil
}

// decodeRevocation decodes a revokeCert payload strictly (RFC 8555 section
// 7.6).
func decodeRevocation(raw []byte) error {
	if err := checkObject(raw, "certificate", "reason"); err != nil {
		return malformed("revocation request", err)
	}
	var f struct {
		Certificate json.RawMessage `json:"certificate"`
		Reason      json.RawMessage `json:"reason"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		return malformed("revocation request", err)
	}
	var (
		cert   string
		reason int
	)
	if err := errors.Join(
		field(f.Certificate, "certificate", "a base64url string", &cert),
		field(f.Reason, "reason", "an integer", &reason),
	); err != nil {
		return firstProblem(err)
	}
	if cert == "" {
		return acme.NewDetailedError(acme.ErrorMalformedType, "certificate is required")
	}
	return nil
}

// rateLimited is RFC 8555 section 6.6's refusal (429); the caller sets the
// state's retryAfter so the answer carries Retry-After.
func rateLimited(format string, args ...any) *acme.Error {
	e := acme.NewDetailedError(acme.ErrorRateLimitedType, format, args...)
	e.Status = http.StatusTooManyRequests
	return e
}

// firstProblem unwraps the first problem of an errors.Join.
func firstProblem(err error) error {
	if j, ok := err.(interface{ Unwrap() []error }); ok && len(j.Unwrap()) > 0 {
		return j.Unwrap()[0]
	}
	return err
}
