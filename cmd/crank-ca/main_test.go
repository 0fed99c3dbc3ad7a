package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/setup"
)

func TestDefaultServerURL(t *testing.T) {
	for listen, want := range map[string]string{
		"127.0.0.1:9090": "https://127.0.0.1:9090",
		"0.0.0.0:9090":   "https://127.0.0.1:9090",
		"[::]:9090":      "https://127.0.0.1:9090",
		":9090":          "https://127.0.0.1:9090",
		"ca.example:443": "https://ca.example:443",
		"[::1]:9090":     "https://[::1]:9090",
	} {
		if got := defaultServerURL(listen); got != want {
			t.Errorf("defaultServerURL(%q) = %q, want %q", listen, got, want)
		}
	}
}

func TestParseArgsInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args []string
		pos  []string
		prov string
	}{
		{[]string{"api", "--provisioner", "p"}, []string{"api"}, "p"},
		{[]string{"--provisioner", "p", "api"}, []string{"api"}, "p"},
		{[]string{"api"}, []string{"api"}, ""},
		{[]string{"--", "-odd"}, []string{"-odd"}, ""},
		{[]string{"a", "b"}, []string{"a", "b"}, ""},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		prov := fs.String("provisioner", "", "")
		pos, err := parseArgs(fs, tc.args)
		if err != nil || !slices.Equal(pos, tc.pos) || *prov != tc.prov {
			t.Errorf("parseArgs(%q) = %q, %v, provisioner %q; want %q, %q", tc.args, pos, err, *prov, tc.pos, tc.prov)
		}
	}
}

func TestCertStatus(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		c    admin.Certificate
		want string
	}{
		{admin.Certificate{NotAfter: now.Add(time.Hour)}, "live"},
		{admin.Certificate{NotAfter: now.Add(-time.Hour)}, "expired"},
		{admin.Certificate{NotAfter: now.Add(time.Hour), Revoked: true, RenewNow: now}, "revoked"},
		{admin.Certificate{NotAfter: now.Add(time.Hour), RenewNow: now}, "live, renewal forced"},
		{admin.Certificate{NotAfter: now.Add(time.Hour), RenewNow: now.Add(time.Minute)}, "live"},
		{admin.Certificate{NotAfter: now.Add(time.Hour), ReplacedBy: "42"}, "live, replaced by 42"},
	} {
		if got := certStatus(tc.c, now); got != tc.want {
			t.Errorf("certStatus(%+v) = %q, want %q", tc.c, got, tc.want)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"revoke", "--config", "x.json"},
		{"revoke", "--config", "x.json", "--serial", "1", "--worker", "a"},
		{"rotate", "--config", "x.json"},
		{"rotate", "--config", "x.json", "--worker", "a", "--all"},
		{"rotate", "--config", "x.json", "--all", "--issued-before", "yesterday"},
		{"worker", "disable", "--config", "x.json"},
		{"worker", "enable", "a", "b", "--config", "x.json"},
		{"worker", "frobnicate"},
		{"workers", "list"},
		{"accounts"},
		{"certs", "list", "extra", "--config", "x.json"},
		{"admin", "cert", "--config", "x.json", "--name", "Bad_Name"},
		{"admin", "cert", "--config", "x.json", "--name", "ok", "--lifetime", "-1h"},
		{"admin", "cert", "--config", "x.json", "--name", "ok", "--spiffe-id", "spiffe://crank.internal/controller/crank"},
		{"admin", "cert", "--config", "x.json", "--spiffe-id", "https://crank.internal/controller/crank"},
		{"admin", "cert", "--config", "x.json", "--spiffe-id", "spiffe://crank.internal"},
		{"admin"},
		{"token", "create", "--worker", "api"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "Usage:") {
			t.Errorf("%q: exit %d, stderr %q; want usage and 2", args, code, stderr.String())
		}
	}
}

