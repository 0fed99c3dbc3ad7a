package provisioner_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/provisioner"
	"github.com/google/go-cmp/cmp"
)

func TestTokenRoundTrip(t *testing.T) {
	t.Parallel()
	k := mustKey(t)
	exp := time.Now().Add(time.Hour).Add(123 * time.Millisecond)
	tests := []struct {
		name   string
		claims provisioner.TokenClaims
	}{
		{name: "worker", claims: provisioner.TokenClaims{Provisioner: "workers", Worker: "api", ExpiresAt: exp}},
		{name: "plain EAB", claims: provisioner.TokenClaims{Provisioner: "acme", ExpiresAt: exp}},
		{name: "fixed nonce", claims: provisioner.TokenClaims{Provisioner: "workers", Worker: "db", ExpiresAt: exp, Nonce: "AAAAAAAAAAAAAAAAAAAAAA"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tok, err := k.Mint(tt.claims)
			if err != nil {
				t.Fatalf("Mint: %v", err)
			}
			if got := len(strings.Split(tok.Encode(), ".")); got != 4 {
				t.Errorf("compact token has %d parts, want 4", got)
			}
			if !strings.HasPrefix(tok.KID, "ct1.") {
				t.Errorf("KID %q lacks prefix", tok.KID)
			}
			want := tt.claims
			want.ExpiresAt = time.Unix(exp.Unix(), 0)
			if want.Nonce == "" {
				want.Nonce = tok.Claims.Nonce
				if n, err := base64.RawURLEncoding.DecodeString(want.Nonce); err != nil || len(n) != 16 {
					t.Errorf("nonce %q is not 16 bytes of base64url", want.Nonce)
				}
			}
			if want.IssuedAt.IsZero() {
				want.IssuedAt = tok.Claims.IssuedAt
				if d := time.Since(want.IssuedAt); d < 0 || d > time.Minute {
					t.Errorf("IssuedAt %s is not about now", want.IssuedAt)
				}
			}
			if diff := cmp.Diff(want, tok.Claims); diff != "" {
				t.Errorf("minted claims mismatch (-want +got):\n%s", diff)
			}
			if !tok.ExpiresAt.Equal(want.ExpiresAt) {
				t.Errorf("Token.ExpiresAt = %v, want %v", tok.ExpiresAt, want.ExpiresAt)
			}

			claims, key, err := k.Verify(tok.KID, time.Now())
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if diff := cmp.Diff(want, claims); diff != "" {
				t.Errorf("verified claims mismatch (-want +got):\n%s", diff)
			}
			if !bytes.Equal(key, tok.HMACKey) || len(key) != 32 {
				t.Errorf("Verify key = %x, want %x (32 bytes)", key, tok.HMACKey)
			}

			kid, hk, err := provisioner.ParseToken(tok.Encode())
			if err != nil {
				t.Fatalf("ParseToken: %v", err)
			}
			if kid != tok.KID || !bytes.Equal(hk, tok.HMACKey) {
				t.Errorf("ParseToken = %q, %x; want %q, %x", kid, hk, tok.KID, tok.HMACKey)
			}
			if tok.HMACKeyString() != base64.RawURLEncoding.EncodeToString(tok.HMACKey) {
				t.Errorf("HMACKeyString = %q", tok.HMACKeyString())
			}
		})
	}
}

func TestMintDeterministicAndUnique(t *testing.T) {
	t.Parallel()
	k := mustKey(t)
	c := provisioner.TokenClaims{Provisioner: "p", Worker: "w", ExpiresAt: time.Now().Add(time.Hour)}
	a, err := k.Mint(c)
	if err != nil {
		t.Fatal(err)
	}
	b, err := k.Mint(c)
	if err != nil {
		t.Fatal(err)
	}
	if a.KID == b.KID {
		t.Error("two mints without a nonce produced the same KID")
	}
	c2, err := k.Mint(a.Claims)
	if err != nil {
		t.Fatal(err)
	}
	if c2.KID != a.KID {
		t.Errorf("re-mint with same claims: %q != %q", c2.KID, a.KID)
	}
}

