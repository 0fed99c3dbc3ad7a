package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// RotateOptions configures RotateIntermediate.
type RotateOptions struct {
	// RootCert and RootKey are the root certificate and its key. The key is
	// read only here: it can live on removable media and be mounted for the
	// rotation alone.
	RootCert, RootKey string
	// IntermediateCert and IntermediateKey are the files serve reads (the
	// configuration's pki.intermediateCert and pki.intermediateKey). The new
	// intermediate replaces their content; the old one stays next to them.
	IntermediateCert, IntermediateKey string
	// Lifetime of the new intermediate; 0 means DefaultIntermediateLifetime.
	// It is clamped to the root's NotAfter.
	Lifetime time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Rotation says what RotateIntermediate did.
type Rotation struct {
	// Old and New are the intermediates before and after.
	Old, New *x509.Certificate
	// OldCert and OldKey are where the old intermediate is kept; NewCert
	// and NewKey hold a copy of the new one under its own name (the
	// configured paths hold it too).
	OldCert, OldKey, NewCert, NewKey string
}

// RotateIntermediate signs a new intermediate (fresh ECDSA P-256 key, the
// same profile as Create's) with the root key and makes it the one the
// configured paths name:
//
//  1. the old certificate and key are kept as
//     <name>-<issued>-<serial>.crt/.key next to the configured files
//     (unless a copy is there already);
//  2. the new ones are written under such names too (key 0600),
//     each atomically and never over an existing file;
//  3. the configured key file, then the certificate file, are replaced by
//     the new ones, each by an atomic rename.
//
// A server reads the configured files at start and on reload; between the
// two renames of step 3 the pair does not match and Load refuses it (a
// reload then keeps the running intermediate). Nothing is changed before
// every check has passed: the root key matches the root, the old pair
// loads, and the new intermediate verifies against the root.
func RotateIntermediate(opts RotateOptions) (*Rotation, error) {
	for _, p := range []struct{ name, v string }{{"root certificate", opts.RootCert}, {"root key", opts.RootKey}, {"intermediate certificate", opts.IntermediateCert}, {"intermediate key", opts.IntermediateKey}} {
		if p.v == "" {
			return nil, fmt.Errorf("pki: rotate: the %s path is required", p.name)
		}
	}
	if opts.Lifetime < 0 {
		return nil, fmt.Errorf("pki: rotate: lifetime %s must not be negative", opts.Lifetime)
	}
	if opts.Lifetime == 0 {
		opts.Lifetime = DefaultIntermediateLifetime
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	old, err := Load(opts.RootCert, opts.IntermediateCert, opts.IntermediateKey)
	if err != nil {
		return nil, err
	}
	rootKey, err := readKey(opts.RootKey)
	if err != nil {
		return nil, err
	}
	if !publicKeysEqual(rootKey.Public(), old.Root.PublicKey) {
		return nil, fileErr(opts.RootKey, fmt.Errorf("%w %s", ErrKeyMismatch, opts.RootCert))
	}
	now := opts.Now()
	notAfter := minTime(now.Add(opts.Lifetime), old.Root.NotAfter)
	if notAfter.Sub(now) < time.Hour {
		return nil, fileErr(opts.RootCert, fmt.Errorf("the root expires at %s: too soon to sign an intermediate under it", old.Root.NotAfter.UTC().Format(time.RFC3339)))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate intermediate key: %w", err)
	}
	stamp := now.UTC().Format("20060102T150405Z")
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: orgName(old) + " Intermediate CA " + stamp, Organization: old.Root.Subject.Organization},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	cert, err := sign(tmpl, old.Root, &key.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("pki: sign intermediate: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(old.Root)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("pki: the new intermediate does not verify against the root: %w", err)
	}
	keyPEM, err := pemECKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: encode intermediate key: %w", err)
	}
	certPEM := pemCert(cert.Raw)

	r := &Rotation{
		Old: old.Intermediate, New: cert,
		OldCert: stamped(opts.IntermediateCert, old.Intermediate),
		OldKey:  stamped(opts.IntermediateKey, old.Intermediate),
		NewCert: stamped(opts.IntermediateCert, cert),
		NewKey:  stamped(opts.IntermediateKey, cert),
	}
	oldCertPEM, err := os.ReadFile(opts.IntermediateCert)
	if err != nil {
		return nil, fileErr(opts.IntermediateCert, err)
	}
	oldKeyPEM, err := os.ReadFile(opts.IntermediateKey)
	if err != nil {
		return nil, fileErr(opts.IntermediateKey, err)
	}
	for _, w := range []struct {
		path string
		data []byte
		mode fs.FileMode
	}{
		{r.OldKey, oldKeyPEM, keyMode},
		{r.OldCert, oldCertPEM, certMode},
		{r.NewKey, keyPEM, keyMode},
		{r.NewCert, certPEM, certMode},
	} {
		if err := writeNewAtomic(w.path, w.data, w.mode); err != nil {
			return nil, fileErr(w.path, err)
		}
	}
	if err := writeFileAtomic(opts.IntermediateKey, keyPEM, keyMode); err != nil {
		return nil, fileErr(opts.IntermediateKey, err)
	}
	if err := writeFileAtomic(opts.IntermediateCert, certPEM, certMode); err != nil {
		return nil, fileErr(opts.IntermediateCert, err)
	}
	return r, nil
}

// orgName is the name Create gave the CA ("Crank"), read back from the
// root's organization.
func orgName(ca *CA) string {
	if o := ca.Root.Subject.Organization; len(o) > 0 && o[0] != "" {
		return o[0]
	}
	return DefaultName
}

// stamped is path with the issue time and the first 8 hex digits of the
// serial of cert before its extension: pki/intermediate.crt becomes
// pki/intermediate-20261201T030000Z-1a2b3c4d.crt.
func stamped(path string, cert *x509.Certificate) string {
	ext := filepath.Ext(path)
	serial := fmt.Sprintf("%032x", cert.SerialNumber)[:8]
	return strings.TrimSuffix(path, ext) + "-" + cert.NotBefore.Add(backdate).UTC().Format("20060102T150405Z") + "-" + serial + ext
}

// writeNewAtomic writes path atomically unless it exists: the same content
// there already is success (a rotation retried after a failure keeps the
// copy of the old intermediate it made), other content an error wrapping
// ErrExists.
func writeNewAtomic(path string, data []byte, mode fs.FileMode) error {
	have, err := os.ReadFile(path)
	switch {
	case err == nil && string(have) == string(data):
		return nil
	case err == nil:
		return ErrExists
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	return writeFileAtomic(path, data, mode)
}
