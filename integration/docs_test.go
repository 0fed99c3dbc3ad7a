package integration

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"
)

// docsChecked names every <!-- doccheck NAME --> block of docs/*.md and the
// test that runs it. A marked block no test knows fails
// TestDocsMarkedBlocksChecked, so a marker cannot be added and forgotten.
var docsChecked = map[string]string{
	"admin-auth":                  "TestDocsAdminExamples",
	"admin-cert":                  "TestDocsAdminExamples",
	"admin-cert-forbidden":        "TestDocsAdminExamples",
	"admin-cert-renew":            "TestDocsAdminExamples",
	"admin-rotate":                "TestDocsAdminExamples",
	"admin-certs-list":            "TestDocsAdminExamples",
	"admin-revoke":                "TestDocsAdminExamples",
	"admin-worker-disable-enable": "TestDocsAdminExamples",
	"admin-workers-list":          "TestDocsAdminExamples",
	"admin-accounts-list":         "TestDocsAdminExamples",
	"admin-token-create":          "TestDocsAdminExamples",
	"admin-server-down-token":     "TestDocsAdminExamples",
	"admin-server-down-list":      "TestDocsAdminExamples",
	"workers-first-start":         "TestReadmeTwoWorkers",
	"workers-agent":               "TestDocsWorkersAgent",
	"workers-agent-log":           "TestDocsWorkersAgent",
	"workers-agent-stop":          "TestDocsWorkersAgent",
	"ops-init":                    "TestDocsOperationsExamples",
	"ops-backup":                  "TestDocsOperationsExamples",
	"ops-admin-cert-renew":        "TestDocsOperationsExamples",
	"ops-rotate-intermediate":     "TestDocsOperationsExamples",
	"ops-serve":                   "TestDocsOperationsExamples",
	"ops-serve-twice":             "TestDocsOperationsExamples",
}

