package integration

import (
	"bufio"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// childScript is the worker program crank-agent supervises in
// TestCrankAgentSupervisesChild. $1 is a directory for its reports: env (its
// CRANK_* variables), ready (the serial it started with) and sigs (one line
// per signal, HUP lines with the serial of cert.pem at that moment).
const childScript = `#!/bin/sh
dir="$1"
env | grep '^CRANK_' | sort > "$dir/env"
for f in "$CRANK_CERT_FILE" "$CRANK_KEY_FILE" "$CRANK_CHAIN_FILE" "$CRANK_ROOT_FILE"; do
	[ -s "$f" ] || { echo "missing $f" >&2; exit 9; }
done
serial() {
	if command -v openssl >/dev/null 2>&1; then
		openssl x509 -noout -serial -in "$CRANK_CERT_FILE" | sed 's/^serial=//'
	else
		echo unknown
	fi
}
trap 'echo "HUP $(serial)" >> "$dir/sigs"' HUP
trap 'echo TERM >> "$dir/sigs"; exit 7' TERM
echo "$(serial)" > "$dir/ready"
# Leave with crank-agent should a failing test kill it.
while kill -0 "$PPID" 2>/dev/null; do sleep 0.1; done
`

// leafSerial reads the serial of the first certificate of a PEM file, in
// upper-case hex as openssl prints it.
func leafSerial(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return hexSerial(parseChain(t, b)[0].SerialNumber)
}

func hexSerial(n *big.Int) string { return strings.ToUpper(n.Text(16)) }

// sameSerial compares serials in hex, ignoring openssl's leading zero.
func sameSerial(a, b string) bool {
	return strings.TrimLeft(strings.ToUpper(a), "0") == strings.TrimLeft(strings.ToUpper(b), "0")
}

// TestCrankAgentSupervisesChild: crank-agent obtains a certificate, starts
// the worker's program with the file paths in its environment, rewrites the
// files and sends SIGHUP on every rotation (files first: the child sees the
// new serial), forwards SIGTERM, and exits with the child's status.
func TestCrankAgentSupervisesChild(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs the crank-agent binary through certificate renewals")
	}
	bin := binary(t, "crank-agent")
	c := newCA(t, shortLived(20*time.Second))
	c.start()

	tmp := t.TempDir()
	state, reports := filepath.Join(tmp, "state"), filepath.Join(tmp, "reports")
	if err := mkdir(reports); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(tmp, "child.sh")
	if err := os.WriteFile(script, []byte(childScript), 0o700); err != nil {
		t.Fatal(err)
	}

	var logs syncBuffer
	cmd := exec.Command(bin, "--ca-url", c.url, "--fingerprint", c.fingerprint(), "--worker", "api", "--state", state,
		"--", script, reports)
	// The token comes from the environment, which the child must not see.
	cmd.Env = append(os.Environ(), "CRANK_TOKEN="+c.token("api").Encode())
	cmd.Stdout, cmd.Stderr = &logs, &logs
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited, gone := make(chan error, 1), make(chan struct{})
	go func() {
		exited <- cmd.Wait()
		close(gone)
	}()
	t.Cleanup(func() {
		// After a failure let crank-agent stop its child; kill it only if
		// that does not work.
		select {
		case <-gone:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-gone:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
		}
	})

	readReport := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(reports, name))
		return string(b)
	}
	// waitFor polls cond until it holds, the agent exits, or limit passes.
	waitFor := func(what string, limit time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(limit)
		for !cond() {
			select {
			case err := <-exited:
				t.Fatalf("crank-agent exited (%v) while waiting for %s\n%s", err, what, logs.String())
			case <-time.After(100 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s within %s\nreports: ready %q sigs %q\n%s", what, limit, readReport("ready"), readReport("sigs"), logs.String())
			}
		}
	}

	out := filepath.Join(state, "tls")
	certFile := filepath.Join(out, "cert.pem")
	waitFor("child start", 30*time.Second, func() bool { return readReport("ready") != "" })
	t.Logf("certificate obtained and child started after %s", time.Since(start).Round(time.Millisecond))
	// The serial the child was started with, as crank-agent logged it.
	m := regexp.MustCompile(`msg="certificate files written" worker=api serial=([0-9]+)`).FindStringSubmatch(logs.String())
	if m == nil {
		t.Fatalf("no start-up serial logged\n%s", logs.String())
	}
	firstN, _ := new(big.Int).SetString(m[1], 10)
	first := hexSerial(firstN)

	env := readReport("env")
	for _, want := range []string{
		"CRANK_CERT_FILE=" + certFile,
		"CRANK_KEY_FILE=" + filepath.Join(out, "key.pem"),
		"CRANK_CHAIN_FILE=" + filepath.Join(out, "chain.pem"),
		"CRANK_ROOT_FILE=" + filepath.Join(out, "root.pem"),
		"CRANK_SPIFFE_ID=spiffe://crank.internal/worker/api",
	} {
		if !strings.Contains(env, want+"\n") {
			t.Errorf("child environment lacks %s:\n%s", want, env)
		}
	}
	if strings.Contains(env, "CRANK_TOKEN") {
		t.Error("the join token was passed on to the child")
	}
	_, haveOpenSSL := exec.LookPath("openssl")

	waitFor("rotation and SIGHUP", 60*time.Second, func() bool {
		return strings.Contains(readReport("sigs"), "HUP") && !sameSerial(leafSerial(t, certFile), first)
	})
	t.Logf("first rotation signalled after %s", time.Since(start).Round(time.Millisecond))
	sc := bufio.NewScanner(strings.NewReader(readReport("sigs")))
	for sc.Scan() {
		serial, ok := strings.CutPrefix(sc.Text(), "HUP ")
		if !ok {
			t.Errorf("unexpected report line %q", sc.Text())
			continue
		}
		// Files are written before the signal: the child never sees the
		// certificate it started with when it is told to reload.
		if haveOpenSSL == nil && sameSerial(serial, first) {
			t.Errorf("child got SIGHUP while cert.pem still held the first serial %s", first)
		}
	}
	// With 20s certificates the next renewal is ~13s away: more renewals
	// than that within a second of the first one is a renewal storm.
	time.Sleep(time.Second)
	if n := strings.Count(logs.String(), `msg="certificate renewed"`); n > 2 {
		t.Errorf("renewal storm: %d renewals %s after start with 20s certificates, child got %d SIGHUPs",
			n, time.Since(start).Round(time.Millisecond), strings.Count(readReport("sigs"), "HUP"))
	}
	for _, want := range []string{"certificate renewed", "signalled the child after rotation", "certificate rotated; files written"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q", want)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 7 {
			t.Fatalf("crank-agent exit: %v, want the child's status 7\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("crank-agent did not exit after SIGTERM\n%s", logs.String())
	}
	if !strings.HasSuffix(readReport("sigs"), "TERM\n") {
		t.Errorf("child did not get the forwarded SIGTERM: %q", readReport("sigs"))
	}
	info, err := os.Stat(filepath.Join(out, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("key.pem mode %v, want 0600", info.Mode().Perm())
	}
}

// TestCrankAgentOnce: --once writes the four files and exits 0; a worker
// restarted with valid state starts without contacting the CA, and without a
// token.
func TestCrankAgentOnce(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs the crank-agent binary")
	}
	bin := binary(t, "crank-agent")
	c := newCA(t, nil)
	c.start()
	state, out := filepath.Join(t.TempDir(), "state"), filepath.Join(t.TempDir(), "out")
	args := []string{"--once", "--ca-url", c.url, "--fingerprint", c.fingerprint(), "--worker", "api", "--state", state, "--out", out}

	_, errOut, code := runCmd(t, bin, append(args, "--token", c.token("api").Encode())...)
	if code != 0 {
		t.Fatalf("--once: exit %d\n%s", code, errOut)
	}
	for name, mode := range map[string]os.FileMode{"cert.pem": 0o644, "chain.pem": 0o644, "key.pem": 0o600, "root.pem": 0o644} {
		info, err := os.Stat(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", name, info.Mode().Perm(), mode)
		}
	}
	serial := leafSerial(t, filepath.Join(out, "cert.pem"))
	if n := len(parseChain(t, mustRead(t, filepath.Join(out, "cert.pem")))); n != 1 {
		t.Errorf("cert.pem holds %d certificates, want the leaf alone", n)
	}
	if n := len(parseChain(t, mustRead(t, filepath.Join(out, "chain.pem")))); n < 2 {
		t.Errorf("chain.pem holds %d certificates, want leaf and intermediate", n)
	}

	c.stop()
	if err := os.RemoveAll(out); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = runCmd(t, bin, args...)
	if code != 0 {
		t.Fatalf("--once from state with the CA down: exit %d\n%s", code, errOut)
	}
	if got := leafSerial(t, filepath.Join(out, "cert.pem")); got != serial {
		t.Errorf("restart wrote serial %s, want %s from state", got, serial)
	}
	if !strings.Contains(errOut, "using certificate from state") {
		t.Errorf("log: %s", errOut)
	}
}

// TestCrankAgentDaemon: without a command and without --once crank-agent
// writes the files, keeps running, and exits 0 on SIGTERM; --log-format json
// keeps every stderr line JSON, lego's included.
func TestCrankAgentDaemon(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs the crank-agent binary")
	}
	bin := binary(t, "crank-agent")
	c := newCA(t, nil)
	c.start()
	state := filepath.Join(t.TempDir(), "state")
	var logs syncBuffer
	cmd := exec.Command(bin, "--ca-url", c.url, "--fingerprint", c.fingerprint(), "--worker", "api", "--state", state,
		"--log-format", "json", "--log-level", "debug", "--token", c.token("api").Encode())
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), "renewal planned") && !strings.Contains(logs.String(), "renewalInfo poll planned") {
		select {
		case err := <-exited:
			t.Fatalf("crank-agent exited: %v\n%s", err, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon never planned a renewal\n%s", logs.String())
		}
	}
	if _, err := os.Stat(filepath.Join(state, "tls", "cert.pem")); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("daemon exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon did not exit after SIGTERM\n%s", logs.String())
	}
	sawLego := false
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if !json.Valid([]byte(line)) {
			t.Errorf("not a JSON log line: %q", line)
		}
		sawLego = sawLego || strings.Contains(line, `"lib":"lego"`)
	}
	if !sawLego {
		t.Error("no lego log line at debug level")
	}
}

