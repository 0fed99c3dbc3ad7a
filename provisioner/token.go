package provisioner

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Join tokens are stateless: everything the CA needs is in the KID and
// authenticated by an HMAC under the TokenKey, so the CA keeps no token table.
// A token doubles as ACME External Account Binding credentials (KID +
// HMAC key), which lets a stock ACME client present it.
//
//	kid     = "ct1." + b64(json{"p","w","e","n"}) + "." + b64(HMAC(key, "crank-kid\x00"+payloadPart)[:16])
//	hmacKey = HMAC(key, "crank-eab\x00"+kid)
//	token   = kid + "." + b64(hmacKey)
//
// b64 is unpadded base64url. Decoding is strict (canonical encodings only) so
// a KID has exactly one spelling and a caller's single-use store keyed by KID
// cannot be bypassed by re-encoding.

const (
	kidPrefix    = "ct1"
	kidDomain    = "crank-kid\x00"
	eabDomain    = "crank-eab\x00"
	kidMACLen    = 16
	nonceLen     = 16
	hmacKeyLen   = sha256.Size
	minKeyLen    = 32
	maxKIDLen    = 1024 // well above any KID Mint produces; bounds work on hostile input
	maxProvLen   = 128
	maxKeyFile   = 4096
	redactedText = "REDACTED"
)

var b64 = base64.RawURLEncoding.Strict()

// TokenKey is the secret that signs join tokens. Its String, GoString,
// LogValue and MarshalJSON never reveal it, so it can be logged or dumped by
// mistake without leaking; only MarshalText (the on-disk form) does.
type TokenKey struct {
	secret []byte
}

// GenerateTokenKey returns a new random 32-byte key.
func GenerateTokenKey() (*TokenKey, error) {
	b := make([]byte, minKeyLen)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("generate token key: %w", err)
	}
	return &TokenKey{secret: b}, nil
}

// ParseTokenKey parses a key file: base64url or standard base64, padded or
// not, surrounding whitespace ignored, decoding to at least 32 bytes. Short
// keys are refused rather than stretched, because a weak key makes every
// token forgeable.
func ParseTokenKey(b []byte) (*TokenKey, error) {
	if len(b) > maxKeyFile {
		return nil, fmt.Errorf("token key: file is larger than %d bytes", maxKeyFile)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return nil, errors.New("token key: empty")
	}
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.StdEncoding} {
		secret, err := enc.DecodeString(s)
		if err != nil {
			continue
		}
		if len(secret) < minKeyLen {
			return nil, fmt.Errorf("token key: %d bytes, need at least %d", len(secret), minKeyLen)
		}
		return &TokenKey{secret: secret}, nil
	}
	return nil, errors.New("token key: not valid base64")
}

// MarshalText returns the on-disk form: unpadded base64url and a newline.
func (k *TokenKey) MarshalText() ([]byte, error) {
	if k == nil || len(k.secret) == 0 {
		return nil, errors.New("token key: empty")
	}
	return []byte(base64.RawURLEncoding.EncodeToString(k.secret) + "\n"), nil
}

// String never returns the secret.
func (k *TokenKey) String() string { return "TokenKey(" + redactedText + ")" }

// GoString keeps %#v from printing the secret bytes.
func (k *TokenKey) GoString() string { return k.String() }

// LogValue keeps slog (including its JSON handler) from printing the secret.
func (k *TokenKey) LogValue() slog.Value { return slog.StringValue(k.String()) }

// MarshalJSON is redacted: encoding/json would otherwise use MarshalText and
// write the secret into whatever config dump or log line holds the key.
func (k *TokenKey) MarshalJSON() ([]byte, error) { return json.Marshal(k.String()) }

// TokenClaims is what a token asserts.
type TokenClaims struct {
	Provisioner string
	Worker      string    // "" for plain EAB credentials
	ExpiresAt   time.Time // second precision
	Nonce       string    // base64url of 16 random bytes; makes every token unique
	// DNSNames and IPs tell the worker which names to order on its first
	// issuance (it cannot read the CA's configuration). They are hints under
	// the MAC: the CA decides from its own configuration.
	DNSNames []string
	IPs      []string
	// IssuedAt (second precision) lets the CA refuse tokens minted before a
	// worker was disabled. Mint sets it.
	IssuedAt time.Time
	// Attested tokens (minted by the CA itself after a JWT attestation)
	// carry the attested identity under the MAC: its SPIFFE ID, with
	// DNSNames and IPs above as its names (authoritative, not hints), the
	// attestor, and the pod of a pod-bound Kubernetes token. Worker is then
	// the identity's display name and need not be a DNS label.
	SPIFFEID string
	Attestor string
	PodName  string
	PodUID   string
}

