package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Load reads the configuration file at path, decodes it strictly, sets Dir
// to the file's absolute directory, applies defaults and validates. Every
// error names the file; validation errors list every problem, one per
// line.
func Load(path string) (*Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	f, err := os.Open(abs)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err) // *PathError names the file
	}
	defer f.Close()
	c, err := Decode(f)
	if err != nil {
		return nil, fmt.Errorf("config %s:\n%w", path, err)
	}
	c.Dir = filepath.Dir(abs)
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config %s is invalid:\n%w", path, err)
	}
	return c, nil
}

// Write writes c as indented JSON to path with mode 0600 (the file names
// key material and may hold a database password). It writes a temporary
// file in the same directory and links it into place, so readers never see
// a partial file, and it refuses to replace an existing file (the error
// wraps fs.ErrExist): `crank-ca init` must never clobber an operator's
// configuration.
func (c *Config) Write(path string) (err error) {
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	data = append(data, '\n')

	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("config %s: refusing to overwrite: %w", path, fs.ErrExist)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	defer func() {
		// After a successful link the temporary name is redundant; after a
		// failure it is garbage. Either way it goes.
		if rmErr := os.Remove(tmp.Name()); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) && err == nil {
			err = fmt.Errorf("config %s: %w", path, rmErr)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("config %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("config %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("config %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	// link(2), unlike rename(2), fails if the target exists, which closes
	// the race between the Lstat above and here.
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("config %s: refusing to overwrite: %w", path, fs.ErrExist)
		}
		// Filesystems without hard links: fall back to rename after
		// re-checking, accepting a small race.
		if _, statErr := os.Lstat(path); statErr == nil {
			return fmt.Errorf("config %s: refusing to overwrite: %w", path, fs.ErrExist)
		}
		if err := os.Rename(tmp.Name(), path); err != nil {
			return fmt.Errorf("config %s: %w", path, err)
		}
	}
	syncDir(dir)
	return nil
}

// syncDir makes the new directory entry durable. Best effort: not every
// platform can fsync a directory, and the file itself is already synced.
func syncDir(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	_ = d.Sync()
	_ = d.Close()
}