func TestMintErrors(t *testing.T) {
	t.Parallel()
	k := mustKey(t)
	future := time.Now().Add(time.Hour)
	tests := []struct {
		name string
		c    provisioner.TokenClaims
	}{
		{name: "empty provisioner", c: provisioner.TokenClaims{Worker: "a", ExpiresAt: future}},
		{name: "past expiry", c: provisioner.TokenClaims{Provisioner: "p", ExpiresAt: time.Now().Add(-time.Second)}},
		{name: "zero expiry", c: provisioner.TokenClaims{Provisioner: "p"}},
		{name: "sub-second expiry", c: provisioner.TokenClaims{Provisioner: "p", ExpiresAt: time.Now().Truncate(time.Second).Add(time.Millisecond)}},
		{name: "bad worker", c: provisioner.TokenClaims{Provisioner: "p", Worker: "A/B", ExpiresAt: future}},
		{name: "bad nonce", c: provisioner.TokenClaims{Provisioner: "p", ExpiresAt: future, Nonce: "short"}},
		{name: "control char provisioner", c: provisioner.TokenClaims{Provisioner: "p\n", ExpiresAt: future}},
		{name: "long provisioner", c: provisioner.TokenClaims{Provisioner: strings.Repeat("p", 129), ExpiresAt: future}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tok, err := k.Mint(tt.c); err == nil {
				t.Errorf("Mint(%+v) = %v, want error", tt.c, tok)
			}
		})
	}
	var nilKey *provisioner.TokenKey
	if _, err := nilKey.Mint(provisioner.TokenClaims{Provisioner: "p", ExpiresAt: future}); err == nil {
		t.Error("nil key minted")
	}
}

// flip changes one character of s at i to another valid base64url character.
func flip(s string, i int) string {
	c := byte('A')
	if s[i] == 'A' {
		c = 'B'
	}
	return s[:i] + string(c) + s[i+1:]
}

func TestVerifyErrors(t *testing.T) {
	t.Parallel()
	k := mustKey(t)
	now := time.Now()
	tok, err := k.Mint(provisioner.TokenClaims{Provisioner: "workers", Worker: "api", ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tok.KID, ".")
	mac, _ := base64.RawURLEncoding.DecodeString(parts[2])
	// Non-canonical re-encoding of the MAC: same bytes, different string.
	// Must not verify, or a single-use store keyed by KID could be bypassed.
	last := parts[2][len(parts[2])-1]
	alt := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", last) ^ 1
	nonCanonical := parts[2][:len(parts[2])-1] + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[alt])
	forgedPayload, _ := json.Marshal(map[string]any{"p": "workers", "w": "admin", "e": now.Add(time.Hour).Unix(), "n": "AAAAAAAAAAAAAAAAAAAAAA"})

	tests := []struct {
		name string
		key  *provisioner.TokenKey
		kid  string
		now  time.Time
		want error
	}{
		{name: "tampered prefix", kid: "ct2" + tok.KID[3:], want: provisioner.ErrTokenMalformed},
		{name: "tampered payload", kid: parts[0] + "." + flip(parts[1], 5) + "." + parts[2], want: provisioner.ErrTokenForged},
		{name: "tampered MAC", kid: parts[0] + "." + parts[1] + "." + flip(parts[2], 3), want: provisioner.ErrTokenForged},
		{name: "non-canonical MAC", kid: parts[0] + "." + parts[1] + "." + nonCanonical, want: provisioner.ErrTokenMalformed},
		{name: "swapped payload", kid: parts[0] + "." + base64.RawURLEncoding.EncodeToString(forgedPayload) + "." + parts[2], want: provisioner.ErrTokenForged},
		{name: "truncated MAC", kid: parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(mac[:15]), want: provisioner.ErrTokenMalformed},
		{name: "padded MAC", kid: parts[0] + "." + parts[1] + "." + base64.URLEncoding.EncodeToString(mac), want: provisioner.ErrTokenMalformed},
		{name: "wrong key", key: mustKey(t), kid: tok.KID, want: provisioner.ErrTokenForged},
		{name: "expired", kid: tok.KID, now: now.Add(2 * time.Hour), want: provisioner.ErrTokenExpired},
		{name: "expired exactly at expiry", kid: tok.KID, now: tok.ExpiresAt, want: provisioner.ErrTokenExpired},
		{name: "compact token instead of kid", kid: tok.Encode(), want: provisioner.ErrTokenMalformed},
		{name: "empty", kid: "", want: provisioner.ErrTokenMalformed},
		{name: "dots", kid: "...", want: provisioner.ErrTokenMalformed},
		{name: "prefix only", kid: "ct1..", want: provisioner.ErrTokenMalformed},
		{name: "not base64", kid: "ct1.!!!." + parts[2], want: provisioner.ErrTokenMalformed},
		{name: "huge", kid: "ct1." + strings.Repeat("A", 1<<16) + "." + parts[2], want: provisioner.ErrTokenMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key := k
			if tt.key != nil {
				key = tt.key
			}
			at := now
			if !tt.now.IsZero() {
				at = tt.now
			}
			c, hk, err := key.Verify(tt.kid, at)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify() error = %v, want %v", err, tt.want)
			}
			if hk != nil || !cmp.Equal(c, provisioner.TokenClaims{}) {
				t.Errorf("Verify() returned claims %+v / key on error", c)
			}
		})
	}
}

