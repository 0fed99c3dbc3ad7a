package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/crank-platform/crank-ca/internal/setup"
	"github.com/crank-platform/crank-ca/internal/version"
)

// TestBackupRestoreUsage checks the command-line mistakes of backup,
// restore and version: each is exit status 2 with a message naming the
// flag, and changes nothing on disk.
func TestBackupRestoreUsage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	res, err := setup.Init(setup.Options{Dir: filepath.Join(dir, "ca")})
	if err != nil {
		t.Fatal(err)
	}
	cfg := res.ConfigPath
	store := filepath.Join(dir, "ca", "db", "crank-ca.db")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"backup without --out", []string{"backup", "--config", cfg}, "--out is required"},
		{"backup into a directory", []string{"backup", "--config", cfg, "--out", dir}, "is not a regular file"},
		{"backup over the store", []string{"backup", "--config", cfg, "--out", store}, "is the store itself"},
		{"restore without --from", []string{"restore", "--config", cfg}, "restore needs --config and --from"},
		{"restore without --config", []string{"restore", "--from", "x.db"}, "restore needs --config and --from"},
		{"restore of the store itself", []string{"restore", "--config", cfg, "--from", store}, "is the store itself"},
		{"negative CRL number", []string{"restore", "--config", cfg, "--from", "x.db", "--crl-number", "-1"}, "--crl-number must not be negative"},
		{"version with an argument", []string{"version", "extra"}, `unexpected argument "extra"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			if code := run(tc.args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr.String(), tc.want)
			}
			if _, err := os.Stat(store); !os.IsNotExist(err) {
				t.Errorf("a store was created: %v", err)
			}
		})
	}
}

func TestVersionCommand(t *testing.T) {
	t.Parallel()
	want := version.Get()
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 0 || stdout.String() != want.Line("crank-ca")+"\n" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, stdout.String(), stderr.String())
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"version", "--json"}, &stdout, &stderr); code != 0 {
		t.Fatalf("version --json: exit %d: %s", code, stderr.String())
	}
	var got version.Info
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil || got != want {
		t.Errorf("version --json = %+v (%v), want %+v", got, err, want)
	}
}
