package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/crank-platform/crank-ca/internal/admin"
)

// The Workload API tests run crank-agent (the binary) with --workload-api
// and real Workload API clients in other processes: a Go worker built on
// go-spiffe (testdata/spiffeworker) and SPIRE's own spire-agent CLI.

var (
	spiffeWorkerOnce sync.Once
	spiffeWorkerBin  string
	spiffeWorkerErr  error
)

// spiffeWorker builds testdata/spiffeworker once per test process.
func spiffeWorker(t *testing.T) string {
	t.Helper()
	spiffeWorkerOnce.Do(func() {
		dir, err := os.MkdirTemp("", "crank-spiffeworker-")
		if err != nil {
			spiffeWorkerErr = err
			return
		}
		spiffeWorkerBin = filepath.Join(dir, "spiffeworker")
		out, err := exec.Command("go", "build", "-o", spiffeWorkerBin, "./testdata/spiffeworker").CombinedOutput()
		if err != nil {
			spiffeWorkerErr = fmt.Errorf("go build ./testdata/spiffeworker: %v\n%s", err, out)
		}
	})
	if spiffeWorkerErr != nil {
		t.Fatal(spiffeWorkerErr)
	}
	return spiffeWorkerBin
}

// workerEvent is one line spiffeworker writes.
type workerEvent struct {
	Event   string         `json:"event"`
	Time    time.Time      `json:"time"`
	Serial  string         `json:"serial"`
	ID      string         `json:"id"`
	Err     string         `json:"err"`
	Calls   int            `json:"calls"`
	Failed  int            `json:"failed"`
	Serials map[string]int `json:"serials"`
}

func readEvents(t *testing.T, path string) []workerEvent {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var evs []workerEvent
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var e workerEvent
		if json.Unmarshal(sc.Bytes(), &e) == nil { // a line being written is skipped
			evs = append(evs, e)
		}
	}
	return evs
}

// proc is a process started by a test, stopped with SIGTERM at the end.
type proc struct {
	name string
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan struct{}
	err  error
}

func startProc(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), logs: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.stop(10 * time.Second) {
			t.Errorf("%s did not stop after SIGTERM; killed", name)
		}
	})
	return p
}

// stop sends SIGTERM and waits up to limit; it kills the process after
// that and reports whether it had stopped in time.
func (p *proc) stop(limit time.Duration) bool {
	select {
	case <-p.done:
		return true
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return true
	case <-time.After(limit):
		_ = p.cmd.Process.Kill()
		<-p.done
		return false
	}
}

