package setup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/pki"
	"github.com/crank-platform/crank-ca/provisioner"
)

// ConfigFile is the name of the configuration inside a CA directory.
const ConfigFile = "crank-ca.json"

// ErrExists is returned when the directory already holds a CA.
var ErrExists = errors.New("a CA already exists here")

// Options are the choices of `crank-ca init`.
type Options struct {
	Dir         string
	Listen      string
	TrustDomain string
	DNSNames    []string
}

// Result says what Init created.
type Result struct {
	ConfigPath  string
	Fingerprint string
	Config      *config.Config
}

// Init creates DIR/pki/*, DIR/secrets/token.key and DIR/crank-ca.json. It
// validates the options before writing anything, and removes what it wrote
// if a later step fails.
func Init(opts Options) (_ Result, err error) {
	if opts.Dir == "" {
		return Result{}, errors.New("init: --dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return Result{}, fmt.Errorf("init: %w", err)
	}
	cfgPath := filepath.Join(dir, ConfigFile)
	cfg := config.Default(config.InitOptions{Listen: opts.Listen, TrustDomain: opts.TrustDomain, DNSNames: opts.DNSNames})
	cfg.Dir = dir
	if err := cfg.Validate(); err != nil {
		return Result{}, fmt.Errorf("init: %w", err)
	}
	files := pki.Files{
		RootCert:         cfg.Resolve(cfg.PKI.RootCert),
		RootKey:          filepath.Join(filepath.Dir(cfg.Resolve(cfg.PKI.RootCert)), "root.key"),
		IntermediateCert: cfg.Resolve(cfg.PKI.IntermediateCert),
		IntermediateKey:  cfg.Resolve(cfg.PKI.IntermediateKey),
	}
	keyPath := cfg.Resolve(cfg.TokenKeyFile)
	adminCert, adminKey := cfg.Resolve(cfg.Admin.CertFile), cfg.Resolve(cfg.Admin.KeyFile)
	written := []string{cfgPath, keyPath, files.RootCert, files.RootKey, files.IntermediateCert, files.IntermediateKey, adminCert, adminKey}
	for _, p := range written {
		if _, err := os.Lstat(p); err == nil {
			return Result{}, fmt.Errorf("init: %w: %s exists", ErrExists, p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return Result{}, fmt.Errorf("init: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Result{}, fmt.Errorf("init: %w", err)
	}
	ca, err := pki.Create(files, pki.CreateOptions{Name: "Crank"})
	if err != nil {
		return Result{}, fmt.Errorf("init: %w", err)
	}
	defer func() {
		if err != nil {
			for _, p := range written {
				_ = os.Remove(p)
			}
		}
	}()
	if err := writeTokenKey(keyPath); err != nil {
		return Result{}, fmt.Errorf("init: %w", err)
	}
	adminID, err := spiffeid.FromString(cfg.Admin.SPIFFEIDs[0])
	if err != nil {
		return Result{}, fmt.Errorf("init: admin.spiffeIDs[0]: %w", err)
	}
	if err := WriteAdminCert(ca, adminID, AdminCertLifetime, adminCert, adminKey); err != nil {
		return Result{}, fmt.Errorf("init: %w", err)
	}
	if err := cfg.Write(cfgPath); err != nil {
		return Result{}, fmt.Errorf("init: %w", err)
	}
	return Result{ConfigPath: cfgPath, Fingerprint: ca.Fingerprint(), Config: cfg}, nil
}

// AdminCertLifetime is the lifetime of operator certificates: long enough
// to be convenient, short enough that a lost laptop does not hold a
// permanent key to the CA.
const AdminCertLifetime = 90 * 24 * time.Hour

// WriteAdminCert issues an operator certificate for id and writes it (0644)
// and its key (0600), refusing to overwrite either.
func WriteAdminCert(ca *pki.CA, id spiffeid.ID, lifetime time.Duration, certPath, keyPath string) error {
	certPEM, keyPEM, err := pki.IssueClientCert(ca, id, lifetime, time.Now())
	if err != nil {
		return err
	}
	if err := writeNew(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeNew(certPath, certPEM, 0o644); err != nil {
		_ = os.Remove(keyPath)
		return err
	}
	return nil
}

// writeNew creates path (and its directory, 0700) exclusively.
func writeNew(path string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func writeTokenKey(path string) error {
	k, err := provisioner.GenerateTokenKey()
	if err != nil {
		return err
	}
	b, err := k.MarshalText()
	if err != nil {
		return err
	}
	return writeNew(path, b, 0o600)
}
