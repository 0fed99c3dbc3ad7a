package integration

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/internal/admin"
)

// TestWorkloadAPIGhostunnel: ghostunnel (github.com/ghostunnel/ghostunnel,
// a TLS proxy that speaks the Workload API through go-spiffe) takes its
// server certificate and client CA from crank-agent's socket, accepts a
// client presenting crank-agent's files, and serves the rotated certificate
// after `crank-ca rotate`. ghostunnel is optional: the test runs when
// $CRANK_GHOSTUNNEL names its binary or .ci/ghostunnel has built v1.8.4
// into its default cache directory (about three minutes from the module
// proxy); otherwise it skips.
func TestWorkloadAPIGhostunnel(t *testing.T) {
	t.Parallel()
	gt := os.Getenv("CRANK_GHOSTUNNEL")
	if gt == "" {
		// Where .ci/ghostunnel leaves it by default.
		if cache, err := os.UserCacheDir(); err == nil {
			if p := filepath.Join(cache, "crank-ca", "ghostunnel", "ghostunnel-v1.8.4"); fileExists(p) {
				gt = p
			}
		}
	}
	if gt == "" {
		t.Skip("ghostunnel is optional: run .ci/ghostunnel once (about three minutes) or set CRANK_GHOSTUNNEL to a ghostunnel binary")
	}
	if testing.Short() {
		t.Skip("runs crank-agent and ghostunnel")
	}
	bin := binary(t, "crank-agent")
	c := newCA(t, shortLived(40*time.Second))
	c.start()
	tmp := t.TempDir()
	state := filepath.Join(tmp, "state")
	sock := filepath.Join(shortSocketDir(t), "agent.sock")
	agent := startProc(t, "crank-agent", []string{"CRANK_TOKEN=" + c.token("api").Encode()}, bin,
		"--ca-url", c.url, "--fingerprint", c.fingerprint(), "--worker", "api", "--state", state, "--workload-api", "unix://"+sock)
	waitFor(t, "the socket", 30*time.Second, func() bool { _, err := os.Lstat(sock); return err == nil }, agent)

	// The plain TCP backend ghostunnel forwards to.
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = backend.Close() })
	go func() {
		for {
			conn, err := backend.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				line, _ := bufio.NewReader(conn).ReadString('\n')
				fmt.Fprintf(conn, "backend got %s", line)
			}()
		}
	}()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := l.Addr().String()
	_ = l.Close()
	g := startProc(t, "ghostunnel", nil, gt, "server", "--listen", listen, "--target", backend.Addr().String(),
		"--use-workload-api-addr", "unix://"+sock, "--allow-uri", "spiffe://crank.internal/worker/api")

	// The client presents the certificate crank-agent wrote to files, and
	// trusts only crank-ca's root.
	out := filepath.Join(state, "tls")
	dial := func() (string, error) {
		cert, err := tls.LoadX509KeyPair(filepath.Join(out, "chain.pem"), filepath.Join(out, "key.pem"))
		if err != nil {
			return "", err
		}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", listen, &tls.Config{
			RootCAs: c.roots, Certificates: []tls.Certificate{cert}, ServerName: "api.workers.crank.internal", MinVersion: tls.VersionTLS12,
		})
		if err != nil {
			return "", err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		peer := conn.ConnectionState().PeerCertificates[0]
		if len(peer.URIs) != 1 || peer.URIs[0].String() != "spiffe://crank.internal/worker/api" {
			return "", fmt.Errorf("ghostunnel presented %v", peer.URIs)
		}
		fmt.Fprintf(conn, "ping\n")
		reply, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			return "", err
		}
		if reply != "backend got ping\n" {
			return "", fmt.Errorf("reply %q", reply)
		}
		return peer.SerialNumber.String(), nil
	}
	var first string
	waitFor(t, "ghostunnel to serve", 30*time.Second, func() bool {
		first, err = dial()
		return err == nil
	}, agent, g)
	t.Logf("ghostunnel serves certificate %s from the Workload API", first)
	current := func() string {
		b := mustRead(t, filepath.Join(out, "cert.pem"))
		return parseChain(t, b)[0].SerialNumber.String()
	}
	if first != current() {
		t.Errorf("ghostunnel presented %s, crank-agent's current certificate is %s", first, current())
	}

	if st := c.admin(t, http.MethodPost, "/rotate", admin.RotateRequest{Worker: "api"}, nil); st != http.StatusOK {
		t.Fatalf("rotate: %d", st)
	}
	waitFor(t, "crank-agent to rotate", 30*time.Second, func() bool { return current() != first }, agent, g)
	rotated := time.Now()
	var now string
	waitFor(t, "ghostunnel to present the rotated certificate", 10*time.Second, func() bool {
		now, err = dial()
		return err == nil && now == current()
	}, agent, g)
	t.Logf("ghostunnel presented the rotated certificate %s %s after crank-agent wrote it", now, time.Since(rotated).Round(time.Millisecond))
	if strings.Contains(g.logs.String(), "PermissionDenied") || strings.Contains(g.logs.String(), "InvalidArgument") {
		t.Errorf("ghostunnel was refused\n%s", g.logs.String())
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