func TestParseTokenErrors(t *testing.T) {
	t.Parallel()
	k := mustKey(t)
	tok, err := k.Mint(provisioner.TokenClaims{Provisioner: "p", Worker: "w", ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	enc := tok.Encode()
	tests := []string{
		"",
		".",
		"...",
		tok.KID,
		tok.KID + ".",
		tok.KID + "." + base64.URLEncoding.EncodeToString(tok.HMACKey),
		tok.KID + "." + base64.RawURLEncoding.EncodeToString(tok.HMACKey[:31]),
		enc + ".x",
		"x" + enc,
		strings.Replace(enc, "ct1.", "ct1..", 1),
		enc + " ",
		strings.Repeat("a.", 5000),
	}
	for i, s := range tests {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			if kid, key, err := provisioner.ParseToken(s); !errors.Is(err, provisioner.ErrTokenMalformed) {
				t.Errorf("ParseToken(%q) = %q, %x, %v; want ErrTokenMalformed", s, kid, key, err)
			}
		})
	}
}

func TestTokenKeyText(t *testing.T) {
	t.Parallel()
	k := mustKey(t)
	text, err := k.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(text, []byte("\n")) || bytes.ContainsAny(text, "=+/") {
		t.Errorf("MarshalText = %q, want unpadded base64url + newline", text)
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimSpace(string(text)))
	if err != nil || len(raw) != 32 {
		t.Fatalf("MarshalText does not decode to 32 bytes: %v", err)
	}
	tok, err := k.Mint(provisioner.TokenClaims{Provisioner: "p", ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		in      []byte
		wantErr bool
	}{
		{name: "own output", in: text},
		{name: "padded url", in: []byte(base64.URLEncoding.EncodeToString(raw))},
		{name: "std with whitespace", in: []byte("  \n" + base64.StdEncoding.EncodeToString(raw) + "\r\n\t")},
		{name: "raw std", in: []byte(base64.RawStdEncoding.EncodeToString(raw))},
		{name: "64 bytes", in: []byte(base64.StdEncoding.EncodeToString(append(raw, raw...))), wantErr: false},
		{name: "31 bytes", in: []byte(base64.RawURLEncoding.EncodeToString(raw[:31])), wantErr: true},
		{name: "empty", in: nil, wantErr: true},
		{name: "whitespace", in: []byte(" \n"), wantErr: true},
		{name: "garbage", in: []byte("not base64 at all!!"), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k2, err := provisioner.ParseTokenKey(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseTokenKey() error = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil || tt.name == "64 bytes" {
				return
			}
			if _, _, err := k2.Verify(tok.KID, time.Now()); err != nil {
				t.Errorf("parsed key does not verify a token of the original: %v", err)
			}
		})
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	t.Parallel()
	k := mustKey(t)
	text, err := k.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	secret := strings.TrimSpace(string(text))
	tok, err := k.Mint(provisioner.TokenClaims{Provisioner: "p", Worker: "w", ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	hk := tok.HMACKeyString()

	var logBuf bytes.Buffer
	slog.New(slog.NewJSONHandler(&logBuf, nil)).Info("x", "token", tok, "key", k)
	slog.New(slog.NewTextHandler(&logBuf, nil)).Info("x", "token", tok, "key", k)
	keyJSON, err := json.Marshal(struct{ Key *provisioner.TokenKey }{k})
	if err != nil {
		t.Fatal(err)
	}

	outputs := map[string]string{
		"Token.String": tok.String(),
		"%v token":     fmt.Sprintf("%v", tok),
		"%+v token":    fmt.Sprintf("%+v", tok),
		"%#v token":    fmt.Sprintf("%#v", tok),
		"%s token":     fmt.Sprintf("%s", tok), //lint:ignore S1025 the fmt path itself is under test
		"%v key":       fmt.Sprintf("%v", k),
		"%#v key":      fmt.Sprintf("%#v", k),
		"%x key":       fmt.Sprintf("%x", k),
		"key.String":   k.String(),
		"slog":         logBuf.String(),
		"json key":     string(keyJSON),
	}
	for name, out := range outputs {
		if strings.Contains(out, hk) || strings.Contains(out, fmt.Sprintf("%x", tok.HMACKey)) {
			t.Errorf("%s leaks the HMAC key: %s", name, out)
		}
		if strings.Contains(out, secret) {
			t.Errorf("%s leaks the token key: %s", name, out)
		}
	}
	if !strings.Contains(tok.String(), tok.KID) {
		t.Errorf("Token.String() = %q, want it to show the KID", tok.String())
	}
	if k.String() != "TokenKey(REDACTED)" {
		t.Errorf("TokenKey.String() = %q", k.String())
	}
}
