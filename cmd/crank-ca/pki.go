package main

// `crank-ca pki rotate-intermediate`: a new intermediate under the root,
// picked up by `serve` on SIGHUP.

import (
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/pki"
)

func cmdPKI(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "rotate-intermediate" {
		return fmt.Errorf("%w: pki needs the subcommand rotate-intermediate", errUsage)
	}
	fs := newFlagSet("pki rotate-intermediate", stderr)
	path := fs.String("config", "", "configuration file (required)")
	rootKey := fs.String("root-key", "", "root key (default: root.key next to pki.rootCert); mount it only for the rotation")
	lifetime := fs.Duration("lifetime", pki.DefaultIntermediateLifetime, "lifetime of the new intermediate (capped at the root's expiry)")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("%w: --config is required", errUsage)
	}
	if *lifetime < time.Hour {
		return fmt.Errorf("%w: --lifetime must be at least 1h", errUsage)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	rootCert := cfg.Resolve(cfg.PKI.RootCert)
	if *rootKey == "" {
		*rootKey = filepath.Join(filepath.Dir(rootCert), "root.key")
	}
	r, err := pki.RotateIntermediate(pki.RotateOptions{
		RootCert: rootCert, RootKey: *rootKey,
		IntermediateCert: cfg.Resolve(cfg.PKI.IntermediateCert),
		IntermediateKey:  cfg.Resolve(cfg.PKI.IntermediateKey),
		Lifetime:         *lifetime,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, `Rotated the intermediate of %s
  new: %q, valid until %s
       %s, %s (copy)
  old: %q, valid until %s
       kept as %s, %s
The configured files (%s, %s) now hold the new one.
Next:
  kill -HUP <pid of crank-ca serve>    (every replica; serve switches without dropping a request)
  crank-ca rotate --config %s --all    (optional: workers renew now instead of at their next renewal)
Certificates from the old intermediate stay valid until they expire. Move the root key offline again.
`, *path,
		r.New.Subject.CommonName, ts(r.New.NotAfter), r.NewCert, r.NewKey,
		r.Old.Subject.CommonName, ts(r.Old.NotAfter), r.OldCert, r.OldKey,
		cfg.PKI.IntermediateCert, cfg.PKI.IntermediateKey, *path)
	return nil
}
