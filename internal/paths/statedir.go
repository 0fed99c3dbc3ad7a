package paths

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Source says which rule chose the state directory. Workers log it at start
// so an operator can tell why the state is where it is.
type Source string

// The rules of StateDir, in order of precedence.
const (
	SourceFlag      Source = "flag"      // the explicit argument (--state)
	SourceEnv       Source = "env"       // CRANK_STATE_DIR
	SourceContainer Source = "container" // /var/lib/crank/<worker>
	SourceNative    Source = "native"    // XDG state dir or ~/.local/state
)

// Environment variables and marker files StateDir consults. They are
// exported so that cmd/ help texts and docs can name them without copying.
const (
	EnvStateDir       = "CRANK_STATE_DIR"
	EnvKubernetesHost = "KUBERNETES_SERVICE_HOST"
	EnvXDGStateHome   = "XDG_STATE_HOME"
	DockerEnvFile     = "/.dockerenv"
	PodmanEnvFile     = "/run/.containerenv"
	ContainerBase     = "/var/lib/crank"
)

// Env is the slice of the process environment StateDir looks at. It is
// passed in, not read here, so that tests can describe any machine and so
// that only cmd/ touches the real environment.
type Env struct {
	// Getenv returns a variable's value, "" if unset (os.Getenv from cmd/).
	// nil means an empty environment.
	Getenv func(string) string
	// Stat is used to detect container marker files; nil means os.Stat.
	Stat func(string) (fs.FileInfo, error)
	// HomeDir returns the user's home directory; nil means os.UserHomeDir.
	HomeDir func() (string, error)
}

func (e Env) getenv(k string) string {
	if e.Getenv == nil {
		return ""
	}
	return e.Getenv(k)
}

func (e Env) exists(p string) bool {
	stat := e.Stat
	if stat == nil {
		stat = os.Stat
	}
	_, err := stat(p)
	return err == nil
}

func (e Env) home() (string, error) {
	if e.HomeDir == nil {
		return os.UserHomeDir()
	}
	return e.HomeDir()
}

// ValidWorker reports whether name is acceptable as a worker name: a
// lower-case DNS label of 1 to 63 characters. The name is used as a path
// component and in the SPIFFE ID, so this is deliberately stricter than
// what a file system would accept.
func ValidWorker(name string) bool {
	if len(name) == 0 || len(name) > 63 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i != 0 && i != len(name)-1:
		default:
			return false
		}
	}
	return true
}

// StateDir resolves the state directory of worker. The first rule that
// applies wins:
//
//  1. explicit, if non-empty (the --state flag): used as is;
//  2. $CRANK_STATE_DIR, if non-empty: used as is, the worker name is NOT
//     appended (the variable names one worker's directory, typically a
//     mounted volume);
//  3. in a container — $KUBERNETES_SERVICE_HOST is set, or /.dockerenv or
//     /run/.containerenv exists: /var/lib/crank/<worker>, a fixed path to
//     mount a volume on;
//  4. otherwise (native): $XDG_STATE_HOME/crank/<worker> if XDG_STATE_HOME
//     is an absolute path (the XDG spec says to ignore relative ones), else
//     <home>/.local/state/crank/<worker>.
//
// worker must satisfy ValidWorker in every case, even when it is not part of
// the path, so that a bad name is reported the same way whichever rule
// applies; the error is a *WorkerError. Relative explicit or
// CRANK_STATE_DIR values are made absolute against the working directory.
// The result is absolute and cleaned. StateDir creates nothing; see Ensure.
func StateDir(explicit, worker string, env Env) (string, Source, error) {
	if !ValidWorker(worker) {
		return "", "", &WorkerError{Name: worker}
	}
	if explicit != "" {
		dir, err := absolute(explicit)
		return dir, SourceFlag, err
	}
	if v := env.getenv(EnvStateDir); v != "" {
		dir, err := absolute(v)
		return dir, SourceEnv, err
	}
	if env.getenv(EnvKubernetesHost) != "" || env.exists(DockerEnvFile) || env.exists(PodmanEnvFile) {
		return filepath.Join(ContainerBase, worker), SourceContainer, nil
	}
	if x := env.getenv(EnvXDGStateHome); filepath.IsAbs(x) {
		return filepath.Join(x, "crank", worker), SourceNative, nil
	}
	home, err := env.home()
	if err != nil {
		return "", "", &PathError{Op: "resolve", Err: fmt.Errorf("%w: %w", ErrNoHome, err)}
	}
	if !filepath.IsAbs(home) {
		return "", "", &PathError{Op: "resolve", Path: home, Err: fmt.Errorf("%w: %q is not absolute", ErrNoHome, home)}
	}
	return filepath.Join(home, ".local", "state", "crank", worker), SourceNative, nil
}

func absolute(p string) (string, error) {
	dir, err := filepath.Abs(p)
	if err != nil {
		return "", &PathError{Op: "resolve", Path: p, Err: err}
	}
	return dir, nil
}

// Ensure makes dir usable as a state directory: it creates it (and missing
// parents) with mode 0700, and fails with ErrNotDir if the path exists but
// is not a directory, or with ErrInsecurePerm if the directory is writable
// by group or others. An existing directory's mode is checked, not
// changed: loosened permissions are a sign of misconfiguration that an
// operator should see rather than have silently repaired. Symbolic links to
// a directory are followed.
func Ensure(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		// MkdirAll fails (with ENOTDIR) when dir or a parent is a file.
		if fi, serr := os.Stat(dir); serr == nil && !fi.IsDir() {
			return &PathError{Op: "ensure", Path: dir, Err: ErrNotDir}
		}
		return &PathError{Op: "ensure", Path: dir, Err: err}
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return &PathError{Op: "ensure", Path: dir, Err: err}
	}
	if !fi.IsDir() {
		return &PathError{Op: "ensure", Path: dir, Err: ErrNotDir}
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return &PathError{Op: "ensure", Path: dir, Err: fmt.Errorf("%w (mode %#o)", ErrInsecurePerm, perm)}
	}
	return nil
}

// EnsureChosen is Ensure for a directory StateDir chose by rule src. When
// the directory cannot be created or used, the error says which rule chose
// it and how to choose another: a worker started as a non-root user in
// something that looks like a container otherwise only sees "mkdir
// /var/lib/crank: permission denied".
func EnsureChosen(dir string, src Source) error {
	err := Ensure(dir)
	if err == nil || errors.Is(err, ErrInsecurePerm) {
		return err
	}
	var why string
	switch src {
	case SourceContainer:
		why = fmt.Sprintf("it is the container default (%s, %s or $%s was found); run as a user who may create it, mount a writable volume there, or", DockerEnvFile, PodmanEnvFile, EnvKubernetesHost)
	case SourceNative:
		why = "it is the default for this user;"
	case SourceEnv:
		why = "$" + EnvStateDir + " names it;"
	default:
		why = "--state names it;"
	}
	return fmt.Errorf("%w (state directory %s: %s choose a directory this user may write with --state DIR or $%s)", err, dir, why, EnvStateDir)
}
