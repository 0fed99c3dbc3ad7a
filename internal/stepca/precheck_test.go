package stepca

import (
	"strings"
	"testing"
	"time"
)

func TestPlausibleDNSName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"localhost", true},
		{"api.workers.crank.internal", true},
		{"*.crank.internal", true},
		{"", false},
		{"a..b", false},
		{"trailing.", false},
		{strings.Repeat("a", 64) + ".localhost", false},
		{strings.Repeat("a.", 127) + "bb", false},
	} {
		if got := plausibleDNSName(tc.name); got != tc.ok {
			t.Errorf("plausibleDNSName(%q) = %v, want %v", tc.name, got, tc.ok)
		}
	}
}

func TestCheckLifetime(t *testing.T) {
	t.Parallel()
	spec := &Provisioner{MinDuration: 5 * time.Minute, DefaultDuration: time.Hour, MaxDuration: 24 * time.Hour}
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		life time.Duration
		ok   bool
	}{
		{5 * time.Minute, true},
		{24*time.Hour + time.Minute, true}, // default backdate
		{4 * time.Minute, false},
		{24*time.Hour + 2*time.Minute, false},
		{0, false},
		{-time.Hour, false},
	} {
		err := checkLifetime(spec, nb, nb.Add(tc.life))
		if (err == nil) != tc.ok {
			t.Errorf("lifetime %s: err=%v, want ok=%v", tc.life, err, tc.ok)
		}
	}
}

func TestCheckContacts(t *testing.T) {
	t.Parallel()
	if err := checkContacts([]string{"mailto:ops@example.com", "MAILTO:x@y"}); err != nil {
		t.Error(err)
	}
	if err := checkContacts([]string{"tel:+1555"}); err == nil {
		t.Error("tel: accepted")
	}
}

// FuzzPrecheckParsers feeds arbitrary request bodies to the parsers that run
// before smallstep verifies anything; they must never panic.
func FuzzPrecheckParsers(f *testing.F) {
	f.Add([]byte(`{"protected":"e30","payload":"e30","signature":""}`), "acc")
	f.Add([]byte(`{"protected":"eyJhbGciOiJFUzI1NiIsImtpZCI6Imh0dHBzOi8veC9hY2NvdW50L2FiYyJ9","payload":"eyJjc3IiOiJBQUFBIn0","signature":"AA"}`), "abc")
	f.Add([]byte("garbage"), "")
	f.Fuzz(func(t *testing.T, body []byte, accID string) {
		_ = unverifiedPayload(body)
		_ = peekCSR(body)
		_ = checkKIDMatchesPath(body, accID)
		_ = plausibleDNSName(string(body))
	})
}