// TestDocsMarkedBlocksChecked fails for a doccheck block of docs/*.md that
// no test runs, and for a name in docsChecked that no document has.
func TestDocsMarkedBlocksChecked(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../docs/*.md")
	if err != nil || len(files) == 0 {
		t.Fatalf("docs/*.md: %v", err)
	}
	seen := map[string]docBlock{}
	for _, f := range files {
		for _, b := range docBlocks(t, f) {
			if !slices.Contains([]string{"doccheck", "doccheck-log", "doccheck-run"}, b.Marker) {
				t.Errorf("%s: only doccheck, doccheck-log and doccheck-run markers are known in docs/", b)
				continue
			}
			if prev, ok := seen[b.Arg]; ok {
				t.Errorf("%s: name used before at %s", b, prev)
			}
			seen[b.Arg] = b
			if _, ok := docsChecked[b.Arg]; !ok {
				t.Errorf("%s: no test runs this block; add it to docsChecked and a scenario", b)
			}
			if b.Marker == "doccheck" && len(docCommands(b)) == 0 {
				t.Errorf("%s: no \"$ command\" line", b)
			}
			if b.Marker == "doccheck-log" && !slices.ContainsFunc(nonEmptyLines(b.Body), func(l string) bool { return logShape(l) != "" }) {
				t.Errorf("%s: no log line", b)
			}
		}
	}
	for name := range docsChecked {
		if _, ok := seen[name]; !ok {
			t.Errorf("docsChecked names %q, which no docs/*.md block is marked with", name)
		}
	}
}

// docScenario runs the commands of doccheck blocks as bash commands in a
// directory, with explicit substitutions applied to both the command and
// its documented output, and compares the real output with the
// documented one line by line (after normalize).
type docScenario struct {
	t      *testing.T
	dir    string            // working directory of the commands
	path   string            // PATH: the built binaries first
	subst  *strings.Replacer // documented value -> real value
	blocks map[string]docBlock
	used   map[string]int // commands run per block
}

func newDocScenario(t *testing.T, file, dir string) *docScenario {
	t.Helper()
	s := &docScenario{t: t, dir: dir, blocks: map[string]docBlock{}, used: map[string]int{}}
	s.path = filepath.Dir(binary(t, "crank-ca")) + string(os.PathListSeparator) + os.Getenv("PATH")
	for _, b := range docBlocks(t, file) {
		if b.Marker == "doccheck" {
			s.blocks[b.Arg] = b
		}
	}
	return s
}

// run runs the commands of block name (all of them, or those of the
// indexes given) and compares each output with the documentation.
func (s *docScenario) run(name string, indexes ...int) {
	t := s.t
	t.Helper()
	b, ok := s.blocks[name]
	if !ok {
		t.Fatalf("no <!-- doccheck %s --> block", name)
	}
	cmds := docCommands(b)
	if len(indexes) == 0 {
		for i := range cmds {
			indexes = append(indexes, i)
		}
	}
	for _, i := range indexes {
		c := cmds[i]
		command := s.subst.Replace(c.Command)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		cmd := exec.CommandContext(ctx, "bash", "-c", command)
		cmd.Dir = s.dir
		cmd.Env = append(os.Environ(), "PATH="+s.path)
		out, runErr := cmd.CombinedOutput()
		timedOut := ctx.Err() != nil
		cancel()
		if timedOut {
			t.Fatalf("%s: %q timed out", b, command)
		}
		norm := normalize
		if slices.Contains(b.Flags, "numbers") {
			norm = normalizeNumbers
		}
		if err := matchExactlyWith(s.subst.Replace(c.Output), string(out), norm); err != nil {
			t.Errorf("%s, $ %s\n%v\n--- real output (%v):\n%s", b, c.Command, err, runErr, out)
		}
		s.used[name]++
	}
}

// unused fails for blocks of the file whose commands did not all run.
func (s *docScenario) unused() {
	s.t.Helper()
	for name, b := range s.blocks {
		if n := len(docCommands(b)); s.used[name] != n {
			s.t.Errorf("%s: %d of its %d commands ran", b, s.used[name], n)
		}
	}
}

// docEnroll registers a worker with a token minted by the CLI and obtains
// its certificate with the lego library, as the documents' runs did.
func docEnroll(t *testing.T, srv *cliServe, cfgPath, worker string) (*x509.Certificate, []byte, []byte) {
	t.Helper()
	tok, errOut, code := runCmd(t, binary(t, "crank-ca"), "token", "create", "--config", cfgPath, "--worker", worker)
	if code != 0 {
		t.Fatalf("token create %s: exit %d: %s", worker, code, errOut)
	}
	tok = strings.TrimSpace(tok)
	i := strings.LastIndexByte(tok, '.')
	u := &legoUser{key: newKey(t)}
	lc := lego.NewConfig(u)
	lc.CADirURL = srv.url + "/acme/workers/directory"
	lc.HTTPClient = srv.client(nil)
	cl, err := lego.NewClient(lc)
	if err != nil {
		t.Fatal(err)
	}
	if u.reg, err = cl.Registration.RegisterWithExternalAccountBinding(registration.RegisterEABOptions{TermsOfServiceAgreed: true, Kid: tok[:i], HmacEncoded: tok[i+1:]}); err != nil {
		t.Fatalf("register %s: %v\n%s", worker, err, srv.logs)
	}
	key := newKey(t)
	res, err := cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: csrFor(t, key, "", []string{worker + ".workers.crank.internal"}, nil), PrivateKey: key, Bundle: true})
	if err != nil {
		t.Fatalf("obtain %s: %v\n%s", worker, err, srv.logs)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return parseChain(t, res.Certificate)[0], res.Certificate, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// TestDocsAdminExamples replays the run docs/admin.md's outputs come from
// (`init --dir /tmp/adocs-ca --listen 127.0.0.1:9393`, workers api and web
// enrolled with lego, the commands in the order that gives the states
// shown) and runs every marked example of it, comparing the output.
// Substitutions: the CA directory /tmp/adocs-ca and the port 9393 become
// the test's, and the two serials the document shows for api's and web's
// certificates become theirs.
func TestDocsAdminExamples(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	began := time.Now()
	bin := binary(t, "crank-ca")
	caDir := filepath.Join(t.TempDir(), "adocs-ca")
	port := strconv.Itoa(freePort(t))
	addr := "127.0.0.1:" + port
	if out, errOut, code := runCmd(t, bin, "init", "--dir", caDir, "--listen", addr); code != 0 {
		t.Fatalf("init: exit %d\n%s%s", code, out, errOut)
	}
	cfgPath := filepath.Join(caDir, "crank-ca.json")
	srv := startCLIServe(t, bin, cfgPath, caDir, addr)

	api, apiChain, apiKey := docEnroll(t, srv, cfgPath, "api")
	web, _, _ := docEnroll(t, srv, cfgPath, "web")
	// admin-auth presents api's certificate from where the lego CLI keeps it.
	certs := filepath.Join(caDir, "lego", "certificates")
	if err := os.MkdirAll(certs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(certs, "api.workers.crank.internal.crt"), apiChain, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(certs, "api.workers.crank.internal.key"), apiKey, 0o600); err != nil {
		t.Fatal(err)
	}

	s := newDocScenario(t, "../docs/admin.md", caDir)
	s.subst = strings.NewReplacer(
		"/tmp/adocs-ca", caDir,
		"localhost:9393", "localhost:"+port, "127.0.0.1:9393", addr,
		"49148647040360831595940012879441059295", api.SerialNumber.String(),
		"42855956960970165261148283572701800526", web.SerialNumber.String(),
	)
	s.run("admin-auth")
	s.run("admin-cert")
	s.run("admin-cert-forbidden")
	s.run("admin-rotate")
	s.run("admin-certs-list")
	s.run("admin-revoke")
	s.run("admin-worker-disable-enable", 0) // disable web
	s.run("admin-workers-list")
	s.run("admin-accounts-list")
	s.run("admin-token-create")
	s.run("admin-worker-disable-enable", 1) // enable web
	s.run("admin-cert-renew")
	srv.stop(t)
	s.run("admin-server-down-token")
	s.run("admin-server-down-list")
	s.unused()

	var names []string
	for name, test := range docsChecked {
		if test == "TestDocsAdminExamples" {
			names = append(names, name)
		}
	}
	for name := range s.blocks {
		if !slices.Contains(names, name) {
			t.Errorf("docs/admin.md block %q is not listed for TestDocsAdminExamples in docsChecked", name)
		}
	}
	t.Logf("docs/admin.md: %d blocks checked in %s", len(s.blocks), time.Since(began))
}

// TestDocsOperationsExamples runs docs/operations.md's marked examples on a
// new CA: init, serve's start-up log, a second serve on the same
// configuration, an online backup of a CA that issued a certificate, the
// operator certificate's renewal and an intermediate rotation.
// Substitutions: the CA directories of the document (/tmp/docs-ca for init,
// /var/lib/crank-ca and /srv/ca elsewhere) become the test's, the ports 9191
// and 9090 its port, /var/backups/crank-ca a directory for the backup, and the
// offline root key /media/offline/root.key the one init wrote.
func TestDocsOperationsExamples(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	began := time.Now()
	bin := binary(t, "crank-ca")
	caDir := filepath.Join(t.TempDir(), "docs-ca")
	backups := t.TempDir()
	port := strconv.Itoa(freePort(t))
	addr := "127.0.0.1:" + port
	cfgPath := filepath.Join(caDir, "crank-ca.json")

	s := newDocScenario(t, "../docs/operations.md", t.TempDir())
	s.subst = strings.NewReplacer(
		"/tmp/docs-ca", caDir, "/var/lib/crank-ca", caDir, "/srv/ca", caDir,
		"127.0.0.1:9191", addr, "127.0.0.1:9090", addr,
		"/var/backups/crank-ca", backups,
		"/media/offline/root.key", filepath.Join(caDir, "pki", "root.key"),
	)
	s.run("ops-init")
	srv := startCLIServe(t, bin, cfgPath, caDir, addr)
	for _, b := range docBlocks(t, "../docs/operations.md") {
		if b.Marker == "doccheck-log" && b.Arg == "ops-serve" {
			if err := matchLogsInOrder(b.Body, srv.logs.String()); err != nil {
				t.Errorf("%s: %v\n--- serve log:\n%s", b, err, srv.logs)
			}
		}
	}
	s.run("ops-serve-twice")
	docEnroll(t, srv, cfgPath, "hello")
	s.run("ops-backup")
	s.run("ops-admin-cert-renew")
	s.run("ops-rotate-intermediate")
	srv.stop(t)
	s.unused()
	t.Logf("docs/operations.md: %d blocks checked in %s", len(s.blocks), time.Since(began))
}

// TestDocsWorkersAgent runs docs/workers.md's crank-agent example as
// written against a CA issuing 5-minute certificates (the README's demo
// claims) and checks the logs the document shows: start, first
// certificate, the child's output, a renewal with the child signalled, and
// the stop after SIGTERM. Substitutions: the document's CA directory
// /tmp/wdocs-ca, its URL https://127.0.0.1:9292 and the state directory
// /tmp/wdocs/api become the test's; $FP is set in the environment. To
// renew within seconds rather than minutes, the test forces the renewal
// with `crank-ca rotate --worker api` once the agent has its certificate:
// the agent then finds the window at its next poll (15 s for 5-minute
// certificates), as it would find the natural one.
func TestDocsWorkersAgent(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binaries; waits for one ARI poll")
	}
	began := time.Now()
	blocks := map[string]docBlock{}
	for _, b := range docBlocks(t, "../docs/workers.md") {
		blocks[b.Arg] = b
	}
	for _, n := range []string{"workers-agent", "workers-agent-log", "workers-agent-stop"} {
		if _, ok := blocks[n]; !ok {
			t.Fatalf("docs/workers.md has no block marked %s", n)
		}
	}
	work, cfgPath, port, srv := readmeCheckout(t)
	setWorkersClaims(t, cfgPath, srv, map[string]string{"minCertDuration": "5m", "defaultCertDuration": "5m", "maxCertDuration": "168h"})
	rootPEM, err := os.ReadFile(filepath.Join(work, ".crank-ca", "pki", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := pem.Decode(rootPEM)
	fp := sha256.Sum256(rb.Bytes)

	state := filepath.Join(t.TempDir(), "api")
	subst := strings.NewReplacer("/tmp/wdocs-ca", filepath.Join(work, ".crank-ca"),
		"https://127.0.0.1:9292", "https://127.0.0.1:"+port, "/tmp/wdocs/api", state)
	var logs syncBuffer
	cmd := exec.Command("bash", "-c", "set -eo pipefail\n"+subst.Replace(blocks["workers-agent"].Body))
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "FP="+hex.EncodeToString(fp[:]))
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	cliWaitFor(t, "the child's first line", func() bool { return strings.Contains(logs.String(), "child: spiffe://") }, &logs)
	if out, errOut, code := runCmd(t, binary(t, "crank-ca"), "rotate", "--config", cfgPath, "--worker", "api"); code != 0 {
		t.Fatalf("rotate: exit %d\n%s%s", code, out, errOut)
	}
	// The child's own line, not the command line that the log quotes.
	reloaded := regexp.MustCompile(`(?m)^child: reloading`)
	deadline := time.Now().Add(45 * time.Second)
	for !reloaded.MatchString(logs.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("no renewal within 45 s of rotate\n%s\n--- serve log:\n%s", logs.String(), srv.logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := matchLogsInOrder(subst.Replace(blocks["workers-agent-log"].Body), logs.String()); err != nil {
		t.Errorf("%s: %v\n--- real log:\n%s", blocks["workers-agent-log"], err, logs.String())
	}

	// `kill -TERM` to crank-agent: bash may have exec'd it, or be its parent.
	agent := agentPID(t, cmd.Process.Pid)
	mark := len(logs.String())
	if err := syscall.Kill(agent, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("crank-agent after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("crank-agent did not stop after SIGTERM\n%s", logs.String())
	}
	exited <- nil // for the cleanup
	if err := matchLogsInOrder(blocks["workers-agent-stop"].Body, logs.String()[mark:]); err != nil {
		t.Errorf("%s: %v\n--- real log after SIGTERM:\n%s", blocks["workers-agent-stop"], err, logs.String()[mark:])
	}
	t.Logf("docs/workers.md crank-agent example: %s", time.Since(began))
}

// agentPID is pid if that process is crank-agent, else its child that is.
func agentPID(t *testing.T, pid int) int {
	t.Helper()
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "crank-agent" {
		return pid
	}
	children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, c := range strings.Fields(string(children)) {
		n, _ := strconv.Atoi(c)
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", n)); strings.TrimSpace(string(comm)) == "crank-agent" {
			return n
		}
	}
	t.Fatalf("no crank-agent process at or below pid %d", pid)
	return 0
}
