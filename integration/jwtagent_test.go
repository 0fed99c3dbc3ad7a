package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/agent"
)

// The tests here drive the agent's JWT attestation (agent.Config.JWTFile,
// crank-agent --jwt-file) end to end against the real CA, the test acting
// as the OIDC issuer whose keys the CA reads from a JWKS file.

// mint returns a JWT for sub issued at iat and valid for life (negative:
// expired), with a unique jti.
func (o *oidcIssuer) mint(sub string, iat time.Time, life time.Duration) string {
	o.t.Helper()
	exp := iat.Add(life)
	if life < 0 {
		iat, exp = iat.Add(2*life), iat.Add(life)
	}
	return o.token(sub, tokenOpts{iat: iat, exp: exp})
}

// writeJWT replaces the JWT file as the kubelet does: a new file renamed
// into place.
func writeJWT(t *testing.T, path, tok string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// jwtAgentCA is a CA whose "workers" provisioner has an OIDC attestor "ci"
// trusting iss (keys from a JWKS file in the CA directory); OIDC's default
// worker template maps sub to the worker name.
func jwtAgentCA(t *testing.T, iss *oidcIssuer, mutate ...func(*config.Config)) *ca {
	t.Helper()
	return newCA(t, func(cfg *config.Config) {
		path := iss.jwksFile(t, cfg.Dir)
		w, _ := cfg.Provisioner("workers")
		w.Attestors = []config.Attestor{{Name: "ci", Type: config.AttestorOIDC, Issuer: iss.srv.URL, Audience: "crank-ca",
			KeySource: config.KeySourceJWKSFile, JWKSFile: path}}
		for _, m := range mutate {
			m(cfg)
		}
		cfg.ApplyDefaults()
	})
}

// newJWTAgent builds an agent that joins with the JWT in jwtFile.
func (c *ca) newJWTAgent(t *testing.T, worker, jwtFile, stateDir string, logs *syncBuffer) *agent.Agent {
	t.Helper()
	return c.newTestAgent(t, agent.Config{JWTFile: jwtFile, Worker: worker, StateDir: stateDir}, logs)
}

// stateAccount reads the account the agent recorded in its state directory.
type stateAccount struct {
	URI      string   `json:"uri"`
	KID      string   `json:"kid"`
	Key      string   `json:"key"`
	Attested bool     `json:"attested"`
	Worker   string   `json:"worker"`
	SPIFFEID string   `json:"spiffeID"`
	DNSNames []string `json:"dnsNames"`
}

func readStateAccount(t *testing.T, state string) stateAccount {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(state, "account.json"))
	if err != nil {
		t.Fatal(err)
	}
	var acc stateAccount
	if err := json.Unmarshal(b, &acc); err != nil {
		t.Fatalf("account.json: %v", err)
	}
	return acc
}

func checkStateModes(t *testing.T, state string) {
	t.Helper()
	for name, mode := range map[string]os.FileMode{"account.key": 0o600, "account.json": 0o600, "key.pem": 0o600, "cert.pem": 0o644, "root.pem": 0o644} {
		info, err := os.Stat(filepath.Join(state, name))
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", name, info.Mode().Perm(), mode)
		}
	}
}

