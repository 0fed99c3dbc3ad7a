package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Files names the CA material inside a CA directory. Keeping the four paths
// together lets callers override the layout (e.g. to point at an existing
// smallstep directory) without Create and Load needing to know about it.
type Files struct {
	RootCert         string // PEM certificate, 0644
	RootKey          string // PEM "EC PRIVATE KEY" or PKCS#8, 0600; only needed to re-sign intermediates
	IntermediateCert string // PEM certificate, 0644
	IntermediateKey  string // PEM "EC PRIVATE KEY" or PKCS#8, 0600
}

// DefaultFiles returns the standard layout under dir:
// dir/pki/root.crt, dir/pki/root.key, dir/pki/intermediate.crt and
// dir/pki/intermediate.key.
func DefaultFiles(dir string) Files {
	p := filepath.Join(dir, "pki")
	return Files{
		RootCert:         filepath.Join(p, "root.crt"),
		RootKey:          filepath.Join(p, "root.key"),
		IntermediateCert: filepath.Join(p, "intermediate.crt"),
		IntermediateKey:  filepath.Join(p, "intermediate.key"),
	}
}

// all returns the four paths in the order Create writes them.
func (f Files) all() []string {
	return []string{f.RootKey, f.RootCert, f.IntermediateKey, f.IntermediateCert}
}

// validate rejects layouts that would make Create clobber its own output.
func (f Files) validate() error {
	seen := make(map[string]bool, 4)
	for _, p := range f.all() {
		if p == "" {
			return errors.New("pki: all four CA file paths must be set")
		}
		c := filepath.Clean(p)
		if seen[c] {
			return fmt.Errorf("pki: CA file path %q used more than once", p)
		}
		seen[c] = true
	}
	return nil
}

// Modes of written files and directories. Keys are owner-only because anyone
// who can read them can mint trusted certificates.
const (
	dirMode  fs.FileMode = 0o700
	keyMode  fs.FileMode = 0o600
	certMode fs.FileMode = 0o644
)

// writeFunc writes data to path atomically with the given mode. It is a
// parameter of create so tests can inject a failure midway.
type writeFunc func(path string, data []byte, perm fs.FileMode) error

// writeFileAtomic writes data to path so that readers see either no file or
// the complete file, never a torn one: a crash mid-write must not leave a
// half-written key that a later Load would reject (or worse, a root cert with
// no key). The data is written to a temp file in the same directory (so the
// rename stays on one filesystem), fsynced, renamed into place, and the
// directory is fsynced so the rename itself is durable.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmpName)
		}
	}()
	// CreateTemp already uses 0600; Chmod makes the final mode explicit and
	// independent of the umask (certs are meant to be world-readable).
	if err = tmp.Chmod(perm); err != nil {
		return err
	}
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmpName, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir fsyncs a directory so a preceding rename or remove survives a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, errors.ErrUnsupported) {
		return err
	}
	return nil
}

// mkdirs creates dir and any missing parents with mode 0700 and returns the
// directories it actually created, outermost first, so a failed Create can
// remove exactly what it added and nothing that was there before.
func mkdirs(dir string) ([]string, error) {
	var missing []string
	for d := filepath.Clean(dir); ; {
		_, err := os.Stat(d)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		missing = append(missing, d)
		parent := filepath.Dir(d)
		if parent == d {
			break
		}
		d = parent
	}
	var created []string
	for i := len(missing) - 1; i >= 0; i-- {
		err := os.Mkdir(missing[i], dirMode)
		if errors.Is(err, fs.ErrExist) {
			continue // raced with someone else; not ours to remove
		}
		if err != nil {
			return created, err
		}
		created = append(created, missing[i])
	}
	return created, nil
}