// TestCrankAgentStartErrors: each start-up failure exits non-zero with a
// message naming the problem.
func TestCrankAgentStartErrors(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs the crank-agent binary")
	}
	bin := binary(t, "crank-agent")
	c := newCA(t, nil)
	c.start()
	used := c.token("api").Encode()
	if _, errOut, code := runCmd(t, bin, "--once", "--ca-url", c.url, "--fingerprint", c.fingerprint(), "--worker", "api",
		"--state", t.TempDir(), "--token", used); code != 0 {
		t.Fatalf("first use of the token: exit %d\n%s", code, errOut)
	}
	for _, tc := range []struct {
		name               string
		url, fp, token     string
		wantCode           int
		wantIn, wantInLast string
	}{
		{"wrong fingerprint", c.url, strings.Repeat("ab", 32), c.token("api").Encode(), 1, "fingerprint", "does not match the pinned fingerprint"},
		{"used token", c.url, c.fingerprint(), used, 1, "join token", "the CA refused the join token"},
		{"garbage token", c.url, c.fingerprint(), "ct1.garbage", 2, "join token", "malformed join token"},
		{"unreachable CA", "https://127.0.0.1:1", c.fingerprint(), c.token("api").Encode(), 1, "unreachable", "the CA is unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			_, errOut, code := runCmd(t, bin, "--once", "--ca-url", tc.url, "--fingerprint", tc.fp, "--worker", "api",
				"--state", filepath.Join(t.TempDir(), "state"), "--token", tc.token)
			lines := strings.Split(strings.TrimSpace(errOut), "\n")
			msg := lines[len(lines)-1]
			if code == 2 && len(lines) > 1 {
				msg = lines[len(lines)-2] // followed by the usage hint
			}
			if code != tc.wantCode || !strings.HasPrefix(msg, "crank-agent: ") || !strings.Contains(msg, tc.wantIn) || !strings.Contains(msg, tc.wantInLast) {
				t.Errorf("exit %d, message %q; want exit %d and a crank-agent: line mentioning %q\n%s", code, msg, tc.wantCode, tc.wantIn, errOut)
			}
			t.Logf("%s: exit %d after %s: %s", tc.name, code, time.Since(start).Round(time.Millisecond), msg)
		})
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
