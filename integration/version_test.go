package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/internal/version"
)

// vcsOf returns the revision (with -dirty for a modified tree) recorded in
// the binary at path, "" if it carries none.
func vcsOf(t *testing.T, path string) string {
	t.Helper()
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		t.Fatalf("build info of %s: %v", path, err)
	}
	return version.FromBuildInfo("", bi).Revision
}

// gitHead returns the commit of the checkout the tests run in and whether
// its tree has changes, or ok false when this is not a git checkout.
func gitHead(t *testing.T) (rev string, dirty, ok bool) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		return "", false, false
	}
	out, err := exec.CommandContext(t.Context(), "git", "-C", "..", "rev-parse", "HEAD").Output()
	if err != nil {
		return "", false, false
	}
	st, err := exec.CommandContext(t.Context(), "git", "-C", "..", "status", "--porcelain").Output()
	if err != nil {
		return "", false, false
	}
	return strings.TrimSpace(string(out)), len(bytes.TrimSpace(st)) > 0, true
}

// TestVersion runs the programs as the integration tests build them:
// `crank-ca version`, `crank-ca --version`, `crank-agent --version` and
// `hello-worker --version` name the program and the Go version and, for a
// binary built from a git checkout, the commit; `crank-ca version --json`
// has the same fields; and a serving crank-ca reports its version on
// /health.
func TestVersion(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	tests := []struct {
		program string
		args    []string
	}{
		{"crank-ca", []string{"version"}},
		{"crank-ca", []string{"--version"}},
		{"crank-agent", []string{"--version"}},
		{"hello-worker", []string{"--version"}},
		{"hello-worker", []string{"-version"}},
	}
	for _, tc := range tests {
		t.Run(tc.program+" "+strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			bin := binary(t, tc.program)
			out, errOut, code := runCmd(t, bin, tc.args...)
			if code != 0 || errOut != "" {
				t.Fatalf("code %d, stderr %q", code, errOut)
			}
			line := strings.TrimSpace(out)
			if strings.Count(out, "\n") != 1 || !strings.HasPrefix(line, tc.program+" ") || !strings.Contains(line, runtime.Version()) {
				t.Errorf("output %q: want one line naming %s and %s", out, tc.program, runtime.Version())
			}
			if rev := vcsOf(t, bin); rev != "" && !strings.Contains(line, "commit "+rev) {
				t.Errorf("output %q does not name the commit %s the binary was built from", line, rev)
			}
		})
	}

	t.Run("built from git", func(t *testing.T) {
		t.Parallel()
		head, dirty, ok := gitHead(t)
		if !ok {
			t.Skip("not a git checkout")
		}
		// The test binaries may be built without VCS information (GOFLAGS
		// -buildvcs=false); a release build never is.
		bin := filepath.Join(t.TempDir(), "crank-ca")
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "go", "build", "-buildvcs=true", "-o", bin, "../cmd/crank-ca").CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
		want := head
		if dirty {
			want += "-dirty"
		}
		out, _, code := runCmd(t, bin, "version")
		if code != 0 || !strings.Contains(out, "commit "+want+",") {
			t.Errorf("version of a build from git: code %d, %q; want commit %s", code, out, want)
		}
	})

	t.Run("json and /health", func(t *testing.T) {
		t.Parallel()
		bin := binary(t, "crank-ca")
		out, _, code := runCmd(t, bin, "version", "--json")
		var info version.Info
		if err := json.Unmarshal([]byte(out), &info); code != 0 || err != nil {
			t.Fatalf("version --json: code %d, %v\n%s", code, err, out)
		}
		if info.GoVersion != runtime.Version() || info.Platform != runtime.GOOS+"/"+runtime.GOARCH || info.Revision != vcsOf(t, bin) || info.Version == "" {
			t.Errorf("version --json: %+v", info)
		}

		dir := filepath.Join(t.TempDir(), "ca")
		addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
		if out, errOut, code := runCmd(t, bin, "init", "--dir", dir, "--listen", addr); code != 0 {
			t.Fatalf("init: code %d\n%s%s", code, out, errOut)
		}
		s := startCLIServe(t, bin, filepath.Join(dir, "crank-ca.json"), dir, addr)
		for _, path := range []string{"/health", "/health/live"} {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.url+path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := s.client(nil).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var health map[string]string
			err = json.NewDecoder(resp.Body).Decode(&health)
			resp.Body.Close()
			if err != nil || health["status"] != "ok" || health["version"] != info.Short() {
				t.Errorf("GET %s: %v %v; want status ok and version %q", path, health, err, info.Short())
			}
		}
		s.stop(t)
	})
}