// waitFor polls cond every 50ms until it holds; it fails the test after
// limit or when one of procs exits.
func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool, procs ...*proc) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		for _, p := range procs {
			select {
			case <-p.done:
				t.Fatalf("%s exited (%v) while waiting for %s\n%s", p.name, p.err, what, p.logs.String())
			default:
			}
		}
		if time.Now().After(deadline) {
			var logs strings.Builder
			for _, p := range procs {
				fmt.Fprintf(&logs, "--- %s\n%s", p.name, p.logs.String())
			}
			t.Fatalf("no %s within %s\n%s", what, limit, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lastSVID is the serial of the last SVID the worker reported and when.
func lastSVID(evs []workerEvent) (string, time.Time, int) {
	n := 0
	var serial string
	var at time.Time
	for _, e := range evs {
		if e.Event == "svid" {
			serial, at = e.Serial, e.Time
			n++
		}
	}
	return serial, at, n
}

// renewedAt finds when crank-agent logged the renewal of serial.
func renewedAt(logs, serial string) (time.Time, bool) {
	re := regexp.MustCompile(`time=(\S+) level=INFO msg="certificate (?:renewed|obtained)"[^\n]* serial=` + regexp.QuoteMeta(serial) + `\b`)
	m := re.FindStringSubmatch(logs)
	if m == nil {
		return time.Time{}, false
	}
	at, err := time.Parse(time.RFC3339Nano, m[1])
	return at, err == nil
}

// shortSocketDir is a directory for sockets whose paths stay far below the
// 107-byte limit, removed at the end of the test.
func shortSocketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "crank-wl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// TestWorkloadAPIGoSPIFFE: crank-agent supervises a Go worker that uses
// only go-spiffe (X509Source from $SPIFFE_ENDPOINT_SOCKET, which crank-agent
// sets, and spiffetls/tlsconfig). Through three rotations (forced with
// crank-ca rotate, then by revoking the certificate, then forced again) the
// worker's stream receives each new SVID promptly, it keeps serving and
// calling itself over mTLS with a fresh handshake every 20ms, and no call
// fails; each rotated certificate carries calls.
func TestWorkloadAPIGoSPIFFE(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs crank-agent and a go-spiffe worker through rotations")
	}
	bin, worker := binary(t, "crank-agent"), spiffeWorker(t)
	const life = 40 * time.Second // Retry-After = life/20 = 2s
	c := newCA(t, shortLived(life))
	c.start()
	tmp := t.TempDir()
	sock := filepath.Join(shortSocketDir(t), "agent.sock")
	events := filepath.Join(tmp, "events")
	agent := startProc(t, "crank-agent", []string{"CRANK_TOKEN=" + c.token("api").Encode()}, bin,
		"--ca-url", c.url, "--fingerprint", c.fingerprint(), "--worker", "api", "--state", filepath.Join(tmp, "state"),
		"--workload-api", "unix://"+sock, "--signal", "none", "--", worker, "-events", events)

	waitFor(t, "the worker's first SVID", 30*time.Second, func() bool {
		_, _, n := lastSVID(readEvents(t, events))
		return n > 0
	}, agent)
	info, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 || info.Mode().Type() != os.ModeSocket {
		t.Errorf("socket mode %v, want a 0600 socket", info.Mode())
	}
	seen := map[string]bool{}
	first, _, _ := lastSVID(readEvents(t, events))
	seen[first] = true
	var latencies []time.Duration
	current := first
	for i := 1; i <= 3; i++ {
		if i == 2 {
			// A revocation: the CA moves the renewal window to now and
			// crank-agent replaces the certificate as for a forced rotation.
			var res admin.RevokeResult
			if st := c.admin(t, http.MethodPost, "/revoke", admin.RevokeRequest{Serial: current, Reason: "keyCompromise"}, &res); st != http.StatusOK || len(res.Revoked) != 1 {
				t.Fatalf("revoke %s: %d %+v", current, st, res)
			}
		} else {
			var res admin.RotateResult
			if st := c.admin(t, http.MethodPost, "/rotate", admin.RotateRequest{Worker: "api"}, &res); st != http.StatusOK {
				t.Fatalf("rotate: %d", st)
			}
		}
		var serial string
		var pushed time.Time
		waitFor(t, fmt.Sprintf("rotation %d pushed to the worker", i), 30*time.Second, func() bool {
			serial, pushed, _ = lastSVID(readEvents(t, events))
			return !seen[serial]
		}, agent)
		seen[serial] = true
		current = serial
		renewed, ok := renewedAt(agent.logs.String(), serial)
		if !ok {
			t.Fatalf("crank-agent did not log the renewal of %s\n%s", serial, agent.logs.String())
		}
		lat := pushed.Sub(renewed)
		latencies = append(latencies, lat)
		t.Logf("rotation %d: serial %s renewed at %s, the worker's source had it %s later", i, serial, renewed.Format(time.StampMilli), lat.Round(time.Millisecond))
		// A generous bound: the push is immediate (see the logged values);
		// what must not happen is a stream that waits for something else,
		// such as the next rotation (life*2/3 away) or a reconnect.
		if lat > 5*time.Second {
			t.Errorf("rotation %d reached the worker %s after crank-agent renewed", i, lat)
		}
		// Let some calls handshake with this certificate.
		time.Sleep(300 * time.Millisecond)
	}
	if !agent.stop(20 * time.Second) {
		t.Fatal("crank-agent did not stop")
	}
	var done *workerEvent
	for _, e := range readEvents(t, events) {
		if e.Event == "fail" {
			t.Errorf("call failed: %s", e.Err)
		}
		if e.Event == "done" {
			done = &e
		}
	}
	if done == nil {
		t.Fatalf("the worker did not report its calls (did it get the SIGTERM?)\n%s", agent.logs.String())
	}
	t.Logf("%d calls, %d failed, per serial %v; push latencies %v", done.Calls, done.Failed, done.Serials, latencies)
	if done.Failed != 0 {
		t.Errorf("%d of %d calls failed", done.Failed, done.Calls)
	}
	for serial := range seen {
		if done.Serials[serial] == 0 {
			t.Errorf("no successful call with certificate %s", serial)
		}
	}
	if len(seen) < 4 {
		t.Errorf("%d certificates seen, want the first and three rotations", len(seen))
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after crank-agent stopped: %v", err)
	}
}

// TestWorkloadAPIReconnect: a worker that keeps running while crank-agent
// restarts reconnects (go-spiffe retries) and gets the current SVID, and
// the rotation after the restart reaches it; its calls never fail.
func TestWorkloadAPIReconnect(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("restarts crank-agent under a go-spiffe worker")
	}
	bin, worker := binary(t, "crank-agent"), spiffeWorker(t)
	c := newCA(t, shortLived(40*time.Second))
	c.start()
	tmp := t.TempDir()
	sock := filepath.Join(shortSocketDir(t), "agent.sock")
	events := filepath.Join(tmp, "events")
	args := []string{"--ca-url", c.url, "--fingerprint", c.fingerprint(), "--worker", "api", "--state", filepath.Join(tmp, "state")}
	env := []string{"CRANK_WORKLOAD_API=unix://" + sock} // the environment variable this time
	agent := startProc(t, "crank-agent", append(env, "CRANK_TOKEN="+c.token("api").Encode()), bin, args...)
	waitFor(t, "the socket", 30*time.Second, func() bool { _, err := os.Lstat(sock); return err == nil }, agent)
	w := startProc(t, "spiffeworker", []string{"SPIFFE_ENDPOINT_SOCKET=unix://" + sock}, worker, "-events", events)
	waitFor(t, "the worker's first SVID", 30*time.Second, func() bool { _, _, n := lastSVID(readEvents(t, events)); return n > 0 }, agent, w)
	first, _, _ := lastSVID(readEvents(t, events))

	if !agent.stop(20 * time.Second) {
		t.Fatal("crank-agent did not stop")
	}
	stopped := time.Now()
	_, _, before := lastSVID(readEvents(t, events))
	// Restarted without a token: it serves the certificate from its state.
	agent2 := startProc(t, "crank-agent (restarted)", env, bin, args...)
	waitFor(t, "the worker to reconnect", 45*time.Second, func() bool { _, _, n := lastSVID(readEvents(t, events)); return n > before }, agent2, w)
	serial, at, _ := lastSVID(readEvents(t, events))
	t.Logf("the worker reconnected and received %s %s after crank-agent stopped", serial, at.Sub(stopped).Round(time.Millisecond))
	if serial != first {
		t.Errorf("after the restart the worker got %s, want the current certificate %s", serial, first)
	}
	if !strings.Contains(agent2.logs.String(), "using certificate from state") {
		t.Errorf("the restarted crank-agent did not reuse its certificate\n%s", agent2.logs.String())
	}

	if st := c.admin(t, http.MethodPost, "/rotate", admin.RotateRequest{Worker: "api"}, nil); st != http.StatusOK {
		t.Fatalf("rotate: %d", st)
	}
	waitFor(t, "the rotation after the restart", 30*time.Second, func() bool { s, _, _ := lastSVID(readEvents(t, events)); return s != first }, agent2, w)
	time.Sleep(300 * time.Millisecond)
	if !w.stop(10 * time.Second) {
		t.Fatal("the worker did not stop")
	}
	for _, e := range readEvents(t, events) {
		switch e.Event {
		case "fail":
			t.Errorf("call failed: %s", e.Err)
		case "done":
			t.Logf("%d calls, %d failed, per serial %v", e.Calls, e.Failed, e.Serials)
		}
	}
}

