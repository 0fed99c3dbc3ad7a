//go:build unix

package supervise

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// loop keeps a script alive while letting its traps run promptly: sh runs a
// trap once the foreground command (a short sleep) has finished.
const loop = `touch "$D/ready"; while :; do sleep 0.05; done`

// harness drives one supervised child: D in the child's environment is a
// private directory the script and the test share.
type harness struct {
	t         *testing.T
	dir       string
	rotations chan struct{}
	signals   chan os.Signal
	cancel    context.CancelFunc
	calls     atomic.Int32  // OnRotate calls
	called    chan struct{} // one value per OnRotate call
	rotateErr error
}

// rotate delivers one rotation; it returns once the supervisor took it.
func (h *harness) rotate() {
	h.t.Helper()
	select {
	case h.rotations <- struct{}{}:
	case <-time.After(10 * time.Second):
		h.t.Fatal("the supervisor did not take the rotation")
	}
}

// signal passes sig to the supervisor for forwarding.
func (h *harness) signal(sig os.Signal) {
	h.t.Helper()
	select {
	case h.signals <- sig:
	case <-time.After(10 * time.Second):
		h.t.Fatalf("the supervisor did not take %v", sig)
	}
}

// wait polls until file in the shared directory exists and contains want.
func (h *harness) wait(file, want string) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(h.dir, file))
		if err == nil && strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s never contained %q (have %q, %v)", file, want, b, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *harness) read(file string) string {
	h.t.Helper()
	b, err := os.ReadFile(filepath.Join(h.dir, file))
	if errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return string(b)
}

// onRotate stands in for writing the certificate files: it records a
// generation number the child's trap can read back.
func (h *harness) onRotate() error {
	n := h.calls.Add(1)
	defer func() { h.called <- struct{}{} }()
	if h.rotateErr != nil {
		return h.rotateErr
	}
	return os.WriteFile(filepath.Join(h.dir, "gen"), []byte(strconv.Itoa(int(n))), 0o600)
}

func (h *harness) waitCalled() {
	h.t.Helper()
	select {
	case <-h.called:
	case <-time.After(10 * time.Second):
		h.t.Fatal("OnRotate was not called")
	}
}

