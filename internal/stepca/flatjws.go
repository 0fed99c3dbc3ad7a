package stepca

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// flatJWS is what the precheck needs of a request's JWS before smallstep
// parses and verifies it: the key ID of the signer and the payload.
//
// go-jose's parser costs about a tenth of the server's CPU per request
// (it decodes the whole header, a JWK included, through a reflective JSON
// decoder that first copies the body without its whitespace), and smallstep
// parses every body again. parseFlatJWS reads only what the precheck uses,
// and is stricter than go-jose, so that whatever it accepts go-jose reads
// the same way (FuzzFlatJWS checks this): the precheck can never judge a
// payload other than the one smallstep acts on.
type flatJWS struct {
	kid     string
	payload []byte
}

// maxJWSMembers is the flattened serialization's member count that RFC
// 8555 6.2 admits: protected, payload, signature (no unprotected header).
const maxJWSMembers = 3

// parseFlatJWS reads the flattened JSON serialization (RFC 7515 7.2.2) as
// RFC 8555 6.2 restricts it: an object with exactly the members
// "protected", "payload" and "signature", each once, each a base64url
// string without padding or whitespace; a protected header that is a JSON
// object whose "kid", if present, is a string; nothing after the object.
func parseFlatJWS(body []byte) (flatJWS, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return flatJWS{}, errors.New("not a JSON object")
	}
	var protected, payload []byte
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return flatJWS{}, fmt.Errorf("invalid JSON: %w", err)
		}
		name, _ := t.(string)
		switch name {
		case "protected", "payload", "signature":
		case "signatures":
			return flatJWS{}, errors.New("the general serialization (\"signatures\") is not accepted; use the flattened one with exactly one signature")
		case "header":
			return flatJWS{}, errors.New("an unprotected header is not accepted (RFC 8555 6.2)")
		default:
			return flatJWS{}, fmt.Errorf("unknown member %q", truncate(name, 40))
		}
		if seen[name] {
			return flatJWS{}, fmt.Errorf("member %q appears twice", name)
		}
		seen[name] = true
		v, err := dec.Token()
		if err != nil {
			return flatJWS{}, fmt.Errorf("invalid JSON: %w", err)
		}
		s, ok := v.(string)
		if !ok {
			return flatJWS{}, fmt.Errorf("member %q is not a string", name)
		}
		b, err := decodeB64URL(s)
		if err != nil {
			return flatJWS{}, fmt.Errorf("member %q: %w", name, err)
		}
		switch name {
		case "protected":
			protected = b
		case "payload":
			payload = b
		}
	}
	if len(seen) != maxJWSMembers {
		return flatJWS{}, errors.New("the members \"protected\", \"payload\" and \"signature\" are required")
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return flatJWS{}, fmt.Errorf("invalid JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return flatJWS{}, errors.New("data after the JWS object")
	}
	jws := flatJWS{payload: payload}
	if len(protected) > 0 {
		var header map[string]json.RawMessage
		if err := json.Unmarshal(protected, &header); err != nil || header == nil {
			return flatJWS{}, errors.New("the protected header is not a JSON object")
		}
		if raw, ok := header["kid"]; ok {
			if err := json.Unmarshal(raw, &jws.kid); err != nil {
				return flatJWS{}, errors.New("the protected header's kid is not a string")
			}
		}
	}
	if jws.payload == nil {
		jws.payload = []byte{}
	}
	return jws, nil
}

// decodeB64URL decodes unpadded base64url (RFC 7515 2), refusing every
// character outside its alphabet: go-jose strips whitespace and padding
// that a stricter reader must not silently skip.
func decodeB64URL(s string) ([]byte, error) {
	for i := range len(s) {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return nil, fmt.Errorf("not unpadded base64url (character %q at %d)", c, i)
		}
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, errors.New("not unpadded base64url")
	}
	return b, nil
}