// TestWorkloadAPISpireAgent: SPIRE's own CLI, built from the module proxy,
// fetches the SVID from crank-agent and writes it; it verifies against
// crank-ca's root. With an allow-list that leaves out the current user, the
// same call is refused with PermissionDenied.
func TestWorkloadAPISpireAgent(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds or reuses spire-agent and runs crank-agent")
	}
	spire := spireAgent(t)
	bin := binary(t, "crank-agent")
	c := newCA(t, nil)
	c.start()
	tmp := t.TempDir()
	sockDir := shortSocketDir(t)
	open, limited := filepath.Join(sockDir, "open.sock"), filepath.Join(sockDir, "limited.sock")
	common := []string{"--ca-url", c.url, "--fingerprint", c.fingerprint()}
	a1 := startProc(t, "crank-agent api", []string{"CRANK_TOKEN=" + c.token("api").Encode()}, bin,
		append(common, "--worker", "api", "--state", filepath.Join(tmp, "api"), "--workload-api", "unix://"+open)...)
	other := fmt.Sprint(os.Getuid() + 1)
	a2 := startProc(t, "crank-agent db", []string{"CRANK_TOKEN=" + c.token("db").Encode()}, bin,
		append(common, "--worker", "db", "--state", filepath.Join(tmp, "db"), "--workload-api", "unix://"+limited, "--workload-api-allow", other)...)
	for _, s := range []string{open, limited} {
		waitFor(t, "the socket "+s, 30*time.Second, func() bool { _, err := os.Lstat(s); return err == nil }, a1, a2)
	}

	tests := []struct {
		name, socket string
		wantErr      string // in spire-agent's output; "" for success
	}{
		{name: "fetch", socket: open},
		{name: "allow-list without this user", socket: limited, wantErr: "PermissionDenied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out := t.TempDir()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, spire, "api", "fetch", "x509", "-socketPath", tt.socket, "-write", out, "-timeout", "10s")
			b, err := cmd.CombinedOutput()
			t.Logf("spire-agent api fetch x509:\n%s", b)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(string(b), tt.wantErr) {
					t.Fatalf("spire-agent: %v, want a failure with %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("spire-agent: %v", err)
			}
			if !strings.Contains(string(b), "spiffe://crank.internal/worker/api") {
				t.Error("spire-agent did not print the SPIFFE ID")
			}
			chain := parseChain(t, mustRead(t, filepath.Join(out, "svid.0.pem")))
			inter := x509.NewCertPool()
			for _, c := range chain[1:] {
				inter.AddCert(c)
			}
			if _, err := chain[0].Verify(x509.VerifyOptions{Roots: c.roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("the SVID spire-agent wrote does not verify against crank-ca's root: %v", err)
			}
			if len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != "spiffe://crank.internal/worker/api" {
				t.Errorf("SVID URIs %v", chain[0].URIs)
			}
			bundle := parseChain(t, mustRead(t, filepath.Join(out, "bundle.0.pem")))
			if len(bundle) != 1 || !c.roots.Equal(poolOf(bundle)) {
				t.Errorf("bundle.0.pem holds %d certificates, want crank-ca's root", len(bundle))
			}
			keyPEM := mustRead(t, filepath.Join(out, "svid.0.key"))
			if !bytes.Contains(keyPEM, []byte("PRIVATE KEY")) {
				t.Error("svid.0.key holds no private key")
			}
		})
	}
}

