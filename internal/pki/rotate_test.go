package pki

import (
	"bytes"
	"crypto/x509"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func rotateOpts(f Files) RotateOptions {
	return RotateOptions{RootCert: f.RootCert, RootKey: f.RootKey, IntermediateCert: f.IntermediateCert, IntermediateKey: f.IntermediateKey}
}

func TestRotateIntermediate(t *testing.T) {
	t.Parallel()
	ca, f := newTestCA(t)
	oldCert, _ := os.ReadFile(f.IntermediateCert)
	oldKey, _ := os.ReadFile(f.IntermediateKey)
	// A leaf of the old intermediate, issued before the rotation.
	leafPEM, _, err := IssueClientCert(ca, spiffeid.RequireFromString("spiffe://test/admin/op"), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	r, err := RotateIntermediate(rotateOpts(f))
	if err != nil {
		t.Fatalf("RotateIntermediate: %v", err)
	}
	loaded, err := Load(f.RootCert, f.IntermediateCert, f.IntermediateKey)
	if err != nil {
		t.Fatalf("Load after the rotation: %v", err)
	}
	if !bytes.Equal(loaded.Intermediate.Raw, r.New.Raw) || bytes.Equal(r.New.Raw, ca.Intermediate.Raw) {
		t.Fatal("the configured files do not hold the new intermediate")
	}
	if !bytes.Equal(r.Old.Raw, ca.Intermediate.Raw) {
		t.Error("Rotation.Old is not the previous intermediate")
	}
	if bytes.Equal(r.New.RawSubject, r.Old.RawSubject) || !bytes.Equal(r.New.RawIssuer, ca.Root.RawSubject) {
		t.Errorf("new intermediate subject %q issuer %q", r.New.Subject, r.New.Issuer)
	}
	if !r.New.IsCA || !r.New.MaxPathLenZero || r.New.KeyUsage != ca.Intermediate.KeyUsage {
		t.Errorf("new intermediate profile differs: CA %v pathlen0 %v usage %v", r.New.IsCA, r.New.MaxPathLenZero, r.New.KeyUsage)
	}
	modes := map[string]fs.FileMode{f.IntermediateKey: 0o600, r.OldKey: 0o600, r.NewKey: 0o600, f.IntermediateCert: 0o644, r.OldCert: 0o644, r.NewCert: 0o644}
	for p, want := range modes {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %v", p, fi.Mode(), err, want)
		}
	}
	for p, want := range map[string][]byte{r.OldCert: oldCert, r.OldKey: oldKey} {
		if got, _ := os.ReadFile(p); !bytes.Equal(got, want) {
			t.Errorf("%s does not hold the old intermediate's file", p)
		}
	}
	if kept, err := Load(f.RootCert, r.NewCert, r.NewKey); err != nil || !bytes.Equal(kept.Intermediate.Raw, r.New.Raw) {
		t.Errorf("the named copy of the new intermediate does not load: %v", err)
	}
	// Both chains verify during the overlap.
	roots := poolOf(ca.Root)
	oldLeaf := parseChainPEM(t, leafPEM)[0]
	if _, err := oldLeaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: poolOf(r.Old), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("a leaf of the old intermediate no longer verifies: %v", err)
	}
	newPEM, _, err := IssueClientCert(loaded, spiffeid.RequireFromString("spiffe://test/admin/op"), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseChainPEM(t, newPEM)[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: poolOf(r.New), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("a leaf of the new intermediate does not verify: %v", err)
	}

	// A second rotation keeps the first new one as the old one.
	r2, err := RotateIntermediate(rotateOpts(f))
	if err != nil {
		t.Fatalf("second rotation: %v", err)
	}
	if r2.OldCert != r.NewCert || bytes.Equal(r2.New.Raw, r.New.Raw) {
		t.Errorf("second rotation kept the old one at %s, want %s", r2.OldCert, r.NewCert)
	}
}

func TestRotateIntermediateRefusals(t *testing.T) {
	t.Parallel()
	_, otherFiles := newTestCA(t)
	tests := []struct {
		name   string
		mutate func(o *RotateOptions)
		want   error
	}{
		{"root key of another root", func(o *RotateOptions) { o.RootKey = otherFiles.RootKey }, ErrKeyMismatch},
		{"missing root key", func(o *RotateOptions) { o.RootKey = filepath.Join(t.TempDir(), "absent.key") }, fs.ErrNotExist},
		{"root key is a certificate", func(o *RotateOptions) { o.RootKey = o.RootCert }, ErrNoPEM},
		{"intermediate of another root", func(o *RotateOptions) { o.IntermediateCert = otherFiles.IntermediateCert }, nil},
		{"no root key path", func(o *RotateOptions) { o.RootKey = "" }, nil},
		{"negative lifetime", func(o *RotateOptions) { o.Lifetime = -time.Hour }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, f := newTestCA(t)
			before := snapshot(t, filepath.Dir(f.IntermediateCert))
			o := rotateOpts(f)
			tt.mutate(&o)
			_, err := RotateIntermediate(o)
			if err == nil {
				t.Fatal("RotateIntermediate succeeded")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("error %v, want %v", err, tt.want)
			}
			if diff := cmp.Diff(before, snapshot(t, filepath.Dir(f.IntermediateCert))); diff != "" {
				t.Errorf("a refused rotation changed files (-before +after):\n%s", diff)
			}
		})
	}
}