// Attested reports whether the token carries an attested identity.
func (c TokenClaims) Attested() bool { return c.SPIFFEID != "" }

// Token is a minted join token. HMACKey is a secret; only Encode and
// HMACKeyString reveal it.
type Token struct {
	KID       string
	HMACKey   []byte
	ExpiresAt time.Time
	Claims    TokenClaims
}

// Encode returns the compact form kid.hmac that a worker is given. It is the
// secret.
func (t Token) Encode() string { return t.KID + "." + t.HMACKeyString() }

// String is redacted: KID and expiry only, never the HMAC key.
func (t Token) String() string {
	return fmt.Sprintf("Token(kid=%s, expires=%s, hmac=%s)", t.KID, t.ExpiresAt.UTC().Format(time.RFC3339), redactedText)
}

// GoString keeps %#v from printing the HMAC key.
func (t Token) GoString() string { return t.String() }

// LogValue keeps slog from printing the HMAC key.
func (t Token) LogValue() slog.Value { return slog.StringValue(t.String()) }

// HMACKeyString returns the unpadded base64url HMAC key, as ACME clients
// expect EAB keys.
func (t Token) HMACKeyString() string { return base64.RawURLEncoding.EncodeToString(t.HMACKey) }

// kidPayload is the signed JSON. Short names keep the KID short; field order
// is fixed by the struct so minting is deterministic.
type kidPayload struct {
	P  string   `json:"p"`
	W  string   `json:"w"`
	E  int64    `json:"e"`
	N  string   `json:"n"`
	D  []string `json:"d,omitempty"`
	I  []string `json:"i,omitempty"`
	T  int64    `json:"t,omitempty"`
	S  string   `json:"s,omitempty"`
	A  string   `json:"a,omitempty"`
	PN string   `json:"pn,omitempty"`
	PU string   `json:"pu,omitempty"`
}

// checkAttested validates the attestation fields of a token.
func checkAttested(worker, spiffeID, attestor, podName, podUID string) error {
	if spiffeID == "" {
		if attestor != "" || podName != "" || podUID != "" {
			return errors.New("attestation fields without a SPIFFE ID")
		}
		return nil
	}
	if _, err := spiffeid.FromString(spiffeID); err != nil {
		return fmt.Errorf("SPIFFE ID: %w", err)
	}
	if !validWorkerName(attestor) {
		return errors.New("attested tokens name their attestor")
	}
	if !validAttestedWorker(worker) {
		return fmt.Errorf("%q is not a valid attested worker name", worker)
	}
	for _, v := range []string{podName, podUID} {
		if len(v) > 253 || strings.ContainsFunc(v, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
			return errors.New("pod name and UID must be printable ASCII of at most 253 bytes")
		}
	}
	return nil
}

// validAttestedWorker accepts the display names of attested identities:
// the path of their SPIFFE ID ("ns/team-a/sa/billing") or a worker name.
func validAttestedWorker(w string) bool {
	if validWorkerName(w) {
		return true
	}
	if w == "" || len(w) > 512 {
		return false
	}
	for _, seg := range strings.Split(w, "/") {
		if seg == "" || validateDNSName(seg) != nil && !validWorkerName(seg) {
			return false
		}
	}
	return true
}

// checkNameHints validates the DNS names and IPs a token carries.
func checkNameHints(dns, ips []string) error {
	if len(dns)+len(ips) > maxNameHints {
		return fmt.Errorf("at most %d names", maxNameHints)
	}
	for _, d := range dns {
		if err := validateDNSName(d); err != nil {
			return err
		}
	}
	for _, ip := range ips {
		if _, err := parseIP(ip); err != nil {
			return err
		}
	}
	return nil
}

// maxNameHints bounds the names in a token so that kids stay short.
const maxNameHints = 16

