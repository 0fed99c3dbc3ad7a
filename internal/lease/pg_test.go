package lease

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// startPostgres starts a throwaway PostgreSQL server on a loopback port for
// the test and returns a DSN for its "postgres" database; it is stopped at
// cleanup. CRANK_TEST_POSTGRES_DSN points at an existing server instead.
// Without either (or under -short) the test is skipped. A minimal copy of
// integration/degraded_test.go's newPGCluster.
func startPostgres(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	if dsn := os.Getenv("CRANK_TEST_POSTGRES_DSN"); dsn != "" {
		return dsn
	}
	bin := ""
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			bin = filepath.Dir(real)
		}
	} else if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb"); len(m) > 0 {
		bin = filepath.Dir(m[len(m)-1])
	}
	if bin == "" {
		t.Skip("PostgreSQL is not installed")
	}
	dir, err := os.MkdirTemp("", "crank-lease-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	var asUser []string
	if os.Geteuid() == 0 { // PostgreSQL refuses to run as root
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skip("running as root and there is no postgres user")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	command := func(ctx context.Context, name string, args ...string) *exec.Cmd {
		full := append(append(append([]string{}, asUser...), filepath.Join(bin, name)), args...)
		return exec.CommandContext(ctx, full[0], full[1:]...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	data := filepath.Join(dir, "data")
	if out, err := command(ctx, "initdb", "-D", data, "-U", "crank", "--auth=trust", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	_ = ln.Close()
	srv := command(context.Background(), "postgres", "-D", data, "-p", port, "-h", "127.0.0.1", "-k", dir, "-c", "fsync=off")
	if err := srv.Start(); err != nil {
		t.Fatalf("postgres: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = srv.Wait(); close(exited) }()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// Signals to runuser are not forwarded; pg_ctl finds the server.
		_ = command(sctx, "pg_ctl", "stop", "-D", data, "-m", "immediate", "-w").Run()
		select {
		case <-exited:
		case <-sctx.Done():
			_ = srv.Process.Kill()
			<-exited
		}
	})
	for {
		if command(ctx, "pg_isready", "-h", "127.0.0.1", "-p", port).Run() == nil {
			return fmt.Sprintf("postgresql://crank@127.0.0.1:%s/postgres?sslmode=disable", port)
		}
		select {
		case <-ctx.Done():
			t.Fatal("postgres never became ready")
		case <-exited:
			t.Fatal("postgres exited at start")
		case <-time.After(100 * time.Millisecond):
		}
	}
}