func poolOf(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// TestWorkloadAPIRefusals: crank-agent's Workload API refuses a call
// without the security header (InvalidArgument) and, with an allow-list
// that leaves out the current user, every call (PermissionDenied); JWT-SVIDs
// are Unimplemented.
func TestWorkloadAPIRefusals(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs crank-agent")
	}
	bin := binary(t, "crank-agent")
	c := newCA(t, nil)
	c.start()
	tmp, sockDir := t.TempDir(), shortSocketDir(t)
	open, limited := filepath.Join(sockDir, "open.sock"), filepath.Join(sockDir, "limited.sock")
	common := []string{"--ca-url", c.url, "--fingerprint", c.fingerprint()}
	a1 := startProc(t, "crank-agent api", []string{"CRANK_TOKEN=" + c.token("api").Encode()}, bin,
		append(common, "--worker", "api", "--state", filepath.Join(tmp, "api"), "--workload-api", "unix://"+open)...)
	a2 := startProc(t, "crank-agent db", []string{"CRANK_TOKEN=" + c.token("db").Encode(), "CRANK_WORKLOAD_API_ALLOW=" + fmt.Sprint(os.Getuid()+1)}, bin,
		append(common, "--worker", "db", "--state", filepath.Join(tmp, "db"), "--workload-api", "unix://"+limited)...)
	for _, s := range []string{open, limited} {
		waitFor(t, "the socket "+s, 30*time.Second, func() bool { _, err := os.Lstat(s); return err == nil }, a1, a2)
	}
	tests := []struct {
		name, socket string
		header       bool
		jwt          bool
		want         codes.Code
	}{
		{"with the header", open, true, false, codes.OK},
		{"without the header", open, false, false, codes.InvalidArgument},
		{"JWT-SVID", open, true, true, codes.Unimplemented},
		{"user outside the allow-list", limited, true, false, codes.PermissionDenied},
		{"user outside the allow-list, JWT-SVID", limited, true, true, codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			conn, err := grpc.NewClient("unix://"+tt.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = conn.Close() })
			cl := workloadpb.NewSpiffeWorkloadAPIClient(conn)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if tt.header {
				ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
			}
			if tt.jwt {
				_, err = cl.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"x"}})
			} else {
				var s grpc.ServerStreamingClient[workloadpb.X509SVIDResponse]
				if s, err = cl.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{}); err == nil {
					_, err = s.Recv()
				}
			}
			if got := status.Code(err); got != tt.want {
				t.Errorf("code %v (%v), want %v", got, err, tt.want)
			}
			t.Logf("answer: %v", err)
		})
	}
}