// Mint creates a token. It fills Nonce if empty and truncates ExpiresAt to
// seconds. It refuses an empty or odd provisioner, an invalid worker name and
// an expiry that is not in the future.
func (k *TokenKey) Mint(c TokenClaims) (Token, error) {
	if k == nil || len(k.secret) == 0 {
		return Token{}, errors.New("mint: nil token key")
	}
	if err := checkProvisionerName(c.Provisioner); err != nil {
		return Token{}, fmt.Errorf("mint: %w", err)
	}
	if c.Worker != "" && !validWorkerName(c.Worker) && !c.Attested() {
		return Token{}, fmt.Errorf("mint: %q is not a valid worker name", c.Worker)
	}
	if err := checkAttested(c.Worker, c.SPIFFEID, c.Attestor, c.PodName, c.PodUID); err != nil {
		return Token{}, fmt.Errorf("mint: %w", err)
	}
	exp := c.ExpiresAt.Unix()
	if !time.Unix(exp, 0).After(time.Now()) {
		return Token{}, fmt.Errorf("mint: expiry %s is not in the future", c.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if c.Nonce == "" {
		n := make([]byte, nonceLen)
		if _, err := rand.Read(n); err != nil {
			return Token{}, fmt.Errorf("mint: nonce: %w", err)
		}
		c.Nonce = b64.EncodeToString(n)
	} else if !validNonce(c.Nonce) {
		return Token{}, errors.New("mint: nonce must be unpadded base64url of 16 bytes")
	}
	c.ExpiresAt = time.Unix(exp, 0).UTC()
	if err := checkNameHints(c.DNSNames, c.IPs); err != nil {
		return Token{}, fmt.Errorf("mint: %w", err)
	}

	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now()
	}
	c.IssuedAt = time.Unix(c.IssuedAt.Unix(), 0).UTC()
	raw, err := json.Marshal(kidPayload{P: c.Provisioner, W: c.Worker, E: exp, N: c.Nonce, D: c.DNSNames, I: c.IPs, T: c.IssuedAt.Unix(),
		S: c.SPIFFEID, A: c.Attestor, PN: c.PodName, PU: c.PodUID})
	if err != nil {
		return Token{}, fmt.Errorf("mint: %w", err)
	}
	payload := b64.EncodeToString(raw)
	kid := kidPrefix + "." + payload + "." + b64.EncodeToString(k.kidMAC(payload))
	if len(kid) > maxKIDLen {
		return Token{}, fmt.Errorf("mint: kid longer than %d bytes", maxKIDLen)
	}
	return Token{KID: kid, HMACKey: k.eabKey(kid), ExpiresAt: c.ExpiresAt, Claims: c}, nil
}

// Verify checks a KID in order: format (ErrTokenMalformed), MAC
// (ErrTokenForged, constant time), expiry against now (ErrTokenExpired). The
// payload JSON is only parsed after the MAC verified, so hostile input never
// reaches the JSON decoder. It returns the claims and the derived EAB HMAC
// key. It must not panic on any input; it is fuzzed.
func (k *TokenKey) Verify(kid string, now time.Time) (TokenClaims, []byte, error) {
	if k == nil || len(k.secret) == 0 {
		return TokenClaims{}, nil, fmt.Errorf("%w: nil token key", ErrTokenForged)
	}
	payload, mac, err := splitKID(kid)
	if err != nil {
		return TokenClaims{}, nil, err
	}
	if subtle.ConstantTimeCompare(mac, k.kidMAC(payload)) != 1 {
		return TokenClaims{}, nil, fmt.Errorf("%w: MAC mismatch", ErrTokenForged)
	}
	raw, err := b64.DecodeString(payload)
	if err != nil { // unreachable: splitKID decoded it already
		return TokenClaims{}, nil, fmt.Errorf("%w: payload: %w", ErrTokenMalformed, err)
	}
	c, err := decodeClaims(raw)
	if err != nil {
		return TokenClaims{}, nil, err
	}
	if !now.Before(c.ExpiresAt) {
		return TokenClaims{}, nil, fmt.Errorf("%w: expired at %s", ErrTokenExpired, c.ExpiresAt.Format(time.RFC3339))
	}
	return c, k.eabKey(kid), nil
}

// decodeClaims parses and checks a kid payload.
func decodeClaims(raw []byte) (TokenClaims, error) {
	var p kidPayload
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil || dec.More() {
		return TokenClaims{}, fmt.Errorf("%w: payload is not valid JSON", ErrTokenMalformed)
	}
	if checkProvisionerName(p.P) != nil || (p.W != "" && !validWorkerName(p.W) && p.S == "") || p.E <= 0 || !validNonce(p.N) || checkNameHints(p.D, p.I) != nil ||
		checkAttested(p.W, p.S, p.A, p.PN, p.PU) != nil {
		return TokenClaims{}, fmt.Errorf("%w: invalid claims", ErrTokenMalformed)
	}
	c := TokenClaims{Provisioner: p.P, Worker: p.W, ExpiresAt: time.Unix(p.E, 0).UTC(), Nonce: p.N, DNSNames: p.D, IPs: p.I,
		SPIFFEID: p.S, Attestor: p.A, PodName: p.PN, PodUID: p.PU}
	if p.T > 0 {
		c.IssuedAt = time.Unix(p.T, 0).UTC()
	}
	return c, nil
}

// ReadClaims reads the claims of a compact token or kid WITHOUT verifying
// its MAC: the worker side has no key and only uses them as hints (which
// names to order, when the token expires). Never base a decision on them.
func ReadClaims(token string) (TokenClaims, error) {
	kid := token
	if parts := strings.Split(token, "."); len(parts) == 4 {
		kid = strings.Join(parts[:3], ".")
	}
	payload, _, err := splitKID(kid)
	if err != nil {
		return TokenClaims{}, err
	}
	raw, err := b64.DecodeString(payload)
	if err != nil {
		return TokenClaims{}, fmt.Errorf("%w: payload: %w", ErrTokenMalformed, err)
	}
	return decodeClaims(raw)
}

// ParseToken splits a compact token (worker side) into the KID and the HMAC
// key, checking their shape but not the MAC (the worker does not have the
// key).
func ParseToken(s string) (kid string, hmacKey []byte, err error) {
	if len(s) > maxKIDLen+1+b64.EncodedLen(hmacKeyLen) {
		return "", nil, fmt.Errorf("%w: too long", ErrTokenMalformed)
	}
	i := strings.LastIndexByte(s, '.')
	if i < 0 {
		return "", nil, fmt.Errorf("%w: want 4 dot-separated parts", ErrTokenMalformed)
	}
	kid = s[:i]
	if _, _, err := splitKID(kid); err != nil {
		return "", nil, err
	}
	key, err := b64.DecodeString(s[i+1:])
	if err != nil || len(key) != hmacKeyLen {
		return "", nil, fmt.Errorf("%w: HMAC key must be unpadded base64url of %d bytes", ErrTokenMalformed, hmacKeyLen)
	}
	return kid, key, nil
}

// splitKID checks the KID's structure and returns the payload part (still
// encoded, as the MAC covers the encoded text) and the decoded MAC.
func splitKID(kid string) (payload string, mac []byte, err error) {
	if len(kid) > maxKIDLen {
		return "", nil, fmt.Errorf("%w: kid too long", ErrTokenMalformed)
	}
	// Only the canonical spelling is a kid: Go's base64 decoders skip CR
	// and LF, so without this "a\rb" would verify like "ab" while being a
	// different string to everything keyed by the kid (spent tokens, the
	// derived EAB key).
	for i := 0; i < len(kid); i++ {
		if c := kid[i]; !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return "", nil, fmt.Errorf("%w: kid contains a character outside base64url", ErrTokenMalformed)
		}
	}
	parts := strings.Split(kid, ".")
	if len(parts) != 3 || parts[0] != kidPrefix {
		return "", nil, fmt.Errorf("%w: kid must be %q + 2 dot-separated parts", ErrTokenMalformed, kidPrefix+".")
	}
	if parts[1] == "" {
		return "", nil, fmt.Errorf("%w: empty payload", ErrTokenMalformed)
	}
	if _, err := b64.DecodeString(parts[1]); err != nil {
		return "", nil, fmt.Errorf("%w: payload is not base64url", ErrTokenMalformed)
	}
	mac, err = b64.DecodeString(parts[2])
	if err != nil || len(mac) != kidMACLen {
		return "", nil, fmt.Errorf("%w: MAC must be unpadded base64url of %d bytes", ErrTokenMalformed, kidMACLen)
	}
	return parts[1], mac, nil
}

func (k *TokenKey) kidMAC(payload string) []byte {
	m := hmac.New(sha256.New, k.secret)
	m.Write([]byte(kidDomain + payload))
	return m.Sum(nil)[:kidMACLen]
}

func (k *TokenKey) eabKey(kid string) []byte {
	m := hmac.New(sha256.New, k.secret)
	m.Write([]byte(eabDomain + kid))
	return m.Sum(nil)
}

func validNonce(n string) bool {
	b, err := b64.DecodeString(n)
	return err == nil && len(b) == nonceLen
}

// checkProvisionerName keeps provisioner names printable and bounded; they
// are echoed in errors and logs.
func checkProvisionerName(p string) error {
	if p == "" {
		return errors.New("empty provisioner name")
	}
	if len(p) > maxProvLen || !utf8.ValidString(p) {
		return fmt.Errorf("provisioner name must be valid UTF-8 of at most %d bytes", maxProvLen)
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return errors.New("provisioner name contains control characters")
		}
	}
	return nil
}
