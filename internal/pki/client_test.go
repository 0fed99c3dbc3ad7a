package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// parseClientCert decodes IssueClientCert's output: the chain in order and
// the private key.
func parseClientCert(t *testing.T, certPEM, keyPEM []byte) ([]*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	var chain []*x509.Certificate
	for rest := certPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			t.Fatalf("certPEM block type %q, want CERTIFICATE", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatalf("parse certificate: %v", err)
		}
		chain = append(chain, c)
	}
	block, rest := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" || len(strings.TrimSpace(string(rest))) != 0 {
		t.Fatalf("keyPEM is not exactly one PRIVATE KEY block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("parse PKCS#8 key: %v", err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		t.Fatalf("key is %T, want P-256 *ecdsa.PrivateKey", k)
	}
	return chain, ec
}

func TestIssueClientCert(t *testing.T) {
	t.Parallel()
	ca, _ := newTestCA(t)
	now := time.Now()

	tests := []struct {
		name     string
		id       string
		lifetime time.Duration
		wantCN   string
		// wantNotAfter is the expected NotAfter; zero means now+lifetime.
		wantNotAfter time.Time
	}{
		{name: "admin", id: "spiffe://crank.internal/admin/operator", lifetime: time.Hour, wantCN: "operator"},
		{name: "worker", id: "spiffe://crank.internal/worker/w1", lifetime: 24 * time.Hour, wantCN: "w1"},
		{name: "trust domain only", id: "spiffe://crank.internal", lifetime: time.Hour, wantCN: "crank.internal"},
		{
			name: "clamped to intermediate", id: "spiffe://crank.internal/admin/x",
			lifetime: 100 * 365 * 24 * time.Hour, wantCN: "x", wantNotAfter: ca.Intermediate.NotAfter,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id := spiffeid.RequireFromString(tt.id)
			certPEM, keyPEM, err := IssueClientCert(ca, id, tt.lifetime, now)
			if err != nil {
				t.Fatalf("IssueClientCert: %v", err)
			}
			chain, key := parseClientCert(t, certPEM, keyPEM)
			if len(chain) != 2 {
				t.Fatalf("certPEM holds %d certificates, want leaf + intermediate", len(chain))
			}
			leaf := chain[0]
			if !chain[1].Equal(ca.Intermediate) {
				t.Error("second certificate is not the intermediate")
			}
			if !publicKeysEqual(key.Public(), leaf.PublicKey) {
				t.Error("key does not match leaf")
			}

			wantURIs := []string{tt.id}
			var gotURIs []string
			for _, u := range leaf.URIs {
				gotURIs = append(gotURIs, u.String())
			}
			if diff := cmp.Diff(wantURIs, gotURIs); diff != "" {
				t.Errorf("URI SANs (-want +got):\n%s", diff)
			}
			if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
				t.Errorf("unexpected SANs: dns=%v ip=%v email=%v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
			}
			if diff := cmp.Diff([]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, leaf.ExtKeyUsage); diff != "" {
				t.Errorf("ExtKeyUsage (-want +got):\n%s", diff)
			}
			if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("KeyUsage = %v, want DigitalSignature", leaf.KeyUsage)
			}
			if !leaf.BasicConstraintsValid || leaf.IsCA {
				t.Error("leaf must carry basic constraints with cA=false")
			}
			if leaf.Subject.CommonName != tt.wantCN {
				t.Errorf("CN = %q, want %q", leaf.Subject.CommonName, tt.wantCN)
			}
			if want := now.Add(-time.Minute).Truncate(time.Second); !leaf.NotBefore.Equal(want) {
				t.Errorf("NotBefore = %s, want %s", leaf.NotBefore, want)
			}
			wantNotAfter := tt.wantNotAfter
			if wantNotAfter.IsZero() {
				wantNotAfter = now.Add(tt.lifetime).Truncate(time.Second)
			}
			if !leaf.NotAfter.Equal(wantNotAfter) {
				t.Errorf("NotAfter = %s, want %s", leaf.NotAfter, wantNotAfter)
			}

			opts := x509.VerifyOptions{Roots: poolOf(ca.Root), Intermediates: poolOf(chain[1]), CurrentTime: now}
			opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
			if _, err := leaf.Verify(opts); err != nil {
				t.Errorf("verify for clientAuth: %v", err)
			}
			opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			if _, err := leaf.Verify(opts); err == nil {
				t.Error("leaf verifies for serverAuth; want it refused")
			}

			// The pair loads as a TLS client certificate.
			if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
				t.Errorf("tls.X509KeyPair: %v", err)
			}
		})
	}
}

func TestIssueClientCertErrors(t *testing.T) {
	t.Parallel()
	ca, _ := newTestCA(t)
	id := spiffeid.RequireFromString("spiffe://crank.internal/admin/operator")
	now := time.Now()

	tests := []struct {
		name     string
		ca       *CA
		id       spiffeid.ID
		lifetime time.Duration
		now      time.Time
		wantErr  string
	}{
		{name: "nil CA", ca: nil, id: id, lifetime: time.Hour, now: now, wantErr: "CA with intermediate"},
		{name: "CA without key", ca: &CA{Root: ca.Root, Intermediate: ca.Intermediate}, id: id, lifetime: time.Hour, now: now, wantErr: "CA with intermediate"},
		{name: "zero ID", ca: ca, lifetime: time.Hour, now: now, wantErr: "SPIFFE ID is required"},
		{name: "zero lifetime", ca: ca, id: id, now: now, wantErr: "must be positive"},
		{name: "negative lifetime", ca: ca, id: id, lifetime: -time.Hour, now: now, wantErr: "must be positive"},
		{name: "intermediate expired", ca: ca, id: id, lifetime: time.Hour, now: ca.Intermediate.NotAfter, wantErr: "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			certPEM, keyPEM, err := IssueClientCert(tt.ca, tt.id, tt.lifetime, tt.now)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("IssueClientCert error = %v, want containing %q", err, tt.wantErr)
			}
			if certPEM != nil || keyPEM != nil {
				t.Error("output returned along with an error")
			}
		})
	}
}

// An expired client certificate (issued with a past now) must not verify.
func TestIssueClientCertExpired(t *testing.T) {
	t.Parallel()
	ca, _ := newTestCA(t)
	now := time.Now()
	id := spiffeid.RequireFromString("spiffe://crank.internal/admin/operator")
	certPEM, keyPEM, err := IssueClientCert(ca, id, time.Hour, now.Add(-2*time.Hour))
	if err != nil {
		t.Fatalf("IssueClientCert: %v", err)
	}
	chain, _ := parseClientCert(t, certPEM, keyPEM)
	_, err = chain[0].Verify(x509.VerifyOptions{
		Roots: poolOf(ca.Root), Intermediates: poolOf(chain[1]), CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err == nil {
		t.Fatal("expired client certificate verified")
	}
}

func poolOf(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}