// TestReleaseBuild runs `make release` for this machine's platform and
// checks what it produced: static, stripped ELF binaries built with
// CGO_ENABLED=0, -trimpath and `make build`'s tags, that print the stamp
// `git describe --always --dirty` gives and the commit, and a SHA256SUMS
// file that matches them.
func TestReleaseBuild(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds release binaries")
	}
	if runtime.GOOS != "linux" {
		t.Skip("release binaries are checked as ELF files")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	head, dirty, ok := gitHead(t)
	if !ok {
		t.Skip("not a git checkout: make release stamps `git describe`")
	}
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	platform := runtime.GOOS + "/" + runtime.GOARCH
	cmd := exec.CommandContext(ctx, "make", "-C", "..", "release", "RELEASE_DIR="+out, "RELEASE_PLATFORMS="+platform)
	// The stamp under test is the Makefile's default, not a VERSION that
	// happens to be in the environment.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "VERSION=") })
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make release: %v\n%s", err, b)
	}
	desc, err := exec.CommandContext(t.Context(), "git", "-C", "..", "describe", "--always", "--dirty").Output()
	if err != nil {
		t.Fatal(err)
	}
	stamp := strings.TrimSpace(string(desc))
	wantRev := head
	if dirty {
		wantRev += "-dirty"
	}

	dir := filepath.Join(out, runtime.GOOS+"-"+runtime.GOARCH)
	sums, err := os.ReadFile(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	for _, program := range []string{"crank-ca", "crank-agent", "hello-worker"} {
		t.Run(program, func(t *testing.T) {
			bin := filepath.Join(dir, program)
			f, err := elf.Open(bin)
			if err != nil {
				t.Fatalf("%s: %v", bin, err)
			}
			defer f.Close()
			if slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC }) {
				t.Error("dynamically linked (PT_INTERP or PT_DYNAMIC present)")
			}
			if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
				t.Errorf("needs shared libraries %v", libs)
			}
			// -trimpath keeps -ldflags out of the build information, so
			// stripping (-s -w) shows as missing symbol and DWARF sections.
			if f.Section(".symtab") != nil || f.Section(".debug_info") != nil {
				t.Error("not stripped: .symtab or .debug_info present")
			}
			bi, err := buildinfo.ReadFile(bin)
			if err != nil {
				t.Fatal(err)
			}
			settings := map[string]string{}
			for _, s := range bi.Settings {
				settings[s.Key] = s.Value
			}
			if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" || settings["-tags"] != "nobadger,nomysql" {
				t.Errorf("build settings CGO_ENABLED=%q -trimpath=%q -tags=%q", settings["CGO_ENABLED"], settings["-trimpath"], settings["-tags"])
			}
			b, err := os.ReadFile(bin)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(b)
			if !strings.Contains(string(sums), hex.EncodeToString(sum[:])+"  "+program+"\n") {
				t.Errorf("SHA256SUMS does not list %s with its digest:\n%s", program, sums)
			}
			out, _, code := runCmd(t, bin, "--version")
			want := program + " " + stamp + " (commit " + wantRev + ","
			if code != 0 || !strings.HasPrefix(out, want) {
				t.Errorf("--version: code %d, %q; want it to start with %q", code, out, want)
			}
			t.Logf("%s", strings.TrimSpace(out))
		})
	}
}

// TestSystemdUnits checks config/systemd's units with systemd-analyze, as
// installed but with ExecStart pointing at the binaries the tests built
// (verify requires them to exist): `verify` must pass without a single
// complaint (it reports unknown or unparsable settings on stderr but still
// exits 0), and the offline `security` score must stay at "OK" (2.0 or
// below), so that hardening cannot quietly erode. It skips when
// systemd-analyze is missing; .ci/run installs it.
func TestSystemdUnits(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (.ci/run installs the systemd package)")
	}
	binDir := filepath.Dir(binary(t, "crank-ca"))
	units, err := filepath.Glob("../config/systemd/*.service")
	if err != nil || len(units) < 2 {
		t.Fatalf("units in config/systemd: %v %v", units, err)
	}
	dir := t.TempDir()
	for _, src := range units {
		name := filepath.Base(src)
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(b, []byte("ExecStart=/usr/local/bin/")) {
				t.Fatalf("%s: ExecStart does not run a binary from /usr/local/bin", name)
			}
			for _, want := range append([]string{
				"ProtectSystem=strict", "StateDirectory=", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes",
				"CapabilityBoundingSet=\n", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "SystemCallFilter=@system-service",
				"ReadWritePaths=", "User=",
			}, map[string][]string{
				"crank-ca.service":     {"ExecReload=/bin/kill -HUP $MAINPID", "ExecStart=/usr/local/bin/crank-ca serve --config "},
				"crank-agent@.service": {"EnvironmentFile=/etc/crank-agent/%i.env", "ExecStart=/usr/local/bin/crank-agent --worker %i "},
			}[name]...) {
				if !bytes.Contains(b, []byte("\n"+want)) {
					t.Errorf("%s lacks %q", name, want)
				}
			}
			path := filepath.Join(dir, name)
			b = bytes.ReplaceAll(b, []byte("/usr/local/bin/"), []byte(binDir+"/"))
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, analyze, "verify", "--man=no", path).CombinedOutput()
			if err != nil || len(bytes.TrimSpace(out)) > 0 {
				t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
			}
			out, err = exec.CommandContext(ctx, analyze, "security", "--offline=true", "--threshold=20", path).CombinedOutput()
			if err != nil {
				t.Errorf("systemd-analyze security %s: exposure above 2.0 (%v)\n%s", name, err, out)
			}
		})
	}
}
