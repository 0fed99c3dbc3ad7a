package stepca

import (
	"net/netip"
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

func TestProvisionerAllows(t *testing.T) {
	t.Parallel()
	p := &Provisioner{Kind: KindACME, AllowedDNSSuffixes: []string{"localhost", ".crank.internal"}, AllowedIPRanges: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}}
	for _, tc := range []struct {
		typ, value string
		ok         bool
	}{
		{"dns", "localhost", true},
		{"dns", "a.localhost", true},
		{"dns", "x.y.localhost", true},
		{"dns", "hello.workers.crank.internal", true},
		{"dns", "crank.internal", true},
		{"dns", "*.crank.internal", true},
		{"dns", "LOCALHOST", true},
		{"dns", "xlocalhost", false},
		{"dns", "example.com", false},
		{"ip", "127.0.0.2", true},
		{"ip", "::1", true},
		{"ip", "::ffff:127.0.0.1", true},
		{"ip", "10.0.0.1", false},
		{"ip", "not-an-ip", false},
	} {
		if got := p.allows(tc.typ, tc.value); got != tc.ok {
			t.Errorf("allows(%s, %q) = %v, want %v", tc.typ, tc.value, got, tc.ok)
		}
	}
	anyDNS := &Provisioner{Kind: KindACME, AllowAnyDNS: true}
	if !anyDNS.allows("dns", "example.com") || anyDNS.allows("ip", "10.9.9.9") {
		t.Error("allowAnyDNS must allow every DNS name and no IP outside allowedIPRanges")
	}
}
