package workload

import (
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestListen(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		mode    fs.FileMode
		prepare func(t *testing.T, path string) // before Listen
		wantErr string
	}{
		{name: "fresh 0600", mode: 0o600},
		{name: "fresh 0660", mode: 0o660},
		{name: "stale socket replaced", mode: 0o600, prepare: func(t *testing.T, path string) {
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			l.(*net.UnixListener).SetUnlinkOnClose(false)
			_ = l.Close()
		}},
		{name: "live socket kept", mode: 0o600, wantErr: "in use", prepare: func(t *testing.T, path string) {
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = l.Close() })
		}},
		{name: "regular file kept", mode: 0o600, wantErr: "not a socket", prepare: func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "agent.sock")
			if tt.prepare != nil {
				tt.prepare(t, path)
			}
			ln, err := Listen(t.Context(), path, tt.mode)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Listen: %v, want an error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != tt.mode {
				t.Errorf("socket mode %v, want socket %v", fi.Mode(), tt.mode)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Errorf("directory holds %d entries, want the socket alone (temporary directory left?)", len(entries))
			}
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			_ = c.Close()
			if err := ln.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(path); !os.IsNotExist(err) {
				t.Errorf("socket not removed on Close: %v", err)
			}
		})
	}
}

// TestListenCreatesParent0700: a missing parent directory is created 0700;
// an existing one keeps its mode.
func TestListenCreatesParent0700(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(base, "run", "agent.sock")
	ln, err := Listen(t.Context(), path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	for dir, want := range map[string]fs.FileMode{filepath.Dir(path): 0o700, base: 0o755} {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", dir, fi.Mode().Perm(), want)
		}
	}
}
