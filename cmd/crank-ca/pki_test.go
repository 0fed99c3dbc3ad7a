package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/internal/pki"
	"github.com/crank-platform/crank-ca/internal/setup"
)

func TestPKIAndRenewUsageErrors(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"pki"},
		{"pki", "rotate-root"},
		{"pki", "rotate-intermediate"},
		{"pki", "rotate-intermediate", "--config", "x.json", "--lifetime", "1m"},
		{"pki", "rotate-intermediate", "--config", "x.json", "extra"},
		{"admin", "cert", "--config", "x.json", "--renew", "--name", "ops"},
		{"admin", "cert", "--config", "x.json", "--renew", "--out", "/tmp"},
		{"admin", "cert", "--config", "x.json", "--renew", "--lifetime", "0s"},
		{"admin", "cert", "--config", "x.json", "--name", "ops", "--admin-cert", "a.crt"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "Usage:") {
			t.Errorf("%q: exit %d, stderr %q; want usage and 2", args, code, stderr.String())
		}
	}
}

// TestRotateIntermediateCommand: the command rotates with the default root
// key next to the root certificate, refuses a root key of another CA
// without changing a file, and takes --root-key from elsewhere (the root
// key kept offline).
func TestRotateIntermediateCommand(t *testing.T) {
	t.Parallel()
	res, err := setup.Init(setup.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	cfg := res.ConfigPath
	dir := filepath.Dir(cfg)
	inter := filepath.Join(dir, "pki", "intermediate.crt")
	before, _ := os.ReadFile(inter)

	other, err := setup.Init(setup.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"pki", "rotate-intermediate", "--config", cfg, "--root-key", filepath.Join(filepath.Dir(other.ConfigPath), "pki", "root.key")}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "does not match") {
		t.Errorf("foreign root key: exit %d, stderr %q", code, stderr.String())
	}
	if after, _ := os.ReadFile(inter); !bytes.Equal(before, after) {
		t.Fatal("a refused rotation changed intermediate.crt")
	}

	// The root key moved offline: only --root-key finds it.
	offline := filepath.Join(t.TempDir(), "root.key")
	if err := os.Rename(filepath.Join(dir, "pki", "root.key"), offline); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"pki", "rotate-intermediate", "--config", cfg}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "root.key") {
		t.Errorf("without the root key: exit %d, stderr %q", code, stderr.String())
	}
	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"pki", "rotate-intermediate", "--config", cfg, "--root-key", offline, "--lifetime", "8760h"}, &stdout, &stderr); code != 0 {
		t.Fatalf("rotate-intermediate: exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "kill -HUP") || !strings.Contains(stdout.String(), "Move the root key offline again") {
		t.Errorf("output does not say what to do next:\n%s", stdout.String())
	}
	ca, err := pki.Load(filepath.Join(dir, "pki", "root.crt"), inter, filepath.Join(dir, "pki", "intermediate.key"))
	if err != nil {
		t.Fatalf("the rotated files do not load: %v", err)
	}
	if after, _ := os.ReadFile(inter); bytes.Equal(before, after) {
		t.Error("intermediate.crt unchanged")
	}
	if d := time.Until(ca.Intermediate.NotAfter); d < 364*24*time.Hour || d > 366*24*time.Hour {
		t.Errorf("--lifetime 8760h gave %s", d)
	}
}