func TestRun(t *testing.T) {
	t.Parallel()
	hupTrap := `trap 'echo "HUP $(cat "$D/gen" 2>/dev/null)" >> "$D/sigs"' HUP; trap 'exit 5' TERM; `
	tests := []struct {
		name   string
		script string
		cfg    func(*Config, *harness)
		drive  func(*harness)
		want   int
		check  func(*harness)
	}{
		{name: "exit status propagates", script: `exit 3`, want: 3},
		{name: "success", script: `exit 0`, want: 0},
		{name: "killed by a signal is 128+n", script: `kill -KILL $$`, want: 128 + int(syscall.SIGKILL)},
		{
			name:   "environment is the given one",
			script: `[ "$FOO" = bar ] && [ -z "$HOME" ] && exit 4; exit 1`,
			cfg:    func(c *Config, h *harness) { c.Env = []string{"D=" + h.dir, "FOO=bar"} },
			want:   4,
		},
		{
			name:   "forwarded SIGTERM kills an untrapping child",
			script: loop,
			drive:  func(h *harness) { h.wait("ready", ""); h.signal(syscall.SIGTERM) },
			want:   128 + int(syscall.SIGTERM),
		},
		{
			name:   "forwarded SIGTERM reaches the child's trap",
			script: `trap 'echo TERM > "$D/sigs"; exit 7' TERM; ` + loop,
			drive:  func(h *harness) { h.wait("ready", ""); h.signal(syscall.SIGTERM) },
			want:   7,
			check: func(h *harness) {
				if got := h.read("sigs"); got != "TERM\n" {
					h.t.Errorf("child saw %q", got)
				}
			},
		},
		{
			name:   "forwarded SIGINT",
			script: `trap 'exit 8' INT; ` + loop,
			drive:  func(h *harness) { h.wait("ready", ""); h.signal(syscall.SIGINT) },
			want:   8,
		},
		{
			name:   "rotation signals the child after the files are written",
			script: hupTrap + loop,
			drive: func(h *harness) {
				h.wait("ready", "")
				h.rotate()
				h.wait("sigs", "HUP 1\n")
				h.rotate()
				h.wait("sigs", "HUP 2\n")
				h.signal(syscall.SIGTERM)
			},
			want: 5,
			check: func(h *harness) {
				if got := h.read("sigs"); got != "HUP 1\nHUP 2\n" {
					h.t.Errorf("child saw %q, want each HUP after its files", got)
				}
			},
		},
		{
			name:   "rotation with another signal",
			script: `trap 'echo USR1 >> "$D/sigs"' USR1; trap 'exit 5' TERM; ` + loop,
			cfg:    func(c *Config, _ *harness) { c.RotateSignal = syscall.SIGUSR1 },
			drive: func(h *harness) {
				h.wait("ready", "")
				h.rotate()
				h.wait("sigs", "USR1")
				h.signal(syscall.SIGTERM)
			},
			want: 5,
		},
		{
			name:   "failed OnRotate: no signal",
			script: hupTrap + loop,
			cfg:    func(_ *Config, h *harness) { h.rotateErr = errors.New("disk full") },
			drive: func(h *harness) {
				h.wait("ready", "")
				h.rotate()
				h.waitCalled()
				// Signals are handled one at a time, so the forwarded
				// SIGTERM comes after whatever the rotation did.
				h.signal(syscall.SIGTERM)
			},
			want: 5,
			check: func(h *harness) {
				if got := h.read("sigs"); got != "" {
					h.t.Errorf("child was signalled after a failed write: %q", got)
				}
			},
		},
		{
			name:   "no rotation signal configured",
			script: hupTrap + loop,
			cfg:    func(c *Config, _ *harness) { c.RotateSignal = nil },
			drive: func(h *harness) {
				h.wait("ready", "")
				h.rotate()
				h.waitCalled()
				h.signal(syscall.SIGTERM)
			},
			want: 5,
			check: func(h *harness) {
				if h.read("gen") != "1" || h.read("sigs") != "" {
					h.t.Errorf("gen %q, sigs %q: want files written and no signal", h.read("gen"), h.read("sigs"))
				}
			},
		},
		{
			name:   "cancelled context stops the child with SIGTERM",
			script: `trap 'exit 6' TERM; ` + loop,
			drive:  func(h *harness) { h.wait("ready", ""); h.cancel() },
			want:   6,
		},
		{
			name:   "cancelled context kills a child ignoring SIGTERM",
			script: `trap '' TERM; ` + loop,
			cfg:    func(c *Config, _ *harness) { c.StopTimeout = 200 * time.Millisecond },
			drive:  func(h *harness) { h.wait("ready", ""); h.cancel() },
			want:   128 + int(syscall.SIGKILL),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithCancel(t.Context())
			t.Cleanup(cancel)
			h := &harness{
				t: t, dir: t.TempDir(), cancel: cancel,
				rotations: make(chan struct{}), signals: make(chan os.Signal), called: make(chan struct{}, 16),
			}
			var out bytes.Buffer
			cfg := Config{
				Command:      []string{"/bin/sh", "-c", tt.script},
				Env:          []string{"D=" + h.dir, "PATH=" + os.Getenv("PATH")},
				Stdout:       &out,
				Stderr:       &out,
				Rotations:    h.rotations,
				OnRotate:     h.onRotate,
				RotateSignal: syscall.SIGHUP,
				Signals:      h.signals,
				Logger:       slog.New(slog.NewTextHandler(t.Output(), nil)),
			}
			if tt.cfg != nil {
				tt.cfg(&cfg, h)
			}
			type result struct {
				code int
				err  error
			}
			done := make(chan result, 1)
			go func() {
				code, err := Run(ctx, cfg)
				done <- result{code, err}
			}()
			if tt.drive != nil {
				tt.drive(h)
			}
			var res result
			select {
			case res = <-done:
			case <-time.After(15 * time.Second):
				t.Fatal("Run did not return")
			}
			if res.err != nil || res.code != tt.want {
				t.Errorf("Run = %d, %v; want %d, nil (child output %q)", res.code, res.err, tt.want, out.String())
			}
			if tt.check != nil {
				tt.check(h)
			}
		})
	}
}

func TestRunErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		command []string
		want    error
	}{
		{"no command", nil, ErrNoCommand},
		{"empty program", []string{""}, ErrNoCommand},
		{"missing program", []string{filepath.Join(t.TempDir(), "nope")}, fs.ErrNotExist},
		{"not in PATH", []string{"crank-no-such-program-here"}, exec.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, err := Run(t.Context(), Config{Command: tt.command})
			if code != -1 || !errors.Is(err, tt.want) {
				t.Fatalf("Run = %d, %v; want -1, %v", code, err, tt.want)
			}
			var se *StartError
			if tt.want != ErrNoCommand && !errors.As(err, &se) {
				t.Errorf("%v is not a *StartError", err)
			}
		})
	}
}
