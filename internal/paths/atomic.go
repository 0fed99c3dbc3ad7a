package paths

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFileAtomic replaces path with data so that a reader (or the worker
// after a crash) sees either the old content or the new, never a truncated
// key or certificate. It writes a temporary file in the same directory (a
// rename is only atomic within one file system), sets perm on it exactly —
// not filtered by the umask, so 0600 for keys means 0600 — fsyncs it,
// renames it over path and fsyncs the directory so the rename itself
// survives a power loss. On failure the temporary file is removed and path
// is left untouched. Errors are *PathError.
func WriteFileAtomic(path string, data []byte, perm fs.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	wrap := func(e error) error { return &PathError{Op: "write", Path: path, Err: e} }

	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return wrap(err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close() // may already be closed; the error is not interesting then
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm.Perm()); err != nil {
		return wrap(err)
	}
	if _, err := f.Write(data); err != nil {
		return wrap(err)
	}
	if err := f.Sync(); err != nil {
		return wrap(err)
	}
	if err := f.Close(); err != nil {
		return wrap(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return wrap(err)
	}
	if err := syncDir(dir); err != nil {
		// The file is in place; only its durability is in doubt. Report it,
		// but do not remove the new file (tmp no longer exists).
		return wrap(err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}
