package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// newTestCA creates a CA in a fresh temp directory.
func newTestCA(t *testing.T) (*CA, Files) {
	t.Helper()
	f := DefaultFiles(t.TempDir())
	ca, err := Create(f, CreateOptions{Name: "Test"})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return ca, f
}

func TestDefaultFiles(t *testing.T) {
	t.Parallel()
	got := DefaultFiles("/srv/ca")
	want := Files{
		RootCert:         "/srv/ca/pki/root.crt",
		RootKey:          "/srv/ca/pki/root.key",
		IntermediateCert: "/srv/ca/pki/intermediate.crt",
		IntermediateKey:  "/srv/ca/pki/intermediate.key",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("DefaultFiles (-want +got):\n%s", diff)
	}
}

func TestCreateLoadRoundTrip(t *testing.T) {
	t.Parallel()
	ca, f := newTestCA(t)

	loaded, err := Load(f.RootCert, f.IntermediateCert, f.IntermediateKey)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !bytes.Equal(loaded.Root.Raw, ca.Root.Raw) {
		t.Error("loaded root differs from created root")
	}
	if !bytes.Equal(loaded.Intermediate.Raw, ca.Intermediate.Raw) {
		t.Error("loaded intermediate differs from created intermediate")
	}
	if !publicKeysEqual(loaded.IntermediateKey.Public(), ca.IntermediateKey.Public()) {
		t.Error("loaded intermediate key differs from created key")
	}
	if loaded.Fingerprint() != ca.Fingerprint() {
		t.Errorf("fingerprint %s, want %s", loaded.Fingerprint(), ca.Fingerprint())
	}

	// The root key on disk must belong to the root certificate.
	rootKey, err := readKey(f.RootKey)
	if err != nil {
		t.Fatalf("read root key: %v", err)
	}
	if !publicKeysEqual(rootKey.Public(), ca.Root.PublicKey) {
		t.Error("root key file does not match root certificate")
	}
	if _, ok := rootKey.(*ecdsa.PrivateKey); !ok {
		t.Errorf("root key is %T, want *ecdsa.PrivateKey", rootKey)
	}
	raw, err := os.ReadFile(f.RootKey)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(raw); b == nil || b.Type != "EC PRIVATE KEY" {
		t.Errorf("root key PEM type is not EC PRIVATE KEY")
	}
}

func TestCreateCertificateProfile(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	ca, err := Create(DefaultFiles(t.TempDir()), CreateOptions{Name: "Crank", Now: func() time.Time { return now }})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}

	type profile struct {
		CN             string
		IsCA           bool
		MaxPathLen     int
		MaxPathLenZero bool
		KeyUsage       x509.KeyUsage
		NotAfter       time.Time
		Algo           x509.PublicKeyAlgorithm
		Curve          string
		Issuer         string
	}
	describe := func(c *x509.Certificate) profile {
		return profile{
			CN: c.Subject.CommonName, IsCA: c.IsCA && c.BasicConstraintsValid,
			MaxPathLen: c.MaxPathLen, MaxPathLenZero: c.MaxPathLenZero,
			KeyUsage: c.KeyUsage, NotAfter: c.NotAfter.UTC(), Algo: c.PublicKeyAlgorithm,
			Curve:  c.PublicKey.(*ecdsa.PublicKey).Curve.Params().Name,
			Issuer: c.Issuer.CommonName,
		}
	}
	tests := []struct {
		name string
		cert *x509.Certificate
		want profile
	}{
		{"root", ca.Root, profile{
			CN: "Crank Root CA", IsCA: true, MaxPathLen: 1,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			NotAfter: now.Add(87600 * time.Hour), Algo: x509.ECDSA, Curve: "P-256",
			Issuer: "Crank Root CA",
		}},
		{"intermediate", ca.Intermediate, profile{
			CN: "Crank Intermediate CA", IsCA: true, MaxPathLen: 0, MaxPathLenZero: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
			NotAfter: now.Add(5 * 8760 * time.Hour), Algo: x509.ECDSA, Curve: "P-256",
			Issuer: "Crank Root CA",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, describe(tt.cert)); diff != "" {
				t.Errorf("profile (-want +got):\n%s", diff)
			}
			if !tt.cert.NotBefore.Before(now) {
				t.Errorf("NotBefore %s not backdated before %s", tt.cert.NotBefore, now)
			}
		})
	}

	if err := ca.Root.CheckSignatureFrom(ca.Root); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	if err := ca.Intermediate.CheckSignatureFrom(ca.Root); err != nil {
		t.Errorf("intermediate not signed by root: %v", err)
	}
	if !bytes.Equal(ca.Intermediate.AuthorityKeyId, ca.Root.SubjectKeyId) || len(ca.Root.SubjectKeyId) == 0 {
		t.Error("intermediate AuthorityKeyId does not match root SubjectKeyId")
	}
}

