// Command crank-ca is the crank-ca certificate authority: `init` creates a CA
// directory, `serve` runs the ACME server, `token create` mints join tokens,
// and the operator commands (workers, accounts, certs, revoke, rotate,
// worker disable/enable) drive the running server's admin API with the
// operator certificate; `admin cert` issues more operator certificates.
// It only parses flags, sets up logging and signals, and maps errors to exit
// codes; the work is in internal/.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/adminclient"
	"github.com/crank-platform/crank-ca/internal/server"
	"github.com/crank-platform/crank-ca/internal/setup"
)

const usage = `crank-ca: an internal ACME certificate authority for mTLS workers

Usage:
  crank-ca init --dir DIR [--listen ADDR] [--trust-domain TD] [--dns NAME,...]
  crank-ca serve --config FILE                     (SIGHUP re-reads FILE; SIGINT/SIGTERM stop)
  crank-ca token create --config FILE --worker NAME [--ttl DURATION] [--provisioner NAME] [--json] [--local]
  crank-ca token create --config FILE --provisioner ACME-NAME [--ttl DURATION] [--json] [--local]   (EAB credentials)
  crank-ca restore --config FILE --from BACKUP [--crl-number N]   (server stopped; the replaced store is kept aside)
  crank-ca version [--json]                                        (also --version)

Operator commands (admin API of the running server, over mutual TLS):
  crank-ca workers list --config FILE [--json]
  crank-ca accounts list --config FILE [--json]
  crank-ca certs list --config FILE [--worker NAME] [--all] [--json]
  crank-ca revoke --config FILE (--serial SERIAL | --worker NAME) [--reason RFC5280-REASON]
  crank-ca rotate --config FILE (--worker NAME | --all) [--issued-before RFC3339]
  crank-ca worker disable NAME --config FILE [--provisioner NAME]
  crank-ca worker enable NAME --config FILE [--provisioner NAME]
  crank-ca backup --config FILE --out FILE
  These, and token create, also take:
    --server URL          the CA (default https://<listen> of the configuration)
    --admin-cert FILE     operator certificate (default admin.certFile, admin/operator.crt)
    --admin-key FILE      its key (default admin.keyFile, admin/operator.key)
  token create mints through the server (which refuses disabled workers);
  if the server is not reachable it mints locally from the token key, and
  --local always does.

  crank-ca admin cert --config FILE --name NAME [--lifetime DURATION] [--out DIR]
    issues an operator certificate for spiffe://<trustDomain>/admin/NAME from
    the local intermediate; list that ID in admin.spiffeIDs to let it in.
  crank-ca admin cert --config FILE --spiffe-id ID [--lifetime DURATION] [--out DIR]
    the same for an ID already in admin.spiffeIDs or admin.controllers (a
    controller may only mint join tokens within its limits).
  crank-ca admin cert --config FILE --renew [--admin-cert FILE --admin-key FILE] [--lifetime DURATION]
    replaces the operator certificate (default admin.certFile) with a fresh
    one for the same ID, key and certificate each atomically (key 0600).

  crank-ca pki rotate-intermediate --config FILE [--root-key FILE] [--lifetime DURATION]
    signs a new intermediate with the root key (default root.key next to
    pki.rootCert) into the configured files, keeping the old one beside
    them; SIGHUP to serve switches to it.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks command-line mistakes (exit code 2).
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer) int {
	err := dispatch(args, stdout, stderr)
	var problem *adminclient.ProblemError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "crank-ca: %v\n\n%s", err, usage)
		return 2
	case errors.As(err, &problem):
		// The server's words, which are meant for people.
		fmt.Fprintf(stderr, "crank-ca: %s (HTTP %d)\n", problem.Error(), problem.Status)
		return 1
	default:
		fmt.Fprintf(stderr, "crank-ca: %v\n", err)
		return 1
	}
}

func dispatch(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command", errUsage)
	}
	switch args[0] {
	case "init":
		return cmdInit(args[1:], stdout, stderr)
	case "serve":
		return cmdServe(args[1:], stderr)
	case "token":
		if len(args) < 2 || args[1] != "create" {
			return fmt.Errorf("%w: token needs the subcommand create", errUsage)
		}
		return cmdTokenCreate(args[2:], stdout, stderr)
	case "workers", "worker":
		if len(args) < 2 {
			return fmt.Errorf("%w: %s needs a subcommand: list, disable or enable", errUsage, args[0])
		}
		switch args[1] {
		case "list":
			return cmdWorkersList(args[2:], stdout, stderr)
		case "disable":
			return cmdWorkerSetDisabled(args[2:], true, stdout, stderr)
		case "enable":
			return cmdWorkerSetDisabled(args[2:], false, stdout, stderr)
		}
		return fmt.Errorf("%w: unknown subcommand %s %q", errUsage, args[0], args[1])
	case "accounts":
		if len(args) < 2 || args[1] != "list" {
			return fmt.Errorf("%w: accounts needs the subcommand list", errUsage)
		}
		return cmdAccountsList(args[2:], stdout, stderr)
	case "certs":
		if len(args) < 2 || args[1] != "list" {
			return fmt.Errorf("%w: certs needs the subcommand list", errUsage)
		}
		return cmdCertsList(args[2:], stdout, stderr)
	case "revoke":
		return cmdRevoke(args[1:], stdout, stderr)
	case "rotate":
		return cmdRotate(args[1:], stdout, stderr)
	case "admin":
		if len(args) < 2 || args[1] != "cert" {
			return fmt.Errorf("%w: admin needs the subcommand cert", errUsage)
		}
		return cmdAdminCert(args[2:], stdout, stderr)
	case "pki":
		return cmdPKI(args[1:], stdout, stderr)
	case "backup":
		return cmdBackup(args[1:], stdout, stderr)
	case "restore":
		return cmdRestore(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		return cmdVersion(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
	}
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return nil
}

func cmdInit(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("init", stderr)
	dir := fs.String("dir", "", "directory to create the CA in (required)")
	listen := fs.String("listen", "", "HTTPS listen address (default "+config.DefaultListen+")")
	td := fs.String("trust-domain", "", "SPIFFE trust domain (default "+config.DefaultTrustDomain+")")
	dns := fs.String("dns", "", "comma-separated DNS names of the CA server (default localhost)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("%w: --dir is required", errUsage)
	}
	var names []string
	if *dns != "" {
		names = strings.Split(*dns, ",")
	}
	res, err := setup.Init(setup.Options{Dir: *dir, Listen: *listen, TrustDomain: *td, DNSNames: names})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, `Created a new crank-ca in %s
