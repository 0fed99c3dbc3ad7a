package supervise

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// DefaultStopTimeout is how long Run waits, after ctx is done and the child
// was sent SIGTERM, before it kills the child.
const DefaultStopTimeout = 10 * time.Second

// ErrNoCommand is returned by Run when Config.Command is empty.
var ErrNoCommand = errors.New("supervise: no command to run")

// StartError reports that the child could not be started (not found, not
// executable, ...). It unwraps to the cause, e.g. exec.ErrNotFound.
type StartError struct {
	Command string
	Err     error
}

func (e *StartError) Error() string {
	return fmt.Sprintf("cannot start %s: %v", e.Command, e.Err)
}

func (e *StartError) Unwrap() error { return e.Err }

// Config configures Run. The command line and environment are decided by
// the caller (cmd/crank-agent); nothing here reads flags or the environment.
type Config struct {
	// Command is the program and its arguments; the program is looked up in
	// PATH when it contains no slash.
	Command []string
	// Env is the child's entire environment; nil means the supervisor's own.
	Env []string
	// Stdin, Stdout and Stderr are the child's streams; nil means the
	// supervisor's own (inherited, not copied).
	Stdin          io.Reader
	Stdout, Stderr io.Writer

	// Rotations receives a value after every certificate rotation (for
	// example agent.Subscribe()). nil means no rotations.
	Rotations <-chan struct{}
	// OnRotate is called for every rotation before the child is signalled;
	// it writes the new files. If it fails the error is logged and the child
	// is not signalled: it keeps using the previous files, which are still
	// complete. nil means nothing to do.
	OnRotate func() error
	// RotateSignal is sent to the child after every successful OnRotate;
	// nil means none.
	RotateSignal os.Signal

	// Signals carries signals received by the supervisor that are to be
	// passed on to the child (SIGINT, SIGTERM, ...). nil means none.
	Signals <-chan os.Signal
	// StopTimeout is how long to wait after SIGTERM, once ctx is done,
	// before killing the child; zero means DefaultStopTimeout.
	StopTimeout time.Duration

	Logger *slog.Logger
}

// Run starts the child and supervises it until it exits, then returns its
// exit status: the exit code, or 128+n if it was killed by signal n. When
// ctx is done the child is sent SIGTERM and, if it is still running after
// StopTimeout, killed; Run still returns its status. err is non-nil only if
// the child could not be started (*StartError, with code -1), Command is
// empty (ErrNoCommand) or waiting for it failed.
func Run(ctx context.Context, cfg Config) (exitCode int, err error) {
	if len(cfg.Command) == 0 || cfg.Command[0] == "" {
		return -1, ErrNoCommand
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stopTimeout := cfg.StopTimeout
	if stopTimeout <= 0 {
		stopTimeout = DefaultStopTimeout
	}

	cmd := exec.Command(cfg.Command[0], cfg.Command[1:]...)
	cmd.Env = cfg.Env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = orFile(cfg.Stdin, os.Stdin), orWriter(cfg.Stdout, os.Stdout), orWriter(cfg.Stderr, os.Stderr)
	if err := cmd.Start(); err != nil {
		return -1, &StartError{Command: cfg.Command[0], Err: err}
	}
	proc := cmd.Process
	log = log.With("pid", proc.Pid)
	log.Info("child started", "command", cfg.Command)

	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	rotations, signals, done := cfg.Rotations, cfg.Signals, ctx.Done()
	var kill <-chan time.Time
	killTimer := time.NewTimer(stopTimeout)
	killTimer.Stop()
	defer killTimer.Stop()
	for {
		select {
		case werr := <-waited:
			code := status(cmd.ProcessState)
			var ee *exec.ExitError
			if werr != nil && !errors.As(werr, &ee) {
				return code, fmt.Errorf("waiting for %s: %w", cfg.Command[0], werr)
			}
			log.Info("child exited", "status", code, "state", cmd.ProcessState.String())
			return code, nil

		case _, ok := <-rotations:
			if !ok {
				rotations = nil
				continue
			}
			rotate(cfg, proc, log)

		case sig, ok := <-signals:
			if !ok {
				signals = nil
				continue
			}
			if err := proc.Signal(sig); err != nil {
				log.Warn("could not forward a signal to the child", "signal", sig, "err", err)
				continue
			}
			log.Info("forwarded a signal to the child", "signal", sig)

		case <-done:
			done = nil
			log.Info("stopping the child", "signal", syscall.SIGTERM, "killAfter", stopTimeout)
			if err := proc.Signal(syscall.SIGTERM); err != nil {
				_ = proc.Kill()
				continue
			}
			killTimer.Reset(stopTimeout)
			kill = killTimer.C

		case <-kill:
			kill = nil
			log.Warn("the child did not stop in time; killing it", "after", stopTimeout)
			_ = proc.Kill()
		}
	}
}

// rotate writes the new files and then, only if that worked, signals the
// child.
func rotate(cfg Config, proc *os.Process, log *slog.Logger) {
	if cfg.OnRotate != nil {
		if err := cfg.OnRotate(); err != nil {
			log.Error("certificate rotated but the files could not be written; the child keeps the previous files and is not signalled", "err", err)
			return
		}
	}
	if cfg.RotateSignal == nil {
		log.Info("certificate files rotated; no signal configured for the child")
		return
	}
	if err := proc.Signal(cfg.RotateSignal); err != nil {
		log.Warn("could not signal the child after rotation", "signal", cfg.RotateSignal, "err", err)
		return
	}
	log.Info("signalled the child after rotation", "signal", cfg.RotateSignal)
}

// status is the exit status as a shell reports it: the exit code, or 128+n
// for a child killed by signal n.
func status(ps *os.ProcessState) int {
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

func orFile(r io.Reader, def *os.File) io.Reader {
	if r == nil {
		return def
	}
	return r
}

func orWriter(w io.Writer, def *os.File) io.Writer {
	if w == nil {
		return def
	}
	return w
}
