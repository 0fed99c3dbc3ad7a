package integration

import (
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHelloWorkerBinaries runs two hello-worker processes that greet each
// other over mTLS, as the README shows against `make run`'s CA.
func TestHelloWorkerBinaries(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	bin := binary(t, "hello-worker")
	c := newCA(t, nil)
	c.start()
	ports := []int{freePort(t), freePort(t)}
	names := []string{"alpha", "beta"}
	var logs [2]syncBuffer
	var cmds [2]*exec.Cmd
	for i, name := range names {
		peer := names[1-i]
		cmd := exec.Command(bin,
			"--ca-url", c.url, "--fingerprint", c.fingerprint(), "--worker", name,
			"--state", filepath.Join(t.TempDir(), name),
			"--listen", "127.0.0.1:"+strconv.Itoa(ports[i]),
			"--peer", "https://127.0.0.1:"+strconv.Itoa(ports[1-i])+"/",
			"--peer-id", "spiffe://crank.internal/worker/"+peer,
			"--interval", "100ms")
		cmd.Env = append(cmd.Environ(), "CRANK_TOKEN="+c.token(name).Encode())
		cmd.Stdout, cmd.Stderr = &logs[i], &logs[i]
		start := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[i] = cmd
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		for deadline := time.Now().Add(30 * time.Second); ; {
			conn, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(ports[i]))
			if err == nil {
				conn.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never listened\n%s", name, logs[i].String())
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Logf("%s: process start to mTLS listener: %s", name, time.Since(start))
	}
	for i, name := range names {
		want := "hello spiffe://crank.internal/worker/" + name + ", this is spiffe://crank.internal/worker/" + names[1-i]
		for deadline := time.Now().Add(30 * time.Second); !strings.Contains(logs[i].String(), want); {
			if time.Now().After(deadline) {
				t.Fatalf("%s was never greeted by its peer\n%s", name, logs[i].String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for i, cmd := range cmds {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("%s exit: %v\n%s", names[i], err, logs[i].String())
		}
		if strings.Contains(logs[i].String(), "peer call failed") && !strings.Contains(logs[i].String(), "connection refused") {
			t.Errorf("%s logged peer failures:\n%s", names[i], logs[i].String())
		}
	}
}
