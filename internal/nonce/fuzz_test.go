package nonce_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/internal/nonce"
)

// FuzzParse feeds arbitrary strings (a JWS "nonce" header is attacker
// input) to Parse and Consume at an arbitrary clock offset. Neither may
// panic, and a nonce is accepted only if this key tagged it: the check is
// redone here independently (canonical base64url of 20 ID bytes and the
// first 16 bytes of their HMAC-SHA256), since issued nonces carry random
// bytes that differ between the fuzzing processes. An accepted nonce is
// spent once.
func FuzzParse(f *testing.F) {
	const maxAge = 5 * time.Minute
	key := testKey(7)
	issuer, err := nonce.New(nonce.Config{Key: key, Spent: nonce.NewMemory(), MaxAge: maxAge, Now: func() time.Time { return t0 }})
	if err != nil {
		f.Fatal(err)
	}
	for _, off := range []time.Duration{0, time.Minute, maxAge, maxAge + 1, -time.Minute - 1} {
		n, err := issuer.New()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(n, int64(off))
		f.Add(n+"=", int64(off))
		f.Add(n[:47], int64(off))
	}
	for _, s := range []string{"", "====", "\n", string(make([]byte, 48)), base64.RawURLEncoding.EncodeToString(make([]byte, 36))} {
		f.Add(s, int64(0))
	}
	f.Fuzz(func(t *testing.T, s string, offset int64) {
		now := t0.Add(time.Duration(offset))
		mem := nonce.NewMemory()
		src, err := nonce.New(nonce.Config{Key: key, Spent: mem, MaxAge: maxAge, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		want := expectedParse(key, s, now, maxAge)
		id, err := src.Parse(s)
		if !errors.Is(err, want) || (want == nil && err != nil) {
			t.Fatalf("Parse(%q) at %v = %v, want %v", s, now, err, want)
		}
		if err == nil {
			raw, _ := base64.RawURLEncoding.DecodeString(s)
			if string(id[:]) != string(raw[:nonce.IDLen]) {
				t.Fatalf("Parse(%q) = ID %x, want %x", s, id, raw[:nonce.IDLen])
			}
		}
		err = src.Consume(t.Context(), s)
		if !errors.Is(err, want) || (want == nil && err != nil) {
			t.Fatalf("Consume(%q) = %v, want %v", s, err, want)
		}
		if want != nil {
			if mem.Len() != 0 {
				t.Fatalf("refused nonce %q was recorded", s)
			}
			return
		}
		if err := src.Consume(t.Context(), s); !errors.Is(err, nonce.ErrSpent) {
			t.Fatalf("second Consume(%q) = %v, want ErrSpent", s, err)
		}
	})
}

// expectedParse is the nonce check written from the format's description.
func expectedParse(key []byte, s string, now time.Time, maxAge time.Duration) error {
	raw, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(raw) != 36 || base64.RawURLEncoding.EncodeToString(raw) != s {
		return nonce.ErrMalformed
	}
	m := hmac.New(sha256.New, key)
	m.Write(raw[:20])
	if !hmac.Equal(m.Sum(nil)[:16], raw[20:]) {
		return nonce.ErrMalformed
	}
	at := time.Unix(0, int64(binary.BigEndian.Uint64(raw[:8])))
	switch {
	case at.After(now.Add(time.Minute)):
		return nonce.ErrMalformed
	case now.Sub(at) > maxAge:
		return nonce.ErrExpired
	}
	return nil
}

// FuzzRestore feeds arbitrary snapshots to Memory.Restore (the snapshot is
// read back from the database at start): no panic, an error unless the
// length matches the count exactly, and what is accepted round-trips.
func FuzzRestore(f *testing.F) {
	m := nonce.NewMemory()
	for i := range 3 {
		if _, err := m.Spend(f.Context(), idAt(t0, byte(i)), t0.Add(time.Minute)); err != nil {
			f.Fatal(err)
		}
	}
	f.Add(m.Save())
	f.Add(nonce.NewMemory().Save())
	f.Add([]byte{})
	f.Add(header(1, nonce.IDLen-1))
	f.Add(header(wrappingCount(4), 4))
	f.Add(header(1+1<<62, nonce.IDLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		m := nonce.NewMemory()
		panicked, err := restore(m, b)
		if panicked != nil {
			t.Fatalf("Restore(%x) panicked: %v", b, panicked)
		}
		valid := len(b) >= 8 && (len(b)-8)%nonce.IDLen == 0 &&
			binary.BigEndian.Uint64(b[:8]) == uint64((len(b)-8)/nonce.IDLen) //nolint:gosec // small and positive
		if valid != (err == nil) {
			t.Fatalf("Restore(%x) = %v; want an error: %v", b, err, !valid)
		}
		if err != nil {
			if m.Len() != 0 {
				t.Fatalf("refused snapshot left %d entries", m.Len())
			}
			return
		}
		if m.Len() > (len(b)-8)/nonce.IDLen {
			t.Fatalf("Len %d from a snapshot of %d IDs", m.Len(), (len(b)-8)/nonce.IDLen)
		}
		again := nonce.NewMemory()
		if err := again.Restore(m.Save()); err != nil || again.Len() != m.Len() {
			t.Fatalf("round trip: Len %d, %v; want %d", again.Len(), err, m.Len())
		}
	})
}