// waitLog polls logs until it contains want.
func waitLog(t *testing.T, logs *syncBuffer, want string, limit time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(limit); !strings.Contains(logs.String(), want); {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the agent's log within %s:\n%s", want, limit, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestJWTAgentEnrols: an agent with a JWT file attests, registers with the
// one-time credentials and gets the certificate of the worker the CA maps
// the token to; a restart reuses the state without attesting again; a
// refused token and a token for another worker fail Start, saying why.
func TestJWTAgentEnrols(t *testing.T) {
	t.Parallel()
	iss := newOIDCIssuer(t)
	c := jwtAgentCA(t, iss)
	c.start()

	jwtFile := filepath.Join(t.TempDir(), "token")
	writeJWT(t, jwtFile, iss.mint("hello", c.clock.Now(), 10*time.Minute))
	state := filepath.Join(t.TempDir(), "state")
	var logs syncBuffer
	a := c.newJWTAgent(t, "hello", jwtFile, state, &logs)
	if err := a.Start(t.Context()); err != nil {
		t.Fatalf("start: %v\n%s\n%s", err, logs.String(), rawTail(c.logs.String(), 10))
	}
	id := a.Current()
	if id.SPIFFEID.String() != "spiffe://crank.internal/worker/hello" || len(id.Leaf().DNSNames) != 1 || id.Leaf().DNSNames[0] != "hello.workers.crank.internal" {
		t.Errorf("identity %s %v", id.SPIFFEID, id.Leaf().DNSNames)
	}
	checkSVIDProfile(t, id.Leaf())
	checkStateModes(t, state)
	acc := readStateAccount(t, state)
	if !acc.Attested || acc.Worker != "hello" || acc.SPIFFEID != "spiffe://crank.internal/worker/hello" || acc.URI == "" || acc.Key == "" {
		t.Errorf("account.json: %+v", acc)
	}
	for _, want := range []string{"attestation accepted", "account registered by attestation", "certificate obtained"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no %q in the log:\n%s", want, logs.String())
		}
	}
	tok, _ := os.ReadFile(jwtFile)
	if strings.Contains(logs.String(), strings.TrimSpace(string(tok))) || strings.Contains(c.logs.String(), strings.TrimSpace(string(tok))) {
		t.Error("the JWT appears in a log")
	}

	// A restart takes the certificate from state: no attestation, which
	// would fail since the token in the file is spent.
	var logs2 syncBuffer
	b := c.newJWTAgent(t, "hello", jwtFile, state, &logs2)
	if err := b.Start(t.Context()); err != nil {
		t.Fatalf("restart: %v\n%s", err, logs2.String())
	}
	if b.Current().Serial() != id.Serial() || strings.Contains(logs2.String(), "attestation") {
		t.Errorf("restart did not reuse the state:\n%s", logs2.String())
	}

	t.Run("without a worker name", func(t *testing.T) {
		writeJWT(t, jwtFile+"2", iss.mint("hello", c.clock.Now(), 10*time.Minute))
		var logs syncBuffer
		a := c.newJWTAgent(t, "", jwtFile+"2", t.TempDir(), &logs)
		if err := a.Start(t.Context()); err != nil {
			t.Fatalf("start: %v\n%s", err, logs.String())
		}
		if a.Current().SPIFFEID.String() != "spiffe://crank.internal/worker/hello" {
			t.Errorf("SPIFFE ID %s", a.Current().SPIFFEID)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		for _, tc := range []struct {
			name, worker, token, want string
			refused                   bool
		}{
			{"spent token", "hello", "", "jti", true},
			{"expired token", "hello", iss.mint("hello", c.clock.Now(), -10*time.Minute), "expiry", true},
			{"not a worker of the provisioner", "hello", iss.mint("Not_A_Worker", c.clock.Now(), 10*time.Minute), "subject", true},
			{"token of another worker", "api", iss.mint("hello", c.clock.Now(), 10*time.Minute), `attests worker "hello", not --worker "api"`, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				f := jwtFile
				if tc.token != "" {
					f = filepath.Join(t.TempDir(), "token")
					writeJWT(t, f, tc.token)
				}
				var logs syncBuffer
				state := t.TempDir()
				err := c.newJWTAgent(t, tc.worker, f, state, &logs).Start(t.Context())
				var ae *agent.AttestationError
				switch {
				case !tc.refused:
					if err == nil || !strings.Contains(err.Error(), tc.want) {
						t.Fatalf("Start: %v, want an error mentioning %q", err, tc.want)
					}
				case !errors.Is(err, agent.ErrAttestationRefused) || !errors.As(err, &ae) || ae.Check != tc.want || ae.Status != 401:
					t.Fatalf("Start: %v, want a refusal with check %q", err, tc.want)
				}
				if _, err := os.Stat(filepath.Join(state, "account.json")); err == nil {
					t.Error("an account was recorded")
				}
			})
		}
	})
}

// TestJWTAgentReattests: an account bound by attestation stops ordering
// after maxBindingAge; the agent attests again with the fresh token in the
// file, registers a new account with a new key, renews with it, and the
// certificate it serves never expires meanwhile.
// startAgingJWTAgent starts a JWT agent for worker hello on a CA with
// 20-second certificates whose attested bindings age out after 5 minutes.
func startAgingJWTAgent(t *testing.T) (*oidcIssuer, *ca, string, string, *syncBuffer, *agent.Agent) {
	t.Helper()
	iss := newOIDCIssuer(t)
	c := jwtAgentCA(t, iss, shortLived(20*time.Second), func(cfg *config.Config) {
		w, _ := cfg.Provisioner("workers")
		w.MaxBindingAge = config.Dur(5 * time.Minute)
	})
	c.start()
	jwtFile := filepath.Join(t.TempDir(), "token")
	writeJWT(t, jwtFile, iss.mint("hello", c.clock.Now(), 10*time.Minute))
	state := filepath.Join(t.TempDir(), "state")
	logs := &syncBuffer{}
	a := c.newJWTAgent(t, "hello", jwtFile, state, logs)
	if err := a.Start(t.Context()); err != nil {
		t.Fatalf("start: %v\n%s", err, logs.String())
	}
	return iss, c, jwtFile, state, logs, a
}

func TestJWTAgentReattests(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("waits for renewals")
	}
	iss, c, jwtFile, state, logs, a := startAgingJWTAgent(t)
	first := readStateAccount(t, state)

	// Current() must never hand out an expired certificate.
	var expired atomic.Value
	stopWatch := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if id := a.Current(); !time.Now().Before(id.NotAfter()) {
				expired.Store(id.Serial() + " expired at " + id.NotAfter().String())
			}
		}
	}()
	defer func() {
		close(stopWatch)
		<-watched
	}()

	rotated := a.Subscribe()
	done := make(chan error, 1)
	go func() { done <- a.Run(t.Context()) }()
	waitRotation := func(what string) {
		t.Helper()
		select {
		case <-rotated:
		case err := <-done:
			t.Fatalf("Run returned %v", err)
		case <-time.After(40 * time.Second):
			t.Fatalf("no rotation (%s) within 40s\n%s", what, logs.String())
		}
	}
	waitRotation("with the first account")
	if acc := readStateAccount(t, state); acc.URI != first.URI {
		t.Fatalf("the account changed before maxBindingAge: %s -> %s", first.URI, acc.URI)
	}

	// The platform rotates the token; the binding ages out.
	writeJWT(t, jwtFile, iss.mint("hello", c.clock.Now(), time.Hour))
	c.clock.Advance(6 * time.Minute)
	waitLog(t, logs, "attesting again", 40*time.Second)
	waitRotation("after re-attestation")
	second := readStateAccount(t, state)
	if second.URI == first.URI || second.Key == first.Key || second.KID == first.KID || !second.Attested {
		t.Fatalf("re-attestation kept the account: %+v -> %+v", first, second)
	}
	checkStateModes(t, state)
	if a.Current().SPIFFEID.String() != "spiffe://crank.internal/worker/hello" {
		t.Errorf("SPIFFE ID %s", a.Current().SPIFFEID)
	}
	// The new account keeps renewing.
	waitRotation("with the new account")
	if acc := readStateAccount(t, state); acc.URI != second.URI {
		t.Errorf("the account changed again: %s -> %s", second.URI, acc.URI)
	}
	if err := a.LastError(); err != nil {
		t.Errorf("LastError after renewals: %v", err)
	}
	if v := expired.Load(); v != nil {
		t.Errorf("Current() returned an expired certificate: %v", v)
	}
	for _, bad := range []string{"renewal failed", "renewal stopped"} {
		if strings.Contains(logs.String(), bad) {
			t.Errorf("%q in the log:\n%s", bad, logs.String())
		}
	}
	if !strings.Contains(c.logs.String(), "attest again") {
		t.Errorf("the CA never refused the aged account:\n%s", rawTail(c.logs.String(), 20))
	}
	t.Logf("agent log:\n%s", logs.String())
}

