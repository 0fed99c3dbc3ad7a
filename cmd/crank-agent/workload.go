package main

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/crank-platform/crank-ca/internal/workload"
)

// The Workload API's environment: what crank-agent reads, and the variable
// SPIFFE libraries read, which it sets for its child.
const (
	envWorkloadAPI      = "CRANK_WORKLOAD_API"
	envWorkloadAPIMode  = "CRANK_WORKLOAD_API_MODE"
	envWorkloadAPIAllow = "CRANK_WORKLOAD_API_ALLOW"
	envSPIFFEEndpoint   = "SPIFFE_ENDPOINT_SOCKET"
)

// defaultWorkloadSocket is the socket's name in the state directory when
// neither --workload-api nor $CRANK_WORKLOAD_API names one.
const defaultWorkloadSocket = "workload.sock"

// workloadOptions are the Workload API's flags, as given.
type workloadOptions struct {
	addr, mode, allow string
}

func addWorkloadFlags(fs *flag.FlagSet, o *workloadOptions) {
	fs.StringVar(&o.addr, "workload-api", "", "serve the SPIFFE Workload API on `ADDR` (unix:///path/agent.sock), or off (default $"+envWorkloadAPI+", else unix://STATE/"+defaultWorkloadSocket+")")
	fs.StringVar(&o.mode, "workload-api-mode", "", "`OCTAL` permission bits of the Workload API socket (default $"+envWorkloadAPIMode+", else 0600)")
	fs.StringVar(&o.allow, "workload-api-allow", "", "answer Workload API calls only from these Unix users: `LIST` of uids and user names, comma-separated (default $"+envWorkloadAPIAllow+", else whoever can open the socket)")
}

// workloadConfig is the resolved Workload API configuration.
type workloadConfig struct {
	path string
	// explicit: the address was given (flag or environment), so failing
	// to serve on it is an error; the default only earns a warning.
	explicit bool
	mode     fs.FileMode
	allow    []uint32
}

// resolveWorkloadAPI reads the Workload API's flags and environment. It
// returns nil when the API is off: asked to be, or with --once (the
// environment and the default are ignored there; the flag is a usage
// error). Every error is a usage error.
func resolveWorkloadAPI(o *options, getenv func(string) string, stateDir string) (*workloadConfig, error) {
	w := o.workload
	if o.once {
		if w.addr != "" || w.mode != "" || w.allow != "" {
			return nil, usageErr("--workload-api has no use with --once (crank-agent exits at once)")
		}
		return nil, nil
	}
	c := &workloadConfig{mode: 0o600}
	addr, what := w.addr, "--workload-api"
	if addr == "" {
		addr, what = getenv(envWorkloadAPI), "$"+envWorkloadAPI
	}
	switch strings.ToLower(strings.TrimSpace(addr)) {
	case "off", "none", "false", "0":
		return nil, nil
	case "":
		c.path = filepath.Join(stateDir, defaultWorkloadSocket)
	default:
		p, err := workload.ParseAddr(addr)
		if err != nil {
			return nil, usageErr("%s: %v", what, err)
		}
		c.path, c.explicit = p, true
	}

	mode, what := w.mode, "--workload-api-mode"
	if mode == "" {
		mode, what = getenv(envWorkloadAPIMode), "$"+envWorkloadAPIMode
	}
	if mode != "" {
		m, err := workload.ParseMode(mode)
		if err != nil {
			return nil, usageErr("%s: %v", what, err)
		}
		c.mode = m
	}

	allow, what := w.allow, "--workload-api-allow"
	if allow == "" {
		allow, what = getenv(envWorkloadAPIAllow), "$"+envWorkloadAPIAllow
	}
	if allow != "" {
		al, err := workload.ParseAllowList(allow)
		if err != nil {
			return nil, usageErr("%s: %v", what, err)
		}
		c.allow = al.UIDs
		for _, name := range al.Names {
			u, err := user.Lookup(name)
			if err != nil {
				return nil, usageErr("%s: %v", what, err)
			}
			uid, err := strconv.ParseUint(u.Uid, 10, 32)
			if err != nil {
				return nil, usageErr("%s: user %s has uid %q", what, name, u.Uid)
			}
			c.allow = append(c.allow, uint32(uid))
		}
		slices.Sort(c.allow)
		c.allow = slices.Compact(c.allow)
	}
	if c.mode&0o002 != 0 && len(c.allow) == 0 {
		return nil, usageErr("a Workload API socket any local user can open (mode %04o) needs --workload-api-allow", c.mode)
	}
	return c, nil
}

// workloadAPI is a running Workload API server. A nil *workloadAPI is one
// that is off; its methods are then no-ops.
type workloadAPI struct {
	addr   string
	cancel context.CancelFunc
	done   chan error
}

// startWorkloadAPI creates the socket and serves the Workload API from src
// until stop. A default socket that cannot be created (a state directory
// too deep for a socket path, say) is logged and skipped: crank-agent's
// files still work. An explicit one is an error.
func startWorkloadAPI(c *workloadConfig, src workload.Source, hint string, log *slog.Logger) (*workloadAPI, error) {
	if c == nil {
		return nil, nil
	}
	fail := func(err error) (*workloadAPI, error) {
		if c.explicit {
			return nil, fmt.Errorf("--workload-api: %w", err)
		}
		log.Warn("the Workload API is off: its default socket cannot be created; name one with --workload-api (or set it to off)", "socket", c.path, "err", err)
		return nil, nil
	}
	if len(c.path) > workload.MaxSocketPath {
		return fail(fmt.Errorf("socket path %s is longer than the %d bytes Unix sockets allow", c.path, workload.MaxSocketPath))
	}
	srv, err := workload.New(workload.Config{Source: src, AllowUIDs: c.allow, Hint: hint, Logger: log.With("component", "workload-api")})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	ln, err := workload.Listen(ctx, c.path, c.mode)
	if err != nil {
		cancel()
		return fail(err)
	}
	w := &workloadAPI{addr: workload.Addr(c.path), cancel: cancel, done: make(chan error, 1)}
	go func() { w.done <- srv.Serve(ctx, ln) }()
	args := []any{"addr", w.addr, "mode", fmt.Sprintf("%04o", c.mode)}
	if len(c.allow) > 0 {
		args = append(args, "allowUIDs", c.allow)
	}
	log.Info("serving the SPIFFE Workload API", args...)
	return w, nil
}

// stop ends serving and removes the socket.
func (w *workloadAPI) stop(log *slog.Logger) {
	if w == nil {
		return
	}
	w.cancel()
	if err := <-w.done; err != nil {
		log.Error("the Workload API failed", "err", err)
	}
}

// withEndpoint sets SPIFFE_ENDPOINT_SOCKET in the child's environment, so
// that SPIFFE libraries in it find the Workload API without configuration.
func (w *workloadAPI) withEndpoint(env []string) []string {
	if w == nil {
		return env
	}
	env = slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, envSPIFFEEndpoint+"=") })
	return append(env, envSPIFFEEndpoint+"="+w.addr)
}