func TestCreateClampsIntermediateToRoot(t *testing.T) {
	t.Parallel()
	ca, err := Create(DefaultFiles(t.TempDir()), CreateOptions{
		RootLifetime:         48 * time.Hour,
		IntermediateLifetime: 72 * time.Hour,
	})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if !ca.Intermediate.NotAfter.Equal(ca.Root.NotAfter) {
		t.Errorf("intermediate NotAfter %s, want clamped to root %s", ca.Intermediate.NotAfter, ca.Root.NotAfter)
	}
	if got, want := ca.Root.Subject.CommonName, DefaultName+" Root CA"; got != want {
		t.Errorf("default root CN %q, want %q", got, want)
	}
}

func TestCreateFileModes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := DefaultFiles(dir)
	if _, err := Create(f, CreateOptions{}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	tests := []struct {
		path string
		want fs.FileMode
	}{
		{filepath.Join(dir, "pki"), fs.ModeDir | 0o700},
		{f.RootKey, 0o600},
		{f.IntermediateKey, 0o600},
		{f.RootCert, 0o644},
		{f.IntermediateCert, 0o644},
	}
	for _, tt := range tests {
		fi, err := os.Stat(tt.path)
		if err != nil {
			t.Errorf("stat: %v", err)
			continue
		}
		if fi.Mode() != tt.want {
			t.Errorf("%s: mode %v, want %v", tt.path, fi.Mode(), tt.want)
		}
	}
	// No temp files may be left behind.
	entries, err := os.ReadDir(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 4 {
		t.Errorf("pki dir has %d entries, want 4: %v", len(entries), entries)
	}
}

// snapshot records every regular file under dir with its content and mode.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		content := ""
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			content = string(b)
		}
		out[p] = fmt.Sprintf("%v %q", fi.Mode(), content)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestCreateRefusesExisting(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		pick func(Files) string
	}{
		{"root cert", func(f Files) string { return f.RootCert }},
		{"root key", func(f Files) string { return f.RootKey }},
		{"intermediate cert", func(f Files) string { return f.IntermediateCert }},
		{"intermediate key", func(f Files) string { return f.IntermediateKey }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			f := DefaultFiles(dir)
			existing := tt.pick(f)
			if err := os.MkdirAll(filepath.Dir(existing), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(existing, []byte("precious"), 0o640); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, dir)

			ca, err := Create(f, CreateOptions{})
			if !errors.Is(err, ErrExists) {
				t.Fatalf("Create error = %v, want ErrExists", err)
			}
			if ca != nil {
				t.Error("Create returned a CA alongside an error")
			}
			var fe *FileError
			if !errors.As(err, &fe) || fe.Path != existing {
				t.Errorf("error %v does not name %s", err, existing)
			}
			if !strings.Contains(err.Error(), existing) {
				t.Errorf("error message %q does not contain %s", err, existing)
			}
			if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
				t.Errorf("Create changed the directory (-before +after):\n%s", diff)
			}
		})
	}
}

func TestCreateRemovesPartialOutputOnFailure(t *testing.T) {
	t.Parallel()
	for failAt := 1; failAt <= 4; failAt++ {
		t.Run(fmt.Sprintf("write %d fails", failAt), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			f := DefaultFiles(dir)
			calls := 0
			boom := errors.New("disk on fire")
			write := func(path string, data []byte, perm fs.FileMode) error {
				calls++
				if calls == failAt {
					return boom
				}
				return writeFileAtomic(path, data, perm)
			}
			_, err := create(f, CreateOptions{}, write)
			if !errors.Is(err, boom) {
				t.Fatalf("create error = %v, want %v", err, boom)
			}
			var fe *FileError
			if !errors.As(err, &fe) || fe.Path != f.all()[failAt-1] {
				t.Errorf("error %v does not name %s", err, f.all()[failAt-1])
			}
			// The pki directory was created by create, so it must be gone too.
			if diff := cmp.Diff(map[string]string{dir: snapshot(t, dir)[dir]}, snapshot(t, dir)); diff != "" {
				t.Errorf("leftovers after failed create (-want +got):\n%s", diff)
			}
			// And a retry must now succeed.
			if _, err := Create(f, CreateOptions{}); err != nil {
				t.Errorf("retry after failed create: %v", err)
			}
		})
	}
}

func TestCreateRejectsBadFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := DefaultFiles(dir)
	dup := good
	dup.IntermediateKey = good.RootKey
	empty := good
	empty.RootCert = ""
	tests := []struct {
		name string
		f    Files
		opts CreateOptions
	}{
		{"duplicate path", dup, CreateOptions{}},
		{"empty path", empty, CreateOptions{}},
		{"negative lifetime", good, CreateOptions{RootLifetime: -time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := Create(tt.f, tt.opts); err == nil {
				t.Fatal("Create succeeded, want error")
			}
		})
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("rejected Create wrote %v", entries)
	}
}

