package integration

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// legoCLI returns the path of the lego command (the Debian package; .ci/run
// installs it), skipping the test when it is not installed.
func legoCLI(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("lego")
	if err != nil {
		// Building it is no alternative: lego's command imports every DNS
		// provider's SDK, which crank-ca's go.sum does not cover.
		t.Skip("the lego command is not installed (apt-get install lego; .ci/run does)")
	}
	return p
}

// quickStartScript turns the README's quick-start blocks into one bash
// script. Each step first prints a line "@@step N@@" so that its output can
// be told apart; it returns the documented outputs by step number.
//
// The mechanical substitutions, and nothing else:
//   - the step that is exactly `make run` becomes `:`, because the test has
//     already done what it does: `crank-ca init --dir .crank-ca` (with
//     --listen on a free loopback port) and `crank-ca serve` in the
//     background;
//   - the port 9090 of `localhost:9090` and `127.0.0.1:9090` becomes that
//     port;
//   - `bin/` is not substituted: the working directory has a bin/ with the
//     binaries the test built, and .crank-ca/ is the CA's directory, as
//     after `make run` in a checkout.
func quickStartScript(t *testing.T, blocks []docBlock, port string) (string, map[int]docBlock) {
	t.Helper()
	var sb strings.Builder
	sb.WriteString("set -eo pipefail\n")
	outputs := map[int]docBlock{}
	step := 0
	for _, b := range blocks {
		body := strings.NewReplacer("localhost:9090", "localhost:"+port, "127.0.0.1:9090", "127.0.0.1:"+port).Replace(b.Body)
		switch {
		case b.Marker == "quickstart" && strings.TrimSpace(body) == "make run":
			step++
			fmt.Fprintf(&sb, "echo '@@step %d@@'\n: make run: the test serves the CA\n", step)
		case b.Marker == "quickstart":
			step++
			fmt.Fprintf(&sb, "echo '@@step %d@@'\n%s", step, body)
		case b.Marker == "quickstart:file":
			if b.Arg == "" || strings.Contains(body, "\nQUICKSTART_EOF\n") {
				t.Fatalf("%s: a file block needs a name", b)
			}
			fmt.Fprintf(&sb, "cat > %q <<'QUICKSTART_EOF'\n%sQUICKSTART_EOF\n", b.Arg, body)
		case b.Marker == "quickstart:output":
			if step == 0 {
				t.Fatalf("%s: output before any step", b)
			}
			outputs[step] = b
		default:
			t.Fatalf("%s: unknown marker", b)
		}
	}
	if step == 0 {
		t.Fatal("README.md has no <!-- quickstart --> blocks")
	}
	return sb.String(), outputs
}

var stepRE = regexp.MustCompile(`(?m)^@@step (\d+)@@$`)

// splitSteps cuts the script's output at the step lines.
func splitSteps(out string) map[int]string {
	steps := map[int]string{}
	locs := stepRE.FindAllStringSubmatchIndex(out, -1)
	for i, l := range locs {
		n, _ := strconv.Atoi(out[l[2]:l[3]])
		end := len(out)
		if i+1 < len(locs) {
			end = locs[i+1][0]
		}
		steps[n] = out[l[1]:end]
	}
	return steps
}

