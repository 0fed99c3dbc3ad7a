package stepca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
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
		if jws, err := parseFlatJWS(body); err == nil {
			_ = checkKIDMatchesPath(jws.kid, accID)
		}
		_ = plausibleDNSName(string(body))
	})
}

// FuzzDecodeNewOrder: the strict new-order decoder never panics, and what
// it accepts is something smallstep's lenient decoder reads the same way
// (same identifiers), so the two cannot disagree about what was ordered.
func FuzzDecodeNewOrder(f *testing.F) {
	for _, s := range []string{
		`{"identifiers":[{"type":"dns","value":"a.localhost"}]}`,
		`{"identifiers":[{"type":"dns","value":"a.localhost"}],"replaces":1}`,
		`{"identifiers":[{"type":"ip","value":"127.0.0.1"}],"notBefore":"2026-01-01T00:00:00Z"}`,
		`{"identifiers":[{"type":"dns","value":"a"}],"Identifiers":[{"type":"dns","value":"b"}]}`,
		`{"identifiers":[{"type":"dns","value":"a","value":"b"}]}`,
		`{"identifiers":[]}`, `[]`, `{}`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, raw []byte) {
		req, err := decodeNewOrder(raw, 100, now)
		if err != nil {
			return
		}
		var lenient struct {
			Identifiers []struct {
				Type  string `json:"type"`
				Value string `json:"value"`
			} `json:"identifiers"`
		}
		if err := json.Unmarshal(raw, &lenient); err != nil {
			t.Fatalf("strict decoder accepted what encoding/json refuses: %v", err)
		}
		if len(lenient.Identifiers) != len(req.Identifiers) {
			t.Fatalf("identifier count differs: strict %d, lenient %d", len(req.Identifiers), len(lenient.Identifiers))
		}
		for i, id := range req.Identifiers {
			if id.Type != lenient.Identifiers[i].Type || id.Value != lenient.Identifiers[i].Value {
				t.Fatalf("identifier %d differs: strict %+v, lenient %+v", i, id, lenient.Identifiers[i])
			}
		}
	})
}

// FuzzDecodeFinalize: CSR decoding and checks never panic, and an accepted
// CSR always carries an accepted key.
func FuzzDecodeFinalize(f *testing.F) {
	f.Add([]byte(`{"csr":"MIIB"}`))
	f.Add([]byte(`{"csr":1}`))
	f.Add([]byte(`{"csr":"` + base64.RawURLEncoding.EncodeToString(testCSR(f)) + `"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		csr, err := decodeFinalize(raw)
		if err != nil {
			return
		}
		if err := checkLeafKey(csr.PublicKey); err != nil {
			t.Fatalf("accepted a CSR with a refused key: %v", err)
		}
	})
}

// FuzzDecodeOtherPayloads covers the remaining strict decoders.
func FuzzDecodeOtherPayloads(f *testing.F) {
	f.Add([]byte(`{"contact":["mailto:a@b"],"termsOfServiceAgreed":true}`))
	f.Add([]byte(`{"certificate":"AAAA","reason":1}`))
	f.Add([]byte(`{"status":"deactivated"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		_, _, _, _ = decodeNewAccount(raw)
		_, _ = decodeAccountUpdate(raw)
		_ = decodeRevocation(raw)
		_ = checkObject(raw, "a")
	})
}

func testCSR(tb testing.TB) []byte {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{"a.localhost"}}, key)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}