func TestServerCertsSwitch(t *testing.T) {
	t.Parallel()
	s, ca, _ := newTestServerCerts(t)
	before := mustGet(t, s)
	other, _ := newTestCA(t)
	for _, bad := range []*CA{nil, {Root: ca.Root}, other} {
		if err := s.Switch(bad); err == nil {
			t.Errorf("Switch to %v succeeded", bad)
		}
	}
	if err := s.Switch(ca); err != nil {
		t.Errorf("Switch to the same CA: %v", err)
	}
	if !bytes.Equal(mustGet(t, s).Certificate[0], before.Certificate[0]) {
		t.Error("a refused Switch, or one to the same intermediate, reissued")
	}
}

func TestServerCertsSwitchToRotated(t *testing.T) {
	t.Parallel()
	ca, f := newTestCA(t)
	s, err := NewServerCerts(ServerCertsConfig{CA: ca, IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := RotateIntermediate(rotateOpts(f))
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := Load(f.RootCert, f.IntermediateCert, f.IntermediateKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Switch(rotated); err != nil {
		t.Fatalf("Switch: %v", err)
	}
	got := mustGet(t, s)
	if !bytes.Equal(got.Certificate[1], r.New.Raw) || got.Leaf.CheckSignatureFrom(r.New) != nil {
		t.Error("after Switch the server certificate is not from the new intermediate")
	}
}

func TestRenewClientCert(t *testing.T) {
	t.Parallel()
	ca, _ := newTestCA(t)
	id := spiffeid.RequireFromString("spiffe://test/admin/op")
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "op.crt"), filepath.Join(dir, "op.key")
	now := time.Now()
	certPEM, keyPEM, err := IssueClientCert(ca, id, 10*24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certPath, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	old, gotID, err := ReadClientCert(certPath)
	if err != nil || gotID != id {
		t.Fatalf("ReadClientCert: %v %v", gotID, err)
	}
	if due, left := ClientCertDue(old, now); !due || left > 10*24*time.Hour {
		t.Errorf("a 10-day certificate: due %v, left %s", due, left)
	}

	leaf, err := RenewClientCert(ca, certPath, keyPath, 90*24*time.Hour, now)
	if err != nil {
		t.Fatalf("RenewClientCert: %v", err)
	}
	if leaf.SerialNumber.Cmp(old.SerialNumber) == 0 || leaf.URIs[0].String() != id.String() {
		t.Errorf("renewed certificate: serial %v, URI %v", leaf.SerialNumber, leaf.URIs)
	}
	if due, _ := ClientCertDue(leaf, now); due {
		t.Error("a 90-day certificate is reported due")
	}
	newKey, _ := os.ReadFile(keyPath)
	if bytes.Equal(newKey, keyPEM) {
		t.Error("the key was not replaced")
	}
	fi, err := os.Stat(keyPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v (%v), want 0600", fi.Mode(), err)
	}
	newCert, _ := os.ReadFile(certPath)
	chain, key := parseClientCert(t, newCert, newKey)
	if !publicKeysEqual(chain[0].PublicKey, key.Public()) {
		t.Error("the renewed certificate and key do not match")
	}

	// A certificate of another CA is not renewed, and nothing changes.
	other, _ := newTestCA(t)
	foreignPEM, foreignKey, _ := IssueClientCert(other, id, time.Hour, now)
	fc, fk := filepath.Join(dir, "foreign.crt"), filepath.Join(dir, "foreign.key")
	_ = os.WriteFile(fc, foreignPEM, 0o644)
	_ = os.WriteFile(fk, foreignKey, 0o600)
	if _, err := RenewClientCert(ca, fc, fk, time.Hour, now); err == nil {
		t.Error("renewed a certificate of another CA")
	}
	if got, _ := os.ReadFile(fk); !bytes.Equal(got, foreignKey) {
		t.Error("a refused renewal replaced the key")
	}
}

// parseChainPEM parses every certificate of a PEM bundle.
func parseChainPEM(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	p := filepath.Join(t.TempDir(), "chain.pem")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	certs, err := readCerts(p)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}