// TestReadmeQuickStart runs the README's quick start as a script, as
// written (with the substitutions quickStartScript lists), against a fresh
// CA directory served by the real binaries, and checks:
//   - every step succeeds and prints what the README shows after it;
//   - the lego-library program's module steps name the lego version of
//     go.mod, and it saves the certificate's key (0600, PKCS #8) beside the
//     certificate, in its own directory;
//   - everything the script leaves in the checkout is ignored by .gitignore;
//   - the README's "5-minute certificates" claims, put into the
//     configuration and reloaded with SIGHUP, give 5-minute certificates.
//
// The certbot step is not run: it binds port 80 as root.
func TestReadmeQuickStart(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binaries, lego and a Go program")
	}
	legoCLI(t)
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl is not installed")
	}
	began := time.Now()
	readme := "../README.md"
	blocks := docBlocks(t, readme)

	// The lego version the README tells the reader to `go get`.
	goMod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*github\.com/go-acme/lego/v4 (v\S+)`).FindSubmatch(goMod)
	if m == nil {
		t.Fatal("go.mod does not require github.com/go-acme/lego/v4")
	}
	legoVersion := string(m[1])
	var quick, claims []docBlock
	for _, b := range blocks {
		switch {
		case b.Marker == "doccheck" && b.Arg == "demo-claims":
			claims = append(claims, b)
		case strings.HasPrefix(b.Marker, "quickstart"):
			quick = append(quick, b)
		}
	}
	readmeText, _ := os.ReadFile(readme)
	if got := regexp.MustCompile(`go get github\.com/go-acme/lego/v4@(\S+)`).FindAllSubmatch(readmeText, -1); len(got) == 0 {
		t.Error("README.md: no `go get github.com/go-acme/lego/v4@VERSION` step")
	} else {
		for _, g := range got {
			if string(g[1]) != legoVersion {
				t.Errorf("README.md: go get lego %s, go.mod has %s", g[1], legoVersion)
			}
		}
	}

	work, cfgPath, port, srv := readmeCheckout(t)
	script, outputs := quickStartScript(t, quick, port)
	tmp := t.TempDir() // mktemp -d of the script creates its directories here
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "GOWORK=off")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	steps := splitSteps(out.String())
	if err != nil {
		t.Fatalf("the quick start failed (%v) in step %d:\n%s\n--- script:\n%s\n--- serve log:\n%s",
			err, len(steps), steps[len(steps)], script, srv.logs)
	}
	for n, b := range outputs {
		if err := matchInOrder(b.Body, steps[n]); err != nil {
			t.Errorf("%s, output of step %d: %v\n--- real output:\n%s", b, n, err, steps[n])
		}
	}
	t.Logf("quick start script: %s", time.Since(began))

	// The lego-library program saved certificate and key in its own directory.
	keys, _ := filepath.Glob(filepath.Join(tmp, "*", "hello.key"))
	if len(keys) != 1 {
		t.Fatalf("want one hello.key under the program's directory, found %v", keys)
	}
	checkSavedKey(t, keys[0], filepath.Join(filepath.Dir(keys[0]), "hello.crt"))

	// Whatever the quick start wrote into the checkout is ignored by git.
	checkIgnored(t, work)

	// "5-minute certificates for a demo": the README's claims, reloaded.
	if len(claims) != 1 {
		t.Fatalf("README.md: want one <!-- doccheck demo-claims --> block, found %d", len(claims))
	}
	demoClaims(t, claims[0], cfgPath, srv)
	t.Logf("total: %s", time.Since(began))
}

// readmeCheckout makes a directory as a checkout is after `make run`: bin/
// with the binaries (built by the test) and .crank-ca/ with a CA that
// `crank-ca serve` serves on a free loopback port, which it returns.
func readmeCheckout(t *testing.T) (work, cfgPath, port string, srv *cliServe) {
	t.Helper()
	work = t.TempDir()
	bin := binary(t, "crank-ca")
	if err := os.Symlink(filepath.Dir(bin), filepath.Join(work, "bin")); err != nil {
		t.Fatal(err)
	}
	caDir := filepath.Join(work, ".crank-ca")
	port = strconv.Itoa(freePort(t))
	addr := "127.0.0.1:" + port
	if out, errOut, code := runCmd(t, bin, "init", "--dir", caDir, "--listen", addr); code != 0 {
		t.Fatalf("init: exit %d\n%s%s", code, out, errOut)
	}
	cfgPath = filepath.Join(caDir, "crank-ca.json")
	srv = startCLIServe(t, bin, cfgPath, caDir, addr)
	t.Cleanup(func() { srv.stop(t) })
	return work, cfgPath, port, srv
}

// TestReadmeTwoWorkers runs the README's "Run two workers" commands for
// alpha and beta as written, each in its own bash, against a CA served as
// after `make run`, and checks alpha's log against the README's: the same
// messages with the same fields, in order. Substitutions: the CA's port
// 9090 and the workers' 8443 and 8444 become free loopback ports, and each
// worker gets its own state directory through $CRANK_STATE_DIR (an
// environment variable the README names, not a change of the commands).
func TestReadmeTwoWorkers(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl is not installed")
	}
	began := time.Now()
	named := map[string]docBlock{}
	for _, b := range docBlocks(t, "../README.md") {
		if b.Marker == "doccheck" {
			named[b.Arg] = b
		}
	}
	for _, n := range []string{"readme-alpha", "readme-beta", "readme-alpha-log"} {
		if _, ok := named[n]; !ok {
			t.Fatalf("README.md has no <!-- doccheck %s --> block", n)
		}
	}
	work, _, port, srv := readmeCheckout(t)
	subst := strings.NewReplacer("localhost:9090", "localhost:"+port, "127.0.0.1:9090", "127.0.0.1:"+port,
		"127.0.0.1:8443", "127.0.0.1:"+strconv.Itoa(freePort(t)), "127.0.0.1:8444", "127.0.0.1:"+strconv.Itoa(freePort(t)))
	var logs [2]syncBuffer
	for i, name := range []string{"alpha", "beta"} {
		cmd := exec.Command("bash", "-c", "set -eo pipefail\n"+subst.Replace(named["readme-"+name].Body))
		cmd.Dir = work
		cmd.Env = append(os.Environ(), "CRANK_STATE_DIR="+filepath.Join(t.TempDir(), name))
		cmd.Stdout, cmd.Stderr = &logs[i], &logs[i]
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			_ = cmd.Wait()
		})
	}
	for i, name := range []string{"alpha", "beta"} {
		cliWaitFor(t, name+" greeted by its peer", func() bool { return strings.Contains(logs[i].String(), `msg="peer answered"`) }, &logs[i])
	}
	if err := matchLogsInOrder(named["readme-alpha-log"].Body, logs[0].String()); err != nil {
		t.Errorf("%s: %v\n--- alpha's log:\n%s\n--- serve log:\n%s", named["readme-alpha-log"], err, logs[0].String(), srv.logs)
	}
	// docs/workers.md shows the same first start.
	for _, b := range docBlocks(t, "../docs/workers.md") {
		if b.Marker == "doccheck-log" && b.Arg == "workers-first-start" {
			if err := matchLogsInOrder(b.Body, logs[0].String()); err != nil {
				t.Errorf("%s: %v\n--- alpha's log:\n%s", b, err, logs[0].String())
			}
		}
	}
	t.Logf("two workers greeting each other, log checked: %s", time.Since(began))
}

// checkSavedKey checks the key file of the README's lego-library program:
// mode 0600, PKCS #8 PEM, the key of the certificate beside it.
func checkSavedKey(t *testing.T, keyPath, certPath string) {
	t.Helper()
	st, err := os.Stat(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, want 0600", keyPath, st.Mode().Perm())
	}
	keyPEM, _ := os.ReadFile(keyPath)
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" {
		t.Fatalf("%s: not a PKCS #8 PEM key", keyPath)
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", keyPath, err)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	chain := parseChain(t, certPEM)
	if len(chain) != 2 {
		t.Errorf("%s: %d certificates, want leaf + intermediate", certPath, len(chain))
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		t.Fatalf("%s: a %T is not a signing key", keyPath, key)
	}
	if pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(chain[0].PublicKey) {
		t.Errorf("%s does not hold the key of %s", keyPath, certPath)
	}
}

// checkIgnored fails for every top-level entry of dir that the repository's
// .gitignore does not ignore (rooted patterns as written there).
func checkIgnored(t *testing.T, dir string) {
	t.Helper()
	gi, err := os.ReadFile("../.gitignore")
	if err != nil {
		t.Fatal(err)
	}
	ignored := map[string]bool{}
	for _, l := range strings.Split(string(gi), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			ignored[strings.TrimSuffix(strings.TrimPrefix(l, "/"), "/")] = true
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !ignored[e.Name()] {
			t.Errorf("the quick start leaves %s in the checkout, which .gitignore does not ignore", e.Name())
		}
	}
}

// demoClaims applies the README's demo claims to the workers provisioner,
// reloads serve with SIGHUP and checks that a new worker certificate lasts
// 5 minutes.
func demoClaims(t *testing.T, b docBlock, cfgPath string, srv *cliServe) {
	t.Helper()
	var snippet struct {
		Claims map[string]string `json:"claims"`
	}
	if err := json.Unmarshal([]byte("{"+strings.TrimSuffix(strings.TrimSpace(b.Body), ",")+"}"), &snippet); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	setWorkersClaims(t, cfgPath, srv, snippet.Claims)

	issued := time.Now()
	leaf, _, _ := docEnroll(t, srv, cfgPath, "hello") // docs_test.go
	if left := leaf.NotAfter.Sub(issued); left < 4*time.Minute || left > 6*time.Minute {
		t.Errorf("after the README's demo claims a certificate lasts %s from issuance, want 5m", left.Round(time.Second))
	}
}

// setWorkersClaims sets claims of the workers provisioner in the
// configuration file and reloads serve with SIGHUP, as the README's demo
// tells the reader to.
func setWorkersClaims(t *testing.T, cfgPath string, srv *cliServe, claims map[string]string) {
	t.Helper()
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range cfg["provisioners"].([]any) {
		p := p.(map[string]any)
		if p["name"] != "workers" {
			continue
		}
		found = true
		old := p["claims"].(map[string]any)
		for k := range old {
			if _, ok := claims[k]; !ok {
				t.Errorf("the claims %v lack %q of the configuration init writes", claims, k)
			}
		}
		for k, v := range claims {
			old[k] = v
		}
	}
	if !found {
		t.Fatal("no workers provisioner in the configuration init wrote")
	}
	raw, err = json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	before := strings.Count(srv.logs.String(), "configuration reloaded")
	if err := srv.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	cliWaitFor(t, "configuration reloaded", func() bool {
		return strings.Count(srv.logs.String(), "configuration reloaded") > before
	}, srv.logs)
}
