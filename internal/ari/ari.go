package ari

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// ErrMalformedCertID is returned for a certID that is not
// base64url(AKI) "." base64url(serial DER value).
var ErrMalformedCertID = errors.New("malformed ARI certID")

// CertID is a parsed RFC 9773 certificate identifier.
type CertID struct {
	AKI    []byte
	Serial *big.Int
}

// ParseCertID parses a certID; only the canonical encoding is accepted so
// that one certificate has one identifier.
func ParseCertID(s string) (CertID, error) {
	akiPart, serialPart, ok := strings.Cut(s, ".")
	if !ok || akiPart == "" || serialPart == "" || strings.Contains(serialPart, ".") || len(s) > 512 {
		return CertID{}, fmt.Errorf("%w: want <base64url AKI>.<base64url serial>", ErrMalformedCertID)
	}
	aki, err := base64.RawURLEncoding.Strict().DecodeString(akiPart)
	if err != nil {
		return CertID{}, fmt.Errorf("%w: AKI is not unpadded base64url", ErrMalformedCertID)
	}
	der, err := base64.RawURLEncoding.Strict().DecodeString(serialPart)
	if err != nil {
		return CertID{}, fmt.Errorf("%w: serial is not unpadded base64url", ErrMalformedCertID)
	}
	switch {
	case len(der) == 0 || len(der) > 21:
		return CertID{}, fmt.Errorf("%w: serial must be 1 to 21 bytes", ErrMalformedCertID)
	case der[0]&0x80 != 0:
		return CertID{}, fmt.Errorf("%w: negative serial", ErrMalformedCertID)
	case len(der) > 1 && der[0] == 0 && der[1]&0x80 == 0:
		return CertID{}, fmt.Errorf("%w: serial is not minimally encoded", ErrMalformedCertID)
	}
	return CertID{AKI: aki, Serial: new(big.Int).SetBytes(der)}, nil
}

// Band places windows: a certificate's window starts somewhere in
// [Start, End-Width] of its lifetime (fractions), chosen by a hash of its
// serial, and lasts Width.
type Band struct {
	Start, End, Width float64
	// Retry-After is Lifetime/20 clamped to [MinRetryAfter, MaxRetryAfter].
	MinRetryAfter, MaxRetryAfter time.Duration
}

// DefaultBand is config's default: windows of 5% of the lifetime between
// 50% and 80%, Retry-After between 5s and 1h.
var DefaultBand = Band{Start: 0.5, End: 0.8, Width: 0.05, MinRetryAfter: 5 * time.Second, MaxRetryAfter: time.Hour}

// Window is a suggested renewal window and how soon to ask again.
type Window struct {
	Start, End time.Time
	RetryAfter time.Duration
}

// Window computes the window of a certificate. renewNow, when set (forced
// rotation, revocation, disabled worker), moves the window to that instant:
// [renewNow, renewNow + RetryAfter/2]. A client polling every Retry-After
// picks a time in the window, so a fleet still spreads its renewals, and
// every member renews within one Retry-After of the decision.
func (b Band) Window(serial string, notBefore, notAfter, renewNow time.Time) Window {
	life := notAfter.Sub(notBefore)
	retry := life / 20
	retry = max(retry, b.MinRetryAfter)
	retry = min(retry, b.MaxRetryAfter)
	if !renewNow.IsZero() {
		return Window{Start: renewNow, End: renewNow.Add(max(retry/2, time.Second)), RetryAfter: retry}
	}
	span := b.End - b.Width - b.Start
	frac := b.Start + span*unit(serial)
	start := notBefore.Add(time.Duration(float64(life) * frac)).Truncate(time.Second)
	end := start.Add(time.Duration(float64(life) * b.Width)).Truncate(time.Second)
	if !end.After(start) {
		end = start.Add(time.Second)
	}
	return Window{Start: start, End: end, RetryAfter: retry}
}

// unit maps a serial to [0, 1) uniformly and deterministically, so every
// replica and every restart suggests the same window.
func unit(serial string) float64 {
	sum := sha256.Sum256([]byte("crank-ari\x00" + serial))
	return float64(binary.BigEndian.Uint64(sum[:8])>>11) / (1 << 53)
}
