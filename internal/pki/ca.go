package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Defaults for CreateOptions.
const (
	DefaultName                 = "Crank"
	DefaultRootLifetime         = 10 * 365 * 24 * time.Hour // 87600h
	DefaultIntermediateLifetime = 5 * 365 * 24 * time.Hour
)

// backdate is subtracted from NotBefore of every certificate this package
// issues so that peers whose clocks lag slightly behind ours still accept it.
const backdate = 5 * time.Minute

// CreateOptions configures Create. The zero value is usable.
type CreateOptions struct {
	// Name prefixes the subject common names: "<Name> Root CA" and
	// "<Name> Intermediate CA". Empty means DefaultName.
	Name string
	// RootLifetime is the root's validity; 0 means DefaultRootLifetime.
	RootLifetime time.Duration
	// IntermediateLifetime is the intermediate's validity; 0 means
	// DefaultIntermediateLifetime. It is clamped to the root's NotAfter
	// because a certificate cannot usefully outlive its issuer.
	IntermediateLifetime time.Duration
	// Now is the clock used for validity periods; nil means time.Now.
	Now func() time.Time
}

// Create generates a fresh ECDSA P-256 root CA (self-signed, MaxPathLen 1,
// KeyUsage CertSign|CRLSign) and an intermediate signed by it (MaxPathLen 0,
// KeyUsage CertSign|CRLSign|DigitalSignature), writes the four files of f
// (directories 0700, keys 0600, certificates 0644, each atomically), and
// returns the resulting CA.
//
// Create refuses with an error wrapping ErrExists (a *FileError naming the
// file) if any of the four files already exists, and in that case writes
// nothing: a root that clients trust must never be replaced by accident. If
// writing fails midway, Create removes the files and directories it created
// so that a retry starts from a clean slate instead of hitting ErrExists on
// half-written material.
func Create(f Files, opts CreateOptions) (*CA, error) {
	return create(f, opts, writeFileAtomic)
}

func create(f Files, opts CreateOptions, write writeFunc) (_ *CA, err error) {
	if err := f.validate(); err != nil {
		return nil, err
	}
	if opts.Name == "" {
		opts.Name = DefaultName
	}
	if opts.RootLifetime == 0 {
		opts.RootLifetime = DefaultRootLifetime
	}
	if opts.IntermediateLifetime == 0 {
		opts.IntermediateLifetime = DefaultIntermediateLifetime
	}
	if opts.RootLifetime < 0 || opts.IntermediateLifetime < 0 {
		return nil, errors.New("pki: CA lifetimes must not be negative")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}

	// Check everything before writing anything, so a refusal leaves the
	// directory exactly as it was.
	for _, p := range f.all() {
		_, err := os.Lstat(p)
		switch {
		case err == nil:
			return nil, fileErr(p, ErrExists)
		case !errors.Is(err, fs.ErrNotExist):
			return nil, fileErr(p, err)
		}
	}

	m, err := generate(opts)
	if err != nil {
		return nil, err
	}

	var createdDirs, written []string
	defer func() {
		if err == nil {
			return
		}
		// Undo in reverse; removals are best-effort because the original
		// error is what the caller needs to see.
		for _, p := range slices.Backward(written) {
			_ = os.Remove(p)
		}
		for _, d := range slices.Backward(createdDirs) {
			_ = os.Remove(d) // only succeeds if empty, i.e. nothing else was put there
		}
	}()

	outputs := []struct {
		path string
		data []byte
		mode fs.FileMode
	}{
		{f.RootKey, m.rootKeyPEM, keyMode},
		{f.RootCert, pemCert(m.ca.Root.Raw), certMode},
		{f.IntermediateKey, m.intKeyPEM, keyMode},
		{f.IntermediateCert, pemCert(m.ca.Intermediate.Raw), certMode},
	}
	for _, o := range outputs {
		dirs, err := mkdirs(filepath.Dir(o.path))
		createdDirs = append(createdDirs, dirs...)
		if err != nil {
			return nil, fileErr(o.path, fmt.Errorf("create directory: %w", err))
		}
		if err := write(o.path, o.data, o.mode); err != nil {
			return nil, fileErr(o.path, fmt.Errorf("write: %w", err))
		}
		written = append(written, o.path)
	}
	return m.ca, nil
}

// material is freshly generated CA material before it is written.
type material struct {
	ca         *CA
	rootKeyPEM []byte
	intKeyPEM  []byte
}

func generate(opts CreateOptions) (*material, error) {
	now := opts.Now()

	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate root key: %w", err)
	}
	rootTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: opts.Name + " Root CA", Organization: []string{opts.Name}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(opts.RootLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	root, err := sign(rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("pki: create root certificate: %w", err)
	}

	intKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate intermediate key: %w", err)
	}
	intTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: opts.Name + " Intermediate CA", Organization: []string{opts.Name}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              minTime(now.Add(opts.IntermediateLifetime), root.NotAfter),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	intermediate, err := sign(intTmpl, root, &intKey.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("pki: create intermediate certificate: %w", err)
	}

	rootKeyPEM, err := pemECKey(rootKey)
	if err != nil {
		return nil, fmt.Errorf("pki: encode root key: %w", err)
	}
	intKeyPEM, err := pemECKey(intKey)
	if err != nil {
		return nil, fmt.Errorf("pki: encode intermediate key: %w", err)
	}
	return &material{
		ca:         &CA{Root: root, Intermediate: intermediate, IntermediateKey: intKey},
		rootKeyPEM: rootKeyPEM,
		intKeyPEM:  intKeyPEM,
	}, nil
}

