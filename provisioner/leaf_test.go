package provisioner_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/provisioner"
	"github.com/google/go-cmp/cmp"
)

var (
	oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidKU  = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidEKU = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidBC  = asn1.ObjectIdentifier{2, 5, 29, 19}
)

// hostileTemplate is what a greedy CSR could turn into: extra URIs, e-mail,
// CA powers and a SAN extension smuggled through ExtraExtensions.
func hostileTemplate(t *testing.T, cn string) *x509.Certificate {
	t.Helper()
	evilSAN, err := asn1.Marshal([]asn1.RawValue{{Tag: 2, Class: asn1.ClassContextSpecific, Bytes: []byte("evil.example")}})
	if err != nil {
		t.Fatal(err)
	}
	custom := pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: []byte{0x05, 0x00}}
	return &x509.Certificate{
		SerialNumber:          big.NewInt(42),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"Evil Corp"}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: "crank.internal", Path: "/worker/admin"}, {Scheme: "https", Host: "evil.example"}},
		DNSNames:              []string{"evil.example", "api.workers.crank.internal"},
		EmailAddresses:        []string{"root@evil.example"},
		IPAddresses:           []net.IP{net.ParseIP("192.0.2.1")},
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            3,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{{1, 2, 3}},
		PermittedDNSDomains:   []string{"example"},
		ExtraExtensions: []pkix.Extension{
			{Id: oidSAN, Value: evilSAN},
			{Id: oidBC, Critical: true, Value: []byte{0x30, 0x03, 0x01, 0x01, 0xff}},
			custom,
		},
	}
}

func TestApplyLeaf(t *testing.T) {
	t.Parallel()
	id := provisioner.Identity{
		Worker:   "api",
		SPIFFEID: mustID(t, "spiffe://crank.internal/worker/api"),
		DNSNames: []string{"api.workers.crank.internal"},
		IPs:      []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")},
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "throwaway CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name        string
		cn          string
		wantSubject pkix.Name
	}{
		{name: "CN within identity is kept", cn: "API.workers.crank.internal", wantSubject: pkix.Name{CommonName: "api.workers.crank.internal"}},
		{name: "foreign CN gives empty subject", cn: "evil.example"},
		{name: "empty CN", cn: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tmpl := hostileTemplate(t, tt.cn)
			if err := id.ApplyLeaf(tmpl); err != nil {
				t.Fatalf("ApplyLeaf: %v", err)
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, leafKey.Public(), caKey)
			if err != nil {
				t.Fatalf("CreateCertificate: %v", err)
			}
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatalf("ParseCertificate: %v", err)
			}

			var gotURIs []string
			for _, u := range cert.URIs {
				gotURIs = append(gotURIs, u.String())
			}
			var gotIPs []string
			for _, ip := range cert.IPAddresses {
				gotIPs = append(gotIPs, ip.String())
			}
			got := map[string]any{
				"uris": gotURIs, "dns": cert.DNSNames, "ips": gotIPs, "emails": cert.EmailAddresses,
				"ku": cert.KeyUsage, "eku": cert.ExtKeyUsage, "unknownEKU": cert.UnknownExtKeyUsage,
				"bcValid": cert.BasicConstraintsValid, "isCA": cert.IsCA, "maxPathLen": cert.MaxPathLen,
				"permittedDNS": cert.PermittedDNSDomains,
			}
			want := map[string]any{
				"uris": []string{"spiffe://crank.internal/worker/api"}, "dns": []string{"api.workers.crank.internal"},
				"ips": []string{"10.0.0.1", "fd00::1"}, "emails": []string(nil),
				"ku": x509.KeyUsageDigitalSignature, "eku": []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
				"unknownEKU": []asn1.ObjectIdentifier(nil),
				"bcValid":    true, "isCA": false, "maxPathLen": -1,
				"permittedDNS": []string(nil),
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("leaf profile mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantSubject.String(), cert.Subject.String()); diff != "" {
				t.Errorf("subject mismatch (-want +got):\n%s", diff)
			}

			counts := map[string]int{}
			critical := map[string]bool{}
			for _, ext := range cert.Extensions {
				counts[ext.Id.String()]++
				critical[ext.Id.String()] = ext.Critical
			}
			for _, oid := range []asn1.ObjectIdentifier{oidSAN, oidKU, oidEKU, oidBC} {
				if counts[oid.String()] != 1 {
					t.Errorf("extension %v appears %d times, want 1", oid, counts[oid.String()])
				}
			}
			if !critical[oidKU.String()] {
				t.Error("key usage extension is not critical")
			}
			if tt.wantSubject.CommonName == "" && !critical[oidSAN.String()] {
				t.Error("SAN must be critical when the subject is empty")
			}
			if counts["1.3.6.1.4.1.99999.1"] != 1 {
				t.Error("unrelated extra extension was dropped")
			}
			if len(cert.Subject.Organization) != 0 {
				t.Errorf("subject organization kept: %v", cert.Subject.Organization)
			}
			if err := cert.CheckSignatureFrom(ca); err != nil {
				t.Errorf("CheckSignatureFrom: %v", err)
			}
		})
	}
}

func TestApplyLeafRawSubject(t *testing.T) {
	t.Parallel()
	id := provisioner.Identity{Worker: "a", SPIFFEID: mustID(t, "spiffe://crank.internal/worker/a")}
	raw, err := asn1.Marshal(pkix.Name{CommonName: "evil"}.ToRDNSequence())
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{RawSubject: raw}
	if err := id.ApplyLeaf(tmpl); err != nil {
		t.Fatal(err)
	}
	if tmpl.RawSubject != nil {
		t.Error("RawSubject kept; it would override Subject")
	}
}

func TestApplyLeafUnusableIdentity(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		id   provisioner.Identity
		cert *x509.Certificate
	}{
		{name: "zero SPIFFE ID", id: provisioner.Identity{Worker: "a", DNSNames: []string{"a.example"}}, cert: &x509.Certificate{}},
		{name: "nil template", id: provisioner.Identity{Worker: "a", SPIFFEID: mustID(t, "spiffe://crank.internal/worker/a")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := tt.id.ApplyLeaf(tt.cert); !errors.Is(err, provisioner.ErrInvalidIdentity) {
				t.Errorf("ApplyLeaf() = %v, want ErrInvalidIdentity", err)
			}
		})
	}
}
