package provisioner

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"testing"
)

func TestNamePolicyCheck(t *testing.T) {
	t.Parallel()
	p := NamePolicy{
		AllowedDNSSuffixes: []string{"localhost", ".crank.internal"},
		DeniedDNSSuffixes:  []string{"workers.crank.internal", "gw.crank.internal"},
		AllowedIPRanges:    []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
		DeniedIPs:          []netip.Addr{netip.MustParseAddr("127.0.0.9")},
	}
	for _, tc := range []struct {
		typ, value string
		ok         bool
	}{
		{"dns", "localhost", true},
		{"dns", "a.localhost", true},
		{"dns", "x.y.localhost", true},
		{"dns", "crank.internal", true},
		{"dns", "*.crank.internal", true},
		{"dns", "LOCALHOST", true},
		{"dns", "hello.workers.crank.internal", false},
		{"dns", "a.b.workers.crank.internal", false},
		{"dns", "workers.crank.internal", false},
		{"dns", "*.workers.crank.internal", false},
		{"dns", "WORKERS.crank.internal", false},
		{"dns", "gw.crank.internal", false},
		{"dns", "xlocalhost", false},
		{"dns", "example.com", false},
		{"dns", "0.0.0.0", false},
		{"dns", "a..localhost", false},
		{"dns", "a.localhost.", false},
		{"dns", "*.*.localhost", false},
		{"dns", "a_b.localhost", false},
		{"dns", "", false},
		{"dns", "\u212a.localhost", false},
		{"dns", "a.wor\u212aers.crank.internal", false},
		{"dns", strings.Repeat("a.", 200) + "localhost", false},
		{"ip", "127.0.0.2", true},
		{"ip", "::1", true},
		{"ip", "::ffff:127.0.0.1", true},
		{"ip", "127.0.0.9", false},
		{"ip", "::ffff:127.0.0.9", false},
		{"ip", "0.0.0.0", false},
		{"ip", "10.0.0.1", false},
		{"ip", "fe80::1%eth0", false},
		{"ip", "not-an-ip", false},
		{"permanent-identifier", "x", false},
		{"", "localhost", false},
	} {
		err := p.Check(tc.typ, tc.value)
		if (err == nil) != tc.ok {
			t.Errorf("Check(%s, %q) = %v, want ok=%v", tc.typ, tc.value, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrNameNotAllowed) {
			t.Errorf("Check(%s, %q): %v does not wrap ErrNameNotAllowed", tc.typ, tc.value, err)
		}
	}
	anyDNS := NamePolicy{AllowAnyDNS: true, DeniedDNSSuffixes: []string{"crank.internal"}}
	if anyDNS.Check("dns", "example.com") != nil || anyDNS.Check("ip", "10.9.9.9") == nil || anyDNS.Check("dns", "a.crank.internal") == nil {
		t.Error("allowAnyDNS must allow every DNS name except denied ones, and no IP outside allowedIPRanges")
	}
}

func TestNamePolicyCheckCertificate(t *testing.T) {
	t.Parallel()
	p := NamePolicy{AllowedDNSSuffixes: []string{"localhost"}, AllowedIPRanges: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	spiffe, _ := url.Parse("spiffe://crank.internal/worker/api")
	for _, tc := range []struct {
		name string
		cert x509.Certificate
		ok   bool
	}{
		{"dns and ip", x509.Certificate{DNSNames: []string{"a.localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}, true},
		{"cn repeats a san", x509.Certificate{Subject: pkix.Name{CommonName: "a.localhost"}, DNSNames: []string{"a.localhost"}}, true},
		{"cn not a san", x509.Certificate{Subject: pkix.Name{CommonName: "evil.example"}, DNSNames: []string{"a.localhost"}}, false},
		{"uri", x509.Certificate{DNSNames: []string{"a.localhost"}, URIs: []*url.URL{spiffe}}, false},
		{"email", x509.Certificate{DNSNames: []string{"a.localhost"}, EmailAddresses: []string{"a@b"}}, false},
		{"foreign dns", x509.Certificate{DNSNames: []string{"a.localhost", "example.com"}}, false},
		{"foreign ip", x509.Certificate{IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}, false},
		{"no names", x509.Certificate{}, false},
	} {
		err := p.CheckCertificate(&tc.cert)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func FuzzNamePolicyCheck(f *testing.F) {
	f.Add("dns", "a.localhost")
	f.Add("ip", "::ffff:127.0.0.1")
	f.Add("dns", "*.workers.crank.internal")
	p := NamePolicy{AllowedDNSSuffixes: []string{"localhost", "crank.internal"}, DeniedDNSSuffixes: []string{"workers.crank.internal"},
		AllowedIPRanges: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	f.Fuzz(func(t *testing.T, typ, value string) {
		if p.Check(typ, value) != nil {
			return
		}
		// Whatever is admitted is never inside the denied namespace.
		name := strings.TrimPrefix(strings.ToLower(value), "*.")
		if typ == "dns" && (name == "workers.crank.internal" || strings.HasSuffix(name, ".workers.crank.internal")) {
			t.Fatalf("admitted %q inside a denied namespace", value)
		}
	})
}