func TestLoadErrors(t *testing.T) {
	t.Parallel()
	_, a := newTestCA(t)
	_, b := newTestCA(t)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("this is not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name                 string
		root, inter, key     string
		wantPath             string
		wantIs               error
		wantMessageFragments []string
	}{
		{"mismatched key", a.RootCert, a.IntermediateCert, b.IntermediateKey, b.IntermediateKey, ErrKeyMismatch, nil},
		{"intermediate not signed by root", a.RootCert, b.IntermediateCert, b.IntermediateKey, b.IntermediateCert, nil, []string{"does not chain"}},
		{"key file given as root", a.IntermediateKey, a.IntermediateCert, a.IntermediateKey, a.IntermediateKey, ErrNoPEM, nil},
		{"garbage root", garbage, a.IntermediateCert, a.IntermediateKey, garbage, ErrNoPEM, nil},
		{"garbage intermediate", a.RootCert, garbage, a.IntermediateKey, garbage, ErrNoPEM, nil},
		{"garbage key", a.RootCert, a.IntermediateCert, garbage, garbage, ErrNoPEM, nil},
		{"cert given as key", a.RootCert, a.IntermediateCert, a.IntermediateCert, a.IntermediateCert, ErrNoPEM, nil},
		{"missing key", a.RootCert, a.IntermediateCert, missing, missing, fs.ErrNotExist, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ca, err := Load(tt.root, tt.inter, tt.key)
			if err == nil {
				t.Fatalf("Load succeeded with %v, want error", ca)
			}
			var fe *FileError
			if !errors.As(err, &fe) || fe.Path != tt.wantPath {
				t.Errorf("error %q: want *FileError for %s", err, tt.wantPath)
			}
			if !strings.Contains(err.Error(), tt.wantPath) {
				t.Errorf("error %q does not name %s", err, tt.wantPath)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %q: want errors.Is %v", err, tt.wantIs)
			}
			for _, frag := range tt.wantMessageFragments {
				if !strings.Contains(err.Error(), frag) {
					t.Errorf("error %q does not contain %q", err, frag)
				}
			}
		})
	}
}

func TestLoadAcceptsPKCS8Key(t *testing.T) {
	t.Parallel()
	ca, f := newTestCA(t)
	der, err := x509.MarshalPKCS8PrivateKey(ca.IntermediateKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(t.TempDir(), "intermediate-pkcs8.key")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(f.RootCert, f.IntermediateCert, keyPath); err != nil {
		t.Fatalf("Load with PKCS#8 key: %v", err)
	}
}

func TestFingerprint(t *testing.T) {
	t.Parallel()
	ca, _ := newTestCA(t)
	sum := sha256.Sum256(ca.Root.Raw)
	want := hex.EncodeToString(sum[:])
	if got := ca.Fingerprint(); got != want {
		t.Errorf("CA.Fingerprint = %s, want %s", got, want)
	}
	if got := Fingerprint(ca.Root); got != want {
		t.Errorf("Fingerprint = %s, want %s", got, want)
	}
	if len(want) != 64 || strings.ToLower(want) != want || strings.Contains(want, ":") {
		t.Errorf("fingerprint %q not 64 lower-case hex digits", want)
	}
}

func TestRootPEM(t *testing.T) {
	t.Parallel()
	ca, f := newTestCA(t)
	onDisk, err := os.ReadFile(f.RootCert)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca.RootPEM(), onDisk) {
		t.Error("RootPEM differs from root.crt")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.RootPEM()) {
		t.Error("RootPEM not parseable as certificates")
	}
}

func TestCANeverPrintsKey(t *testing.T) {
	t.Parallel()
	ca, f := newTestCA(t)
	key := ca.IntermediateKey.(*ecdsa.PrivateKey)
	keyPEM, err := os.ReadFile(f.IntermediateKey)
	if err != nil {
		t.Fatal(err)
	}
	keyB64 := strings.Split(string(keyPEM), "\n")[1]
	dBytes, err := key.Bytes()
	if err != nil {
		t.Fatal(err)
	}

	var jsonLog, textLog bytes.Buffer
	slog.New(slog.NewJSONHandler(&jsonLog, nil)).Info("loaded", "ca", ca)
	slog.New(slog.NewTextHandler(&textLog, nil)).Info("loaded", "ca", ca)

	outputs := map[string]string{
		"String":    ca.String(),
		"%v":        fmt.Sprintf("%v", ca),
		"%+v":       fmt.Sprintf("%+v", ca),
		"%+v deref": fmt.Sprintf("%+v", *ca),
		"slog JSON": jsonLog.String(),
		"slog text": textLog.String(),
	}
	d := new(big.Int).SetBytes(dBytes)
	secrets := []string{d.String(), d.Text(16), hex.EncodeToString(dBytes), keyB64}
	for name, out := range outputs {
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("%s output contains key material: %s", name, out)
			}
		}
	}
	if !strings.Contains(ca.String(), ca.Fingerprint()) {
		t.Errorf("String %q lacks fingerprint", ca.String())
	}
	if !strings.Contains(jsonLog.String(), ca.Fingerprint()) {
		t.Errorf("slog output %q lacks fingerprint", jsonLog.String())
	}
}