// TestJWTAgentStaleTokenFile: when the account has aged out and the file
// holds a JWT the CA refuses (expired, or already used), renewal stops with
// an error line naming the check; the current certificate stays in service
// until it expires, and LastError says why.
func TestJWTAgentStaleTokenFile(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("waits for a certificate to expire")
	}
	for _, tc := range []struct {
		name  string
		stale func(iss *oidcIssuer, c *ca) string // "" keeps the spent token
		check string
	}{
		{"expired JWT", func(iss *oidcIssuer, c *ca) string { return iss.mint("hello", c.clock.Now(), -10*time.Minute) }, "expiry"},
		{"spent JWT", func(*oidcIssuer, *ca) string { return "" }, "jti"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			iss, c, jwtFile, state, logs, a := startAgingJWTAgent(t)
			first := readStateAccount(t, state)
			done := make(chan error, 1)
			go func() { done <- a.Run(t.Context()) }()

			if tok := tc.stale(iss, c); tok != "" {
				writeJWT(t, jwtFile, tok)
			}
			c.clock.Advance(6 * time.Minute)
			line := "renewal stopped: the CA refused the attestation"
			waitLog(t, logs, line, 40*time.Second)
			held := a.Current()
			var refusal string
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, line) {
					refusal = l
					break
				}
			}
			if !strings.Contains(refusal, "level=ERROR") || !strings.Contains(refusal, "check="+tc.check) || !strings.Contains(refusal, "detail=") {
				t.Errorf("refusal line %q lacks the level, check %q or detail", refusal, tc.check)
			}
			var ae *agent.AttestationError
			if err := a.LastError(); !errors.As(err, &ae) || ae.Check != tc.check {
				t.Errorf("LastError = %v, want a refusal with check %q", err, tc.check)
			}
			// The agent keeps retrying and keeps the certificate until it
			// expires, and after.
			for time.Now().Before(held.NotAfter().Add(time.Second)) {
				if a.Current() != held {
					t.Fatalf("the certificate changed (%s -> %s) although attestation is refused\n%s", held.Serial(), a.Current().Serial(), logs.String())
				}
				time.Sleep(50 * time.Millisecond)
			}
			if a.Current() != held {
				t.Fatal("the expired certificate was dropped")
			}
			if n := strings.Count(logs.String(), line); n < 2 {
				t.Errorf("%d refused attempts, want retries", n)
			}
			if acc := readStateAccount(t, state); acc.URI != first.URI {
				t.Errorf("an account was registered although attestation is refused: %s", acc.URI)
			}
			select {
			case err := <-done:
				t.Fatalf("Run returned %v", err)
			default:
			}
		})
	}
}

