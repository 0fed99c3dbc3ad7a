package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/agent"
)

// fingerprint is the root's SHA-256 as `crank-ca init` prints it.
func (c *ca) fingerprint() string {
	c.t.Helper()
	b, err := os.ReadFile(filepath.Join(c.dir, "pki", "root.crt"))
	if err != nil {
		c.t.Fatal(err)
	}
	certs := parseChain(c.t, b)
	sum := sha256.Sum256(certs[0].Raw)
	return hex.EncodeToString(sum[:])
}

// newAgent builds an agent for worker against c, logging into logs.
func (c *ca) newAgent(t *testing.T, worker, token, stateDir string, logs *syncBuffer) *agent.Agent {
	t.Helper()
	return c.newTestAgent(t, agent.Config{Token: token, Worker: worker, StateDir: stateDir}, logs)
}

// newTestAgent builds an agent from cfg against c with the tests' short
// retries and timeouts, logging into logs.
func (c *ca) newTestAgent(t *testing.T, cfg agent.Config, logs *syncBuffer) *agent.Agent {
	t.Helper()
	cfg.CAURL, cfg.Fingerprint = c.url, c.fingerprint()
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	cfg.RetryMin, cfg.RetryMax, cfg.HTTPTimeout = 200*time.Millisecond, 2*time.Second, 5*time.Second
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAgentStartAndRestartWithoutCA(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()
	state := filepath.Join(t.TempDir(), "state")
	var logs syncBuffer
	a := c.newAgent(t, "api", c.token("api").Encode(), state, &logs)
	if err := a.Start(t.Context()); err != nil {
		t.Fatalf("start: %v\n%s", err, logs.String())
	}
	id := a.Current()
	if id.SPIFFEID.String() != "spiffe://crank.internal/worker/api" || id.Leaf().DNSNames[0] != "api.workers.crank.internal" {
		t.Errorf("identity %s %v", id.SPIFFEID, id.Leaf().DNSNames)
	}
	for name, mode := range map[string]os.FileMode{"account.key": 0o600, "key.pem": 0o600, "cert.pem": 0o644, "root.pem": 0o644, "account.json": 0o600} {
		info, err := os.Stat(filepath.Join(state, name))
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", name, info.Mode().Perm(), mode)
		}
	}
	out := filepath.Join(t.TempDir(), "out")
	if err := agent.WriteFiles(out, id); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"cert.pem", "key.pem", "chain.pem", "root.pem"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}

	// The CA goes away; a restarted worker starts from its state alone, with
	// no token and no reachable CA.
	c.stop()
	var logs2 syncBuffer
	b := c.newAgent(t, "api", "", state, &logs2)
	if err := b.Start(t.Context()); err != nil {
		t.Fatalf("restart without CA: %v\n%s", err, logs2.String())
	}
	if b.Current().Serial() != id.Serial() {
		t.Error("restart did not reuse the certificate from state")
	}
	if !strings.Contains(logs2.String(), "using certificate from state") {
		t.Errorf("log: %s", logs2.String())
	}
}

func TestAgentStartErrors(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()
	used := c.token("api")
	{
		var logs syncBuffer
		if err := c.newAgent(t, "api", used.Encode(), t.TempDir(), &logs).Start(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		cfg   func(*agent.Config)
		want  error
		words string
	}{
		{"wrong fingerprint", func(cfg *agent.Config) { cfg.Fingerprint = strings.Repeat("ab", 32) }, agent.ErrFingerprintMismatch, "fingerprint"},
		{"used token", func(cfg *agent.Config) { cfg.Token = used.Encode() }, agent.ErrTokenRejected, "already been used"},
		{"unreachable CA", func(cfg *agent.Config) { cfg.CAURL = "https://127.0.0.1:1" }, agent.ErrCAUnreachable, "unreachable"},
		{"no token", func(cfg *agent.Config) { cfg.Token = "" }, agent.ErrNoToken, "no join token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := agent.Config{CAURL: c.url, Fingerprint: c.fingerprint(), Token: c.token("api").Encode(), Worker: "api", StateDir: t.TempDir(), HTTPTimeout: 5 * time.Second}
			tc.cfg(&cfg)
			a, err := agent.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = a.Start(t.Context())
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("Start: %v, want %v mentioning %q", err, tc.want, tc.words)
			}
		})
	}
	if _, err := agent.New(agent.Config{CAURL: c.url, Worker: "api", StateDir: t.TempDir(), Token: c.token("web").Encode()}); err == nil {
		t.Error("a token of another worker was accepted")
	}
}

// shortLived makes the workers provisioner issue certificates of life.
func shortLived(life time.Duration) func(*config.Config) {
	return func(cfg *config.Config) {
		p, _ := cfg.Provisioner("workers")
		p.Claims = config.Claims{MinCertDuration: config.Dur(life / 2), DefaultCertDuration: config.Dur(life), MaxCertDuration: config.Dur(life)}
	}
}

// TestAgentRenewsThroughOutage: with 20s certificates the agent renews on
// schedule; while the CA is down longer than a renewal attempt it keeps the
// current certificate and retries, and renews once the CA is back.
func TestAgentRenewsThroughOutage(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("waits for renewals")
	}
	c := newCA(t, shortLived(20*time.Second))
	c.start()
	var logs syncBuffer
	a := c.newAgent(t, "api", c.token("api").Encode(), t.TempDir(), &logs)
	if err := a.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	rotated := a.Subscribe()
	done := make(chan error, 1)
	go func() { done <- a.Run(t.Context()) }()

	first := a.Current().Serial()
	select {
	case <-rotated:
	case <-time.After(30 * time.Second):
		t.Fatalf("no renewal within 30s\n%s", logs.String())
	}
	if a.Current().Serial() == first {
		t.Fatal("rotation kept the serial")
	}
	// Stop the CA just after a renewal and keep it down until a renewal
	// attempt has failed: the current certificate stays in service.
	held := a.Current()
	c.stop()
	for deadline := time.Now().Add(40 * time.Second); !strings.Contains(logs.String(), "renewal failed; still serving the current certificate"); {
		if time.Now().After(deadline) {
			t.Fatalf("no failed renewal attempt while the CA was down:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if a.Current() != held {
		t.Fatal("identity changed while the CA was down")
	}
	c.start()
	select {
	case <-rotated:
	case <-time.After(15 * time.Second):
		t.Fatalf("no renewal after the CA came back\n%s", logs.String())
	}
	if a.Current().Serial() == held.Serial() || !time.Now().Before(held.NotAfter()) {
		t.Errorf("renewed %s after the old one expired at %s", a.Current().Serial(), held.NotAfter())
	}
}
