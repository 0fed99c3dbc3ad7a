package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestExamples loads every shipped example: they are documentation, and
// documentation that does not load is worse than none.
func TestExamples(t *testing.T) {
	t.Parallel()
	paths, err := filepath.Glob("examples/*.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) < 3 {
		t.Fatalf("found %d examples, want at least 3", len(paths))
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			t.Parallel()
			c, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			abs, _ := filepath.Abs("examples")
			if c.Dir != abs {
				t.Errorf("Dir = %q, want %q", c.Dir, abs)
			}
		})
	}
}

// TestDevExampleIsDefault keeps examples/dev.json byte-identical to what
// `crank-ca init` writes.
func TestDevExampleIsDefault(t *testing.T) {
	t.Parallel()
	got, err := os.ReadFile("examples/dev.json")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dev.json")
	if err := Default(InitOptions{}).Write(path); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("examples/dev.json differs from Default (-want +got):\n%s", diff)
	}
}

func TestExampleContents(t *testing.T) {
	t.Parallel()
	c, err := Load("examples/postgresql.json")
	if err != nil {
		t.Fatal(err)
	}
	if c.Storage.Type != StoragePostgreSQL || c.Storage.DSN == "" {
		t.Errorf("storage = %v, want postgresql with a DSN", c.Storage)
	}
	acme, ok := c.Provisioner("acme-internal")
	if !ok || !acme.RequireEAB {
		t.Errorf("acme-internal = %+v, want requireEAB", acme)
	}
	// validationPorts is for development and tests only; the
	// production-style example must not show it.
	for _, p := range c.Provisioners {
		if p.ValidationPorts != nil {
			t.Errorf("provisioner %q sets validationPorts", p.Name)
		}
	}
	workers, ok := c.Provisioner("workers")
	if !ok || len(workers.Identities) == 0 || len(workers.Identities[0].IPs) == 0 {
		t.Errorf("workers = %+v, want identities with IPs", workers)
	}

	m, err := Load("examples/minimal.json")
	if err != nil {
		t.Fatal(err)
	}
	if m.Listen != DefaultListen || m.Storage.Path != DefaultBoltPath {
		t.Errorf("minimal.json did not get defaults: %+v", m)
	}
}

func TestWriteLoadRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts InitOptions
	}{
		{"zero options", InitOptions{}},
		{"custom", InitOptions{Listen: "0.0.0.0:8443", TrustDomain: "example.test", DNSNames: []string{"ca.example.test", "localhost"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			want := Default(tt.opts)
			path := filepath.Join(t.TempDir(), "sub", "..", "crank-ca.json")
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := want.Write(path); err != nil {
				t.Fatal(err)
			}
			got, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			abs, _ := filepath.Abs(filepath.Dir(path))
			if got.Dir != abs {
				t.Errorf("Dir = %q, want %q", got.Dir, abs)
			}
			want.Dir = got.Dir
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("round trip mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWriteRefusesOverwriteAndUses0600(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "crank-ca.json")
	if err := Default(InitOptions{}).Write(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("mode = %v, want 0600", perm)
	}
	before, _ := os.ReadFile(path)

	err = Default(InitOptions{Listen: "0.0.0.0:1"}).Write(path)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Write error = %v, want fs.ErrExist", err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the file", err)
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Error("refused Write changed the existing file")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory has %d entries, want only the config (temp file left behind?)", len(entries))
	}

	// A dangling symlink counts as existing too.
	link := filepath.Join(dir, "link.json")
	if err := os.Symlink(filepath.Join(dir, "nowhere"), link); err != nil {
		t.Skip(err)
	}
	if err := Default(InitOptions{}).Write(link); !errors.Is(err, fs.ErrExist) {
		t.Errorf("Write through dangling symlink error = %v, want fs.ErrExist", err)
	}
}

func TestWriteMissingDir(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "missing", "crank-ca.json")
	if err := Default(InitOptions{}).Write(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Write error = %v, want error naming %s", err, path)
	}
}

func TestLoadErrorsNameTheFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, content string
		want          string
	}{
		{"unknown.json", `{"listn":"x"}`, `json: unknown field "listn"`},
		{"invalid.json", `{"provisioners":[]}`, "provisioners: at least one provisioner is required"},
		{"syntax.json", `{`, "invalid JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeTemp(t, tt.name, tt.content)
			_, err := Load(path)
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load error = %v, want mention of %s and %q", err, path, tt.want)
			}
		})
	}
	missing := filepath.Join(t.TempDir(), "missing.json")
	if _, err := Load(missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load(missing) error = %v, want fs.ErrNotExist naming the file", err)
	}
}