// TestJWTAgentCrankAgent: crank-agent --jwt-file (without --worker)
// obtains the certificate and writes the files; a refused JWT ends it with
// status 1 and the check in its message.
func TestJWTAgentCrankAgent(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := binary(t, "crank-agent")
	iss := newOIDCIssuer(t)
	c := jwtAgentCA(t, iss)
	c.start()
	tmp := t.TempDir()
	jwtFile := filepath.Join(tmp, "token")
	writeJWT(t, jwtFile, iss.mint("hello", c.clock.Now(), 10*time.Minute))
	state, out := filepath.Join(tmp, "state"), filepath.Join(tmp, "tls")
	run := func(args ...string) (int, string) {
		var stderr bytes.Buffer
		cmd := exec.Command(bin, append([]string{"--ca-url", c.url, "--fingerprint", c.fingerprint(), "--once"}, args...)...)
		cmd.Env = append(os.Environ(), "CRANK_TOKEN=")
		cmd.Stdout, cmd.Stderr = &stderr, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return 0, stderr.String()
		case errors.As(err, &ee):
			return ee.ExitCode(), stderr.String()
		}
		t.Fatal(err)
		return 0, ""
	}
	if code, logs := run("--jwt-file", jwtFile, "--state", state, "--out", out); code != 0 {
		t.Fatalf("crank-agent --jwt-file: status %d\n%s", code, logs)
	}
	leaf := parseChain(t, mustRead(t, filepath.Join(out, "cert.pem")))[0]
	if got := uris(leaf); len(got) != 1 || got[0] != "spiffe://crank.internal/worker/hello" {
		t.Errorf("URIs %v", got)
	}
	// The token in the file is spent: a fresh state directory cannot
	// enrol with it.
	code, logs := run("--jwt-file", jwtFile, "--state", filepath.Join(tmp, "state2"))
	if code != 1 || !strings.Contains(logs, "check jti") {
		t.Errorf("spent JWT: status %d, want 1 naming the check\n%s", code, logs)
	}
	if code, logs := run("--jwt-file", jwtFile, "--token", "x", "--state", state); code != 2 || !strings.Contains(logs, "--jwt-file and --token") {
		t.Errorf("--jwt-file with --token: status %d\n%s", code, logs)
	}
}

// TestJWTAgentHelloWorker: hello-worker --jwt-file (the Go runtime) joins
// with a JWT and serves mTLS with the mapped identity.
func TestJWTAgentHelloWorker(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := binary(t, "hello-worker")
	iss := newOIDCIssuer(t)
	c := jwtAgentCA(t, iss)
	c.start()
	jwtFile := filepath.Join(t.TempDir(), "token")
	writeJWT(t, jwtFile, iss.mint("hello", c.clock.Now(), 10*time.Minute))
	var logs syncBuffer
	cmd := exec.Command(bin, "--ca-url", c.url, "--fingerprint", c.fingerprint(), "--worker", "hello",
		"--state", filepath.Join(t.TempDir(), "state"), "--listen", "127.0.0.1:"+strconv.Itoa(freePort(t)))
	cmd.Env = append(os.Environ(), "CRANK_TOKEN=", "CRANK_JWT_FILE="+jwtFile)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	waitLog(t, &logs, `msg="worker serving mTLS"`, 30*time.Second)
	if !strings.Contains(logs.String(), "spiffeID=spiffe://crank.internal/worker/hello") || !strings.Contains(logs.String(), "account registered by attestation") {
		t.Errorf("log:\n%s", logs.String())
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit: %v\n%s", err, logs.String())
	}
}