// sign creates a certificate from tmpl issued by parent and parses it back,
// so callers always hold exactly what a verifier will see.
func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, priv crypto.Signer) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// randomSerial returns a positive 128-bit random serial. Unpredictable
// serials are what RFC 5280 / CA/B guidance ask for, and they make serials
// safe to use as unique identifiers in logs.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generate serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func pemECKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// CA is loaded CA material: what the server needs to sign certificates. The
// root key is deliberately absent so it can be kept offline.
//
// CA implements fmt.Stringer and slog.LogValuer so that logging it never
// exposes IntermediateKey.
type CA struct {
	Root            *x509.Certificate
	Intermediate    *x509.Certificate
	IntermediateKey crypto.Signer
}

// Load reads the root certificate, the intermediate certificate and the
// intermediate key, and checks that they form a usable CA at the current
// time: the root is a CA certificate within its validity period, the
// intermediate is a CA certificate that verifies against the root as the only
// trust anchor, and the key matches the intermediate's public key. Every
// error is a *FileError naming the offending file, so operators know which
// file to fix.
func Load(rootCert, intermediateCert, intermediateKey string) (*CA, error) {
	now := time.Now()

	root, err := readCert(rootCert)
	if err != nil {
		return nil, err
	}
	if !root.BasicConstraintsValid || !root.IsCA {
		return nil, fileErr(rootCert, errors.New("certificate is not a CA certificate"))
	}
	if now.Before(root.NotBefore) || now.After(root.NotAfter) {
		return nil, fileErr(rootCert, fmt.Errorf("root certificate is not valid now (valid %s to %s)",
			root.NotBefore.UTC().Format(time.RFC3339), root.NotAfter.UTC().Format(time.RFC3339)))
	}

	intermediate, err := readCert(intermediateCert)
	if err != nil {
		return nil, err
	}
	if !intermediate.BasicConstraintsValid || !intermediate.IsCA {
		return nil, fileErr(intermediateCert, errors.New("certificate is not a CA certificate"))
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	if _, err := intermediate.Verify(x509.VerifyOptions{
		Roots:       roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fileErr(intermediateCert, fmt.Errorf("does not chain to root %s: %w", rootCert, err))
	}

	key, err := readKey(intermediateKey)
	if err != nil {
		return nil, err
	}
	if !publicKeysEqual(key.Public(), intermediate.PublicKey) {
		return nil, fileErr(intermediateKey, fmt.Errorf("%w %s", ErrKeyMismatch, intermediateCert))
	}
	return &CA{Root: root, Intermediate: intermediate, IntermediateKey: key}, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// readCert returns the first CERTIFICATE block of a PEM file (readCerts,
// renew.go, parses them all).
func readCert(path string) (*x509.Certificate, error) {
	certs, err := readCerts(path)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// readKey returns the first private key in a PEM file. SEC 1 ("EC PRIVATE
// KEY"), PKCS#8 ("PRIVATE KEY") and PKCS#1 ("RSA PRIVATE KEY") are accepted
// so material produced by openssl or smallstep tooling can be used as is.
// Parse errors deliberately do not include the file content.
func readKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fileErr(path, err)
	}
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, fileErr(path, fmt.Errorf("%w: want EC PRIVATE KEY or PRIVATE KEY", ErrNoPEM))
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, fileErr(path, errors.New("encrypted private keys are not supported"))
		default:
			continue // e.g. "EC PARAMETERS" emitted by openssl
		}
		if err != nil {
			return nil, fileErr(path, fmt.Errorf("parse %s: %w", block.Type, err))
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fileErr(path, fmt.Errorf("unsupported private key type %T", key))
		}
		return signer, nil
	}
}

// Fingerprint returns the lower-case hex SHA-256 of the root certificate's
// DER, without separators; this is the value clients pin (e.g. step
// ca bootstrap --fingerprint).
func (ca *CA) Fingerprint() string { return Fingerprint(ca.Root) }

// RootPEM returns the root certificate PEM-encoded, for distribution to
// clients that need to trust this CA.
func (ca *CA) RootPEM() []byte { return pemCert(ca.Root.Raw) }

// String describes the CA by public information only; it never includes key
// material, so a CA can be safely passed to loggers and %v.
func (ca *CA) String() string {
	if ca == nil || ca.Root == nil || ca.Intermediate == nil {
		return "pki.CA{<incomplete>}"
	}
	return fmt.Sprintf("pki.CA{root=%q fingerprint=%s intermediate=%q intermediateNotAfter=%s}",
		ca.Root.Subject.CommonName, ca.Fingerprint(),
		ca.Intermediate.Subject.CommonName, ca.Intermediate.NotAfter.UTC().Format(time.RFC3339))
}

// LogValue makes slog render the CA by public information only; without it a
// JSON handler would serialise the exported IntermediateKey field.
func (ca *CA) LogValue() slog.Value {
	if ca == nil || ca.Root == nil || ca.Intermediate == nil {
		return slog.StringValue("<incomplete CA>")
	}
	return slog.GroupValue(
		slog.String("root", ca.Root.Subject.CommonName),
		slog.String("fingerprint", ca.Fingerprint()),
		slog.String("intermediate", ca.Intermediate.Subject.CommonName),
		slog.Time("intermediate_not_after", ca.Intermediate.NotAfter),
	)
}

// Fingerprint returns the lower-case hex SHA-256 of cert's DER encoding,
// without separators.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// Compile-time checks for the interfaces that keep keys out of logs.
var (
	_ fmt.Stringer   = (*CA)(nil)
	_ slog.LogValuer = (*CA)(nil)
)
