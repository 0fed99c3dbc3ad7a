// Command crank-agent is the worker side of crank-ca as a program. It
// obtains a worker's certificate, keeps it renewed and writes it to files
// (cert.pem, chain.pem, key.pem, root.pem), either on its own (--once, or as
// a daemon) or as the supervisor of the worker's program, which it starts
// with the file paths in its environment and signals after every rotation.
//
// It only parses flags and the environment, sets up logging and signals, and
// maps errors to exit codes; the work is in internal/agent (ACME) and
// internal/supervise (the child process).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/crank-platform/crank-ca/internal/agent"
	"github.com/crank-platform/crank-ca/internal/paths"
	"github.com/crank-platform/crank-ca/internal/supervise"
	"github.com/crank-platform/crank-ca/internal/version"
)

// Environment variables crank-agent reads, and those it sets for its child.
const (
	envToken     = "CRANK_TOKEN"
	envCertFile  = "CRANK_CERT_FILE"
	envKeyFile   = "CRANK_KEY_FILE"
	envChainFile = "CRANK_CHAIN_FILE"
	envRootFile  = "CRANK_ROOT_FILE"
	envSPIFFEID  = "CRANK_SPIFFE_ID"
)

const usage = `crank-agent: obtains and renews a worker's certificate from crank-ca

Usage:
  crank-agent --ca-url URL --fingerprint HEX --worker NAME [--token TOKEN | --token-file FILE] [options] -- COMMAND [ARG...]
  crank-agent --ca-url URL --fingerprint HEX --worker NAME [--token TOKEN | --token-file FILE] [options] --once
  crank-agent --ca-url URL --fingerprint HEX --worker NAME [--token TOKEN | --token-file FILE] [options]
  crank-agent --ca-url URL --fingerprint HEX --jwt-file FILE [--worker NAME] --state DIR [options] [--once | -- COMMAND [ARG...]]
  crank-agent --version

With a COMMAND, crank-agent obtains the certificate, writes the files to --out
and starts COMMAND with ` + envCertFile + `, ` + envKeyFile + `, ` + envChainFile + `,
` + envRootFile + ` (absolute paths) and ` + envSPIFFEID + ` added to its environment.
After every renewal it rewrites the files and then sends COMMAND --signal.
SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are passed on to COMMAND,
and crank-agent exits with COMMAND's status (128+n if it died from signal n).

With --once it obtains a certificate, or reuses a still valid one from the
state directory without contacting the CA, writes the files and exits.
With neither it keeps renewing and rewriting the files until SIGINT or SIGTERM.

The join token is needed only until the worker has an account: --token,
--token-file or $` + envToken + ` (which is not passed on to COMMAND). Instead of a
token, --jwt-file names a file holding a JWT the platform gives the worker (a
Kubernetes projected service-account token, an OIDC identity token): it is
read afresh and exchanged at the CA for one-time credentials whenever the
agent needs a new account, at the first start and whenever the CA no longer
accepts the account (maxBindingAge). The CA then decides the worker's
identity; --worker is optional (a plain worker name the JWT must attest, or a
name for logs), and without it --state or $` + paths.EnvStateDir + ` is required. --fingerprint
is needed only until the state directory holds the CA's root. The state
directory is --state, else $` + paths.EnvStateDir + `, else ` + paths.ContainerBase + `/NAME in a
container, else $XDG_STATE_HOME/crank/NAME or ~/.local/state/crank/NAME.

Unless --once, crank-agent also serves the SPIFFE Workload API (X.509-SVIDs,
rotated with the files) on the Unix socket --workload-api, by default
STATE/workload.sock, and gives COMMAND its address in $` + envSPIFFEEndpoint + `.

Exit status: 0 done, 1 failure, 2 usage error, or COMMAND's status.

Options:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks command-line mistakes (exit code 2).
var errUsage = errors.New("usage")

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// options is the parsed command line.
type options struct {
	caURL, fingerprint, token, tokenFile, jwtFile, worker, provisioner, state, out string
	signal                                                                         os.Signal // nil: none
	once                                                                           bool
	logFormat                                                                      string
	logLevel                                                                       slog.Level
	command                                                                        []string
	metricsListen                                                                  string
	workload                                                                       workloadOptions
}

func newFlagSet(o *options) (*flag.FlagSet, *string, *string) {
	fs := flag.NewFlagSet("crank-agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.caURL, "ca-url", "", "the CA's base `URL`, e.g. https://ca.internal:9090 (required)")
	fs.StringVar(&o.fingerprint, "fingerprint", "", "`HEX` SHA-256 of the CA's root certificate, as crank-ca init printed it")
	fs.StringVar(&o.token, "token", "", "join `TOKEN` (visible to other local users in the process list; prefer --token-file or $"+envToken+")")
	fs.StringVar(&o.tokenFile, "token-file", "", "`FILE` holding the join token")
	fs.StringVar(&o.jwtFile, "jwt-file", "", "`FILE` holding a JWT to attest with instead of a join token (read afresh at every attestation)")
	fs.StringVar(&o.worker, "worker", "", "the worker's `NAME` (required)")
	fs.StringVar(&o.provisioner, "provisioner", agent.DefaultProvisioner, "the CA's worker `provisioner`")
	fs.StringVar(&o.state, "state", "", "state `DIR` (account, certificate, key, pinned root)")
	fs.StringVar(&o.out, "out", "", "`DIR` to write cert.pem, chain.pem, key.pem and root.pem to (default STATE/tls)")
	sig := fs.String("signal", "HUP", "`SIGNAL` sent to COMMAND after each rotation: HUP, USR1, USR2, TERM, ... or none")
	fs.BoolVar(&o.once, "once", false, "obtain or reuse a certificate, write the files and exit")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus metrics at http://`ADDR`/metrics (host:port; default $"+envMetricsListen+", else none)")
	addWorkloadFlags(fs, &o.workload)
	fs.StringVar(&o.logFormat, "log-format", "text", "log `format` on stderr: text or json")
	level := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	return fs, sig, level
}

// parseArgs parses and checks the command line; every error wraps errUsage
// (or is flag.ErrHelp).
func parseArgs(args []string) (*options, error) {
	o := &options{}
	fs, sig, level := newFlagSet(o)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	o.command = fs.Args()
	switch {
	case o.caURL == "":
		return nil, usageErr("--ca-url is required")
	case o.worker == "" && o.jwtFile == "":
		return nil, usageErr("--worker is required (optional only with --jwt-file)")
	case o.token != "" && o.tokenFile != "":
		return nil, usageErr("--token and --token-file are mutually exclusive")
	case o.jwtFile != "" && (o.token != "" || o.tokenFile != ""):
		return nil, usageErr("--jwt-file and --token/--token-file are mutually exclusive: join with a JWT or with a join token, not both")
	case o.once && len(o.command) > 0:
		return nil, usageErr("--once runs no command: drop either --once or %q", strings.Join(o.command, " "))
	case len(o.command) == 0 && len(args) > 0 && args[len(args)-1] == "--":
		return nil, usageErr("no command after --")
	case o.logFormat != "text" && o.logFormat != "json":
		return nil, usageErr("--log-format %q: want text or json", o.logFormat)
	}
	if err := o.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return nil, usageErr("--log-level %q: want debug, info, warn or error", *level)
	}
	s, err := parseSignal(*sig)
	if err != nil {
		return nil, usageErr("--signal: %v", err)
	}
	o.signal = s
	return o, nil
}

// parseSignal accepts a signal name with or without SIG, in any case, a
// signal number, or "none".
func parseSignal(name string) (os.Signal, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	if n == "NONE" || n == "" {
		return nil, nil
	}
	if s, ok := signalNames[strings.TrimPrefix(n, "SIG")]; ok {
		return s, nil
	}
	if i, err := strconv.Atoi(n); err == nil && i > 0 && i < 65 {
		return syscall.Signal(i), nil
	}
	known := make([]string, 0, len(signalNames))
	for k := range signalNames {
		known = append(known, k)
	}
	return nil, fmt.Errorf("unknown signal %q (want none or one of %s)", name, strings.Join(slices.Sorted(slices.Values(known)), ", "))
}

func printUsage(w io.Writer) {
	fs, _, _ := newFlagSet(&options{})
	fs.SetOutput(w)
	fmt.Fprint(w, usage)
	fs.PrintDefaults()
}

// run returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if version.Requested(args) {
		fmt.Fprintln(stdout, version.Get().Line("crank-agent"))
		return 0
	}
	o, err := parseArgs(args)
	if errors.Is(err, flag.ErrHelp) {
		printUsage(stdout)
		return 0
	}
	if err == nil {
		var code int
		code, err = execute(o, stderr)
		if err == nil {
			return code
		}
	}
	msg := strings.ReplaceAll(err.Error(), "\n", "; ")
	if errors.Is(err, errUsage) {
		fmt.Fprintf(stderr, "crank-agent: %s\n(run crank-agent -h for usage)\n", strings.TrimPrefix(msg, errUsage.Error()+": "))
		return 2
	}
	fmt.Fprintf(stderr, "crank-agent: %s\n", msg)
	return 1
}

func newLogger(w io.Writer, o *options) *slog.Logger {
	opts := &slog.HandlerOptions{Level: o.logLevel}
	if o.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// readToken returns the join token from --token, --token-file or the
// environment, in that order; "" if there is none.
func readToken(o *options) (string, error) {
	if o.token != "" {
		return strings.TrimSpace(o.token), nil
	}
	if o.tokenFile != "" {
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("--token-file %s is empty", o.tokenFile)
		}
		return tok, nil
	}
	return strings.TrimSpace(os.Getenv(envToken)), nil
}

// execute runs crank-agent once the command line is known. It returns the
// exit status, or an error (usage errors wrap errUsage).
func execute(o *options, stderr io.Writer) (int, error) {
	stateDir, source, err := stateDir(o, os.Getenv)
	if err != nil {
		return 0, err
	}
	if err := paths.EnsureChosen(stateDir, source); err != nil {
		return 0, err
	}
	out := o.out
	if out == "" {
		out = filepath.Join(stateDir, "tls")
	}
	if out, err = filepath.Abs(out); err != nil {
		return 0, fmt.Errorf("--out: %w", err)
	}
	wlConfig, err := resolveWorkloadAPI(o, os.Getenv, stateDir)
	if err != nil {
		return 0, err
	}
	var token string
	if o.jwtFile == "" {
		if token, err = readToken(o); err != nil {
			return 0, err
		}
	} else if os.Getenv(envToken) != "" {
		return 0, usageErr("--jwt-file and $%s are mutually exclusive: join with a JWT or with a join token, not both", envToken)
	}
	log := newLogger(stderr, o)
	routeLegoLogs(log)
	am, err := startMetrics(o, os.Getenv, log)
	if err != nil {
		return 0, err
	}
	defer am.stop()
	a, err := agent.New(agent.Config{
		CAURL: o.caURL, Provisioner: o.provisioner, Fingerprint: o.fingerprint, Token: token,
		JWTFile: o.jwtFile, Worker: o.worker, StateDir: stateDir, Logger: log, Observer: am.observer(),
	})
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errUsage, err)
	}
	am.attach(a)
	mode := "daemon"
	switch {
	case o.once:
		mode = "once"
	case len(o.command) > 0:
		mode = "supervise"
	}
	if o.worker != "" {
		log = log.With("worker", o.worker)
	}
	join := "token"
	if o.jwtFile != "" {
		join = "jwt-file"
	}
	log.Info("crank-agent starting", "mode", mode, "join", join, "caURL", o.caURL, "state", stateDir, "stateSource", string(source), "out", out)

	// In supervise mode every signal crank-agent would otherwise die of is
	// collected from now on, so none is lost before the child runs.
	var sigs chan os.Signal
	if mode == "supervise" {
		sigs = make(chan os.Signal, 8)
		signal.Notify(sigs, forwarded...)
		defer signal.Stop(sigs)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := a.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return 0, errors.New("interrupted before a certificate was obtained")
		}
		return 0, explain(err, stateDir, o.worker)
	}
	if ctx.Err() != nil {
		return 0, errors.New("interrupted before the certificate files were written")
	}
	id := a.Current()
	if err := agent.WriteFiles(out, id); err != nil {
		return 0, fmt.Errorf("writing the certificate files to %s: %w", out, err)
	}
	log.Info("certificate files written", "serial", id.Serial(), "notAfter", id.NotAfter(), "spiffeID", id.SPIFFEID.String(), "out", out)
	if o.once {
		return 0, nil
	}

	rotations := a.Subscribe()
	agentCtx, stopAgent := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(agentCtx) }()
	defer func() {
		stopAgent()
		<-agentDone
	}()
	wl, err := startWorkloadAPI(wlConfig, a, o.worker, log)
	if err != nil {
		return 0, err
	}
	defer wl.stop(log)
	onRotate := func() error {
		id := a.Current()
		if err := agent.WriteFiles(out, id); err != nil {
			return fmt.Errorf("writing the certificate files to %s: %w", out, err)
		}
		logRotation(log, id, out)
		return nil
	}

	if mode == "daemon" {
		for {
			select {
			case <-ctx.Done():
				logStop(log, a, "cause", "signal")
				return 0, nil
			case <-rotations:
				if err := onRotate(); err != nil {
					log.Error("certificate rotated but the files could not be written; the previous files stay", "err", err)
				}
			}
		}
	}

	// Supervise: from here on SIGINT and SIGTERM go to the child only, and
	// crank-agent ends when the child does.
	stop()
	env := wl.withEndpoint(childEnv(os.Environ(), out, id.SPIFFEID.String()))
	code, err := supervise.Run(context.Background(), supervise.Config{
		Command: o.command, Env: env,
		Rotations: rotations, OnRotate: onRotate, RotateSignal: o.signal,
		Signals: sigs, Logger: log,
	})
	if err != nil {
		return 0, err
	}
	logStop(log, a, "cause", "child exited", "status", code)
	return code, nil
}

// logStop logs that crank-agent stops, and why renewals were failing if
// they were: the operator of a worker that stops for good must see it.
func logStop(log *slog.Logger, a *agent.Agent, args ...any) {
	if err := a.LastError(); err != nil {
		args = append(args, "renewalError", err.Error())
		var ae *agent.AttestationError
		if errors.As(err, &ae) {
			args = append(args, "check", ae.Check)
		}
		log.Warn("crank-agent stopping while renewals fail", args...)
		return
	}
	log.Info("crank-agent stopping", args...)
}

// stateDir resolves the state directory. Without --worker (allowed with
// --jwt-file) only --state and $CRANK_STATE_DIR can name it: the other
// rules need the worker's name.
func stateDir(o *options, getenv func(string) string) (string, paths.Source, error) {
	if o.worker == "" {
		dir := o.state
		src := paths.SourceFlag
		if dir == "" {
			dir, src = getenv(paths.EnvStateDir), paths.SourceEnv
		}
		if dir == "" {
			return "", "", usageErr("--jwt-file without --worker needs --state or $%s", paths.EnvStateDir)
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", "", fmt.Errorf("state directory: %w", err)
		}
		return abs, src, nil
	}
	dir, src, err := paths.StateDir(o.state, o.worker, paths.Env{Getenv: getenv})
	if errors.Is(err, paths.ErrInvalidWorker) {
		return "", "", fmt.Errorf("%w: --worker %q is not a valid worker name (a lower-case DNS label)", errUsage, o.worker)
	}
	return dir, src, err
}

// logRotation logs a rotation (the agent logs its next planned renewal).
func logRotation(log *slog.Logger, id *agent.Identity, out string) {
	log.Info("certificate rotated; files written", "serial", id.Serial(), "notAfter", id.NotAfter(), "out", out)
}

// childEnv is the child's environment: crank-agent's own without the join
// token, plus the paths of the files and the SPIFFE ID.
func childEnv(parent []string, out, spiffeID string) []string {
	env := make([]string, 0, len(parent)+5)
	set := map[string]string{
		envCertFile:  filepath.Join(out, "cert.pem"),
		envKeyFile:   filepath.Join(out, "key.pem"),
		envChainFile: filepath.Join(out, "chain.pem"),
		envRootFile:  filepath.Join(out, "root.pem"),
		envSPIFFEID:  spiffeID,
	}
	for _, kv := range parent {
		k, _, _ := strings.Cut(kv, "=")
		if _, ours := set[k]; ours || k == envToken {
			continue
		}
		env = append(env, kv)
	}
	for _, k := range []string{envCertFile, envKeyFile, envChainFile, envRootFile, envSPIFFEID} {
		env = append(env, k+"="+set[k])
	}
	return env
}

// explain adds to an agent error what the operator can do about it. The
// agent's errors already start with the problem ("the CA is unreachable:
// ...").
func explain(err error, stateDir, worker string) error {
	var hint string
	switch {
	case errors.Is(err, agent.ErrFingerprintMismatch):
		hint = "check --fingerprint against the root fingerprint `crank-ca init` printed"
	case errors.Is(err, agent.ErrTokenRejected):
		hint = "join tokens are single-use and expire; mint a new one with `crank-ca token create --worker " + worker + "`"
	case errors.Is(err, agent.ErrNoToken):
		hint = "pass --token, --token-file, $" + envToken + " or --jwt-file"
	case errors.Is(err, agent.ErrAttestationRefused):
		hint = "the JWT in --jwt-file was refused; the check names why: a fresh token is needed for expiry, max-age and jti (the platform rotates the file), an attestor matching its issuer and audience for issuer and audience, an enabled identity for disabled"
	case errors.Is(err, agent.ErrJWTFile):
		hint = "check --jwt-file: it must hold the JWT the platform gives the worker (for Kubernetes a projected service-account token volume)"
	case errors.Is(err, agent.ErrAccountRejected):
		hint = "restart crank-agent with a new join token (--token); it registers a new account"
	case errors.Is(err, agent.ErrCAUnreachable):
		hint = "check --ca-url and the network; a worker with a valid certificate in its state directory starts without the CA"
	default:
		return err
	}
	return fmt.Errorf("%w (%s)", err, hint)
}