// TestTokenCreateFallsBack: with no server listening, token create mints
// locally and says so; admin commands fail as unreachable; admin cert works
// offline.
func TestTokenCreateFallsBack(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	res, err := setup.Init(setup.Options{Dir: dir, Listen: addr})
	if err != nil {
		t.Fatal(err)
	}
	cfg := res.ConfigPath

	var stdout, stderr bytes.Buffer
	if code := run([]string{"token", "create", "--config", cfg, "--worker", "api", "--json"}, &stdout, &stderr); code != 0 {
		t.Fatalf("token create: exit %d: %s", code, stderr.String())
	}
	if stderr.String() != "crank-ca: server not reachable; minted locally\n" {
		t.Errorf("stderr %q", stderr.String())
	}
	var tok map[string]string
	if err := json.Unmarshal(stdout.Bytes(), &tok); err != nil || tok["kid"] == "" || tok["hmacKey"] == "" || !strings.HasPrefix(tok["token"], tok["kid"]+".") {
		t.Errorf("--json output %q: %v", stdout.String(), err)
	}
	if _, err := time.Parse(time.RFC3339, tok["expiresAt"]); err != nil {
		t.Errorf("expiresAt: %v", err)
	}

	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"token", "create", "--config", cfg, "--worker", "api", "--local"}, &stdout, &stderr); code != 0 || stderr.Len() != 0 || strings.Count(stdout.String(), "\n") != 1 {
		t.Errorf("token create --local: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}

	stderr.Reset()
	if code := run([]string{"workers", "list", "--config", cfg}, io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), "unreachable") {
		t.Errorf("workers list: exit %d, stderr %q", code, stderr.String())
	}

	// A missing operator certificate is reported, not papered over.
	stderr.Reset()
	missing := filepath.Join(dir, "nope.crt")
	if code := run([]string{"token", "create", "--config", cfg, "--worker", "api", "--admin-cert", missing}, io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), "--local") {
		t.Errorf("token create without admin cert: exit %d, stderr %q", code, stderr.String())
	}

	stdout.Reset()
	stderr.Reset()
	out := filepath.Join(dir, "elsewhere")
	if code := run([]string{"admin", "cert", "--config", cfg, "--name", "ops-2", "--lifetime", "1h", "--out", out}, &stdout, &stderr); code != 0 {
		t.Fatalf("admin cert: exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "spiffe://crank.internal/admin/ops-2") || !strings.Contains(stderr.String(), "admin.spiffeIDs") {
		t.Errorf("admin cert output: %q / %q", stdout.String(), stderr.String())
	}
	for name, mode := range map[string]os.FileMode{"ops-2.crt": 0o644, "ops-2.key": 0o600} {
		if fi, err := os.Stat(filepath.Join(out, name)); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v %v, want mode %v", name, err, fi, mode)
		}
	}
	// The default identity is already an admin: no reminder.
	stderr.Reset()
	if code := run([]string{"admin", "cert", "--config", cfg, "--name", "operator", "--out", out}, io.Discard, &stderr); code != 0 || stderr.Len() != 0 {
		t.Errorf("admin cert --name operator: exit %d, stderr %q", code, stderr.String())
	}
}

// TestAdminCertSPIFFEID: --spiffe-id issues a client-only certificate for a
// configured controller, named after the ID's last segment, and refuses an
// ID the configuration does not name (such as a worker's).
func TestAdminCertSPIFFEID(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	res, err := setup.Init(setup.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(res.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	const ctlID = "spiffe://crank.internal/controller/crank"
	cfg.Admin.Controllers = []config.Controller{{SPIFFEID: ctlID, Provisioner: "workers", WorkerPattern: "build-[0-9]+", MaxTTL: config.Dur(time.Hour)}}
	cfgPath := filepath.Join(dir, "with-controller.json")
	if err := cfg.Write(cfgPath); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		id         string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "controller", id: ctlID, wantStdout: "Issued a controller certificate for " + ctlID},
		{name: "admin", id: "spiffe://crank.internal/admin/operator", wantStdout: "Issued an operator certificate"},
		{name: "worker", id: "spiffe://crank.internal/worker/build-1", wantCode: 1, wantStderr: "neither in admin.spiffeIDs nor in admin.controllers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out := filepath.Join(t.TempDir(), "certs")
			var stdout, stderr bytes.Buffer
			code := run([]string{"admin", "cert", "--config", cfgPath, "--spiffe-id", tt.id, "--out", out}, &stdout, &stderr)
			if code != tt.wantCode || !strings.Contains(stdout.String(), tt.wantStdout) || !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d, %q, %q", code, stdout.String(), stderr.String(), tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
			if tt.wantCode != 0 {
				return
			}
			base := tt.id[strings.LastIndex(tt.id, "/")+1:]
			pair, err := tls.LoadX509KeyPair(filepath.Join(out, base+".crt"), filepath.Join(out, base+".key"))
			if err != nil {
				t.Fatal(err)
			}
			leaf, err := x509.ParseCertificate(pair.Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != tt.id || !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
				t.Errorf("certificate URIs %v, EKU %v; want exactly %s, clientAuth only", leaf.URIs, leaf.ExtKeyUsage, tt.id)
			}
		})
	}
}
