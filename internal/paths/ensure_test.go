package paths

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestEnsure(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string) // prepares dir (which does not exist yet)
		wantErr error
	}{
		{"creates with parents", nil, nil},
		{"existing 0700", mkdir(0o700), nil},
		{"existing 0750 is fine", mkdir(0o750), nil},
		{"existing 0500 is fine", mkdir(0o500), nil},
		{"group-writable", mkdir(0o770), ErrInsecurePerm},
		{"world-writable", mkdir(0o703), ErrInsecurePerm},
		{"sticky world-writable", mkdir(0o777 | fs.ModeSticky), ErrInsecurePerm},
		{"a file", func(t *testing.T, dir string) {
			t.Helper()
			mustMkdir(t, filepath.Dir(dir))
			if err := os.WriteFile(dir, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, ErrNotDir},
		{"a parent is a file", func(t *testing.T, dir string) {
			t.Helper()
			mustMkdir(t, filepath.Dir(filepath.Dir(dir)))
			if err := os.WriteFile(filepath.Dir(dir), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, syscall.ENOTDIR},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "a", "b", "state")
			if tt.setup != nil {
				tt.setup(t, dir)
			}
			err := Ensure(dir)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Ensure = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				var pe *PathError
				if !errors.As(err, &pe) || pe.Path != dir {
					t.Errorf("err %#v is not a *PathError naming %s", err, dir)
				}
				return
			}
			fi, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if !fi.IsDir() || fi.Mode().Perm()&0o077 != 0 && tt.setup == nil {
				t.Errorf("mode = %v, want a 0700 directory", fi.Mode())
			}
		})
	}
}

func TestEnsureCreatesParents0700(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	dir := filepath.Join(root, "x", "y")
	if err := Ensure(dir); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Join(root, "x"), dir} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		// The umask may only remove bits, so 0700 & ^umask has none for group/other.
		if got := fi.Mode().Perm() & 0o077; got != 0 {
			t.Errorf("%s: mode %v, want no group/other bits", d, fi.Mode())
		}
	}
	// Idempotent.
	if err := Ensure(dir); err != nil {
		t.Errorf("second Ensure: %v", err)
	}
}

func mkdir(perm fs.FileMode) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		mustMkdir(t, dir)
		// Chmod, not Mkdir's perm, because the umask would filter the latter.
		if err := os.Chmod(dir, perm); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod(dir, 0o700) }) // let TempDir clean up 0500
	}
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
}

func TestWriteFileAtomic(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		existing []byte // nil: no previous file
		data     []byte
		perm     fs.FileMode
	}{
		{"new key", nil, []byte("-----BEGIN EC PRIVATE KEY-----\n"), 0o600},
		{"new cert", nil, []byte("cert"), 0o644},
		{"replace, tighten perm", []byte("old content that is longer"), []byte("new"), 0o600},
		{"empty", []byte("old"), []byte{}, 0o600},
		{"large", nil, bytes.Repeat([]byte{0xA5}, 1<<20), 0o640},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "key.pem")
			if tt.existing != nil {
				if err := os.WriteFile(path, tt.existing, 0o666); err != nil {
					t.Fatal(err)
				}
			}
			if err := WriteFileAtomic(path, tt.data, tt.perm); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.data) {
				t.Errorf("content = %.40q…, want %.40q…", got, tt.data)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tt.perm {
				t.Errorf("mode = %v, want %v", fi.Mode().Perm(), tt.perm)
			}
			assertOnly(t, dir, "key.pem")
		})
	}
}

func TestWriteFileAtomicFailureLeavesNoTemp(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// The target is a non-empty directory, so the final rename fails after
	// the temporary file was written.
	target := filepath.Join(dir, "target")
	mustMkdir(t, filepath.Join(target, "child"))
	err := WriteFileAtomic(target, []byte("x"), 0o600)
	var pe *PathError
	if !errors.As(err, &pe) || pe.Path != target {
		t.Fatalf("err = %v, want *PathError naming %s", err, target)
	}
	assertOnly(t, dir, "target")

	// A missing directory fails before anything is created.
	if err := WriteFileAtomic(filepath.Join(dir, "nope", "f"), nil, 0o600); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing dir: err = %v, want fs.ErrNotExist", err)
	}
}

// assertOnly fails unless dir holds exactly the named entries (no temp files).
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if diff := cmp.Diff(names, got); diff != "" {
		t.Errorf("entries of %s (-want +got):\n%s", dir, diff)
	}
}