Root fingerprint (SHA-256): %s

Next steps:
  crank-ca serve --config %s
  crank-ca token create --config %s --worker NAME
  ACME directories: https://%s/acme/workers/directory (workers)
                    https://%s/acme/adhoc/directory (certbot, lego, ...)
`, *dir, res.Fingerprint, res.ConfigPath, res.ConfigPath, res.Config.Listen, res.Config.Listen)
	return nil
}

func cmdServe(args []string, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr)
	path := fs.String("config", "", "configuration file (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("%w: --config is required", errUsage)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	logger, audit := newLoggers(stderr, cfg.Log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hangups, stopHangups := watchHangups() // SIGHUP: reload (signals.go)
	defer stopHangups()
	start := time.Now()
	// Bind first: a busy port fails before the store is opened, and
	// "ready" is logged only once the CA really accepts connections.
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		hint := ""
		if errors.Is(err, syscall.EADDRINUSE) {
			hint = fmt.Sprintf("; is another crank-ca serve running? Stop it, or change \"listen\" in %s", *path)
		}
		return fmt.Errorf("listen %s (\"listen\" of the configuration): %w%s", cfg.Listen, err, hint)
	}
	srv, err := server.New(ctx, server.Deps{Config: cfg, Logger: logger, Audit: audit})
	if err != nil {
		_ = ln.Close()
		return err
	}
	logger.Info("crank-ca ready", "addr", ln.Addr().String(), "startup", time.Since(start).Round(time.Millisecond), "gogc", tuneGC())
	go reloadOnHangup(ctx, hangups, srv, *path)
	return srv.Serve(ctx, ln)
}

// serveGCPercent is serve's garbage collection target (GOGC) when the
// environment sets none. A request allocates a lot that dies with it (JSON,
// JWS, DER, the store's rows) around a live heap of a few tens of MB; at
// Go's default of 100 the collector took about 9% of the server's CPU under
// load, at 400 about 2%, for 12-16 MB more resident memory
// (docs/performance.md).
const serveGCPercent = 400

// tuneGC applies serveGCPercent unless GOGC is set (the runtime has then
// applied it), and returns the value in force for the start-up log.
func tuneGC() string {
	if v, ok := os.LookupEnv("GOGC"); ok {
		return v
	}
	debug.SetGCPercent(serveGCPercent)
	return strconv.Itoa(serveGCPercent)
}

// newLoggers builds the operational logger and the audit stream. The audit
// stream is always JSON and tagged log=audit so it can be split off.
func newLoggers(w io.Writer, c config.Log) (*slog.Logger, *slog.Logger) {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if c.Format == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	audit := slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})).With("log", "audit")
	return slog.New(h), audit
}

func cmdTokenCreate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("token create", stderr)
	af := addAPIFlags(fs)
	worker := fs.String("worker", "", "worker name the token binds to")
	prov := fs.String("provisioner", "", "provisioner (default: the first worker-attestation provisioner)")
	ttl := fs.Duration("ttl", 0, "token lifetime (default: the provisioner's joinTokens.defaultTTL)")
	asJSON := fs.Bool("json", false, `print {"kid","hmacKey","token","expiresAt"} for any ACME client's EAB`)
	local := fs.Bool("local", false, "mint from the local token key without asking the server (skips its check that the worker is enabled)")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := af.load()
	if err != nil {
		return err
	}
	var tok admin.TokenResponse
	fallback := false
	if !*local {
		tok, err = mintRemote(cfg, af, *prov, *worker, *ttl)
		fallback = errors.Is(err, adminclient.ErrUnreachable)
		if err != nil && !fallback {
			return err
		}
	}
	if *local || fallback {
		t, err := server.MintToken(cfg, server.TokenRequest{Provisioner: *prov, Worker: *worker, TTL: *ttl})
		if err != nil {
			return err
		}
		tok = admin.TokenResponse{KID: t.KID, HMACKey: t.HMACKeyString(), Token: t.Encode(), ExpiresAt: t.ExpiresAt}
		if fallback {
			fmt.Fprintln(stderr, "crank-ca: server not reachable; minted locally")
		}
	}
	if !*asJSON {
		fmt.Fprintln(stdout, tok.Token)
		return nil
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(map[string]string{
		"kid":       tok.KID,
		"hmacKey":   tok.HMACKey,
		"token":     tok.Token,
		"expiresAt": tok.ExpiresAt.UTC().Format(time.RFC3339),
	})
}

// mintRemote mints a token through the admin API.
func mintRemote(cfg *config.Config, af *apiFlags, prov, worker string, ttl time.Duration) (admin.TokenResponse, error) {
	c, err := af.client(cfg)
	if err != nil {
		return admin.TokenResponse{}, fmt.Errorf("%w (or mint locally with --local)", err)
	}
	defer c.CloseIdleConnections()
	req := admin.TokenRequest{Provisioner: prov, Worker: worker}
	if ttl != 0 {
		req.TTL = ttl.String()
	}
	ctx, cancel := commandContext()
	defer cancel()
	return c.MintToken(ctx, req)
}
