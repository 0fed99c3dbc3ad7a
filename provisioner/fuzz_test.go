package provisioner_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/crank-platform/crank-ca/provisioner"
)

// fuzzKey is fixed so that seeds minted from it stay valid across runs and
// the fuzzer can mutate genuine tokens.
func fuzzKey(t testing.TB) *provisioner.TokenKey {
	t.Helper()
	k, err := provisioner.ParseTokenKey([]byte("Y3JhbmstY2EgZnV6eiBrZXkgLSBub3QgYSByZWFsIHNlY3JldCEh"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// far future so seeds verify for decades; fuzzNow precedes it.
var (
	fuzzExpiry = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	fuzzNow    = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
)

func FuzzVerify(f *testing.F) {
	k := fuzzKey(f)
	for _, c := range []provisioner.TokenClaims{
		{Provisioner: "workers", Worker: "api", ExpiresAt: fuzzExpiry, Nonce: "AAAAAAAAAAAAAAAAAAAAAA"},
		{Provisioner: "acme", ExpiresAt: fuzzExpiry, Nonce: "_____________________w"},
	} {
		tok, err := k.Mint(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(tok.KID)
		f.Add(tok.Encode())
	}
	for _, s := range []string{"", ".", "ct1..", "ct1.e30.AAAAAAAAAAAAAAAAAAAAAA", "ct1.%%%.x", strings.Repeat("ct1.", 300)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, kid string) {
		c, key, err := k.Verify(kid, fuzzNow)
		if err != nil {
			if key != nil || !cmp.Equal(c, provisioner.TokenClaims{}) {
				t.Fatalf("Verify(%q) returned data with error %v", kid, err)
			}
			return
		}
		// A KID that verifies must be exactly the one Mint produces for its
		// claims: one spelling per token, so single-use stores hold.
		tok, err := k.Mint(c)
		if err != nil {
			t.Fatalf("verified claims %+v cannot be re-minted: %v", c, err)
		}
		if tok.KID != kid || !bytes.Equal(tok.HMACKey, key) {
			t.Fatalf("Verify accepted non-canonical KID %q (canonical %q)", kid, tok.KID)
		}
		if c.Provisioner == "" || !c.ExpiresAt.After(fuzzNow) {
			t.Fatalf("Verify accepted bad claims %+v", c)
		}
	})
}

func FuzzParseToken(f *testing.F) {
	k := fuzzKey(f)
	tok, err := k.Mint(provisioner.TokenClaims{Provisioner: "workers", Worker: "api", ExpiresAt: fuzzExpiry, Nonce: "AAAAAAAAAAAAAAAAAAAAAA"})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{tok.Encode(), tok.KID, "", "...", "ct1.a.b.c", tok.Encode() + "=", tok.Encode() + ".x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		kid, key, err := provisioner.ParseToken(s)
		if err != nil {
			if kid != "" || key != nil {
				t.Fatalf("ParseToken(%q) returned data with error %v", s, err)
			}
			return
		}
		if len(key) != 32 {
			t.Fatalf("ParseToken(%q) key length %d", s, len(key))
		}
		if got := len(strings.Split(s, ".")); got != 4 {
			t.Fatalf("ParseToken(%q) accepted %d parts", s, got)
		}
		// Round trip: re-encoding gives back the input exactly.
		re := provisioner.Token{KID: kid, HMACKey: key}.Encode()
		if re != s {
			t.Fatalf("ParseToken(%q) round-trips to %q", s, re)
		}
	})
}

func FuzzLookup(f *testing.F) {
	cfg := defaultConfig()
	cfg.DNSTemplates = append(cfg.DNSTemplates, "{worker}.{worker}.x.{trustDomain}")
	cfg.Workers = []provisioner.WorkerConfig{{Name: "db", DNSNames: []string{"db.crank.internal"}, IPs: []string{"10.0.0.1"}}}
	ids := mustIdentities(f, cfg)
	td := spiffeid.RequireTrustDomainFromString("crank.internal")
	for _, s := range []string{"api", "db", "", "A", "a.b", "../etc", "-a", "a-", strings.Repeat("z", 63), strings.Repeat("z", 64), "ünï", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, worker string) {
		id, err := ids.Lookup(worker)
		if err != nil {
			return
		}
		if id.Worker != worker {
			t.Fatalf("Lookup(%q).Worker = %q", worker, id.Worker)
		}
		parsed, err := spiffeid.FromString(id.SPIFFEID.String())
		if err != nil || parsed != id.SPIFFEID || !parsed.MemberOf(td) {
			t.Fatalf("Lookup(%q) SPIFFE ID %q invalid: %v", worker, id.SPIFFEID, err)
		}
		for i, n := range id.DNSNames {
			if n != strings.ToLower(n) || strings.Contains(n, "*") || len(n) > 253 || (i > 0 && id.DNSNames[i-1] >= n) {
				t.Fatalf("Lookup(%q) DNS names not valid/sorted/unique: %q", worker, id.DNSNames)
			}
			for _, l := range strings.Split(n, ".") {
				if l == "" || len(l) > 63 || strings.Trim(l, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
					t.Fatalf("Lookup(%q) bad label %q in %q", worker, l, n)
				}
			}
			if !id.Covers("dns", n) {
				t.Fatalf("identity does not cover its own name %q", n)
			}
		}
		for _, ip := range id.IPs {
			if !id.Covers("ip", ip.String()) {
				t.Fatalf("identity does not cover its own IP %s", ip)
			}
		}
	})
}

func FuzzCovers(f *testing.F) {
	ids := mustIdentities(f, provisioner.IdentitiesConfig{
		TrustDomain: "crank.internal",
		Workers:     []provisioner.WorkerConfig{{Name: "db", DNSNames: []string{"db.crank.internal"}, IPs: []string{"10.0.0.1", "fd00::1"}}},
	})
	id, err := ids.Lookup("db")
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range [][2]string{{"dns", "DB.crank.internal"}, {"ip", "::ffff:10.0.0.1"}, {"ip", "fd00:0::1"}, {"dns", "*.crank.internal"}, {"ip", "10.0.0.1%x"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, typ, value string) {
		if !id.Covers(typ, value) {
			return
		}
		if strings.Contains(value, "*") {
			t.Fatalf("wildcard %q covered", value)
		}
		if typ != "dns" && typ != "ip" {
			t.Fatalf("unknown type %q covered", typ)
		}
	})
}

func FuzzParseTokenKey(f *testing.F) {
	f.Add([]byte("Y3JhbmstY2EgZnV6eiBrZXkgLSBub3QgYSByZWFsIHNlY3JldCEh\n"))
	f.Add([]byte(""))
	f.Add([]byte("===="))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := provisioner.ParseTokenKey(b)
		if err != nil {
			return
		}
		text, err := k.MarshalText()
		if err != nil {
			t.Fatalf("MarshalText: %v", err)
		}
		k2, err := provisioner.ParseTokenKey(text)
		if err != nil {
			t.Fatalf("own MarshalText output %q does not parse: %v", text, err)
		}
		if t2, _ := k2.MarshalText(); !bytes.Equal(text, t2) {
			t.Fatalf("MarshalText not stable: %q vs %q", text, t2)
		}
	})
}
