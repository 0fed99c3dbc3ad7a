// Command crank-bench is a bounded load generator for a running crank-ca:
// it registers, orders and renews as workers do (lego v4 over HTTPS) and
// reports issuances/s, latency percentiles, failures, and the CPU, memory
// and disk the CA spends. The logic is in internal/bench.
//
//	crank-bench --config DIR/crank-ca.json --mode new-worker --n 200 \
//	    --server-pid PID --store-path DIR/db --json out.json
//
// Replicas of one CA (on one PostgreSQL database) are driven together, every
// request to the next one, and one can be killed mid-run:
//
//	crank-bench --config DIR/crank-ca.json --replica-url https://127.0.0.1:9091 \
//	    --server-pid PID1 --server-pid PID2 --kill-pid PID2 --kill-after 3s
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	legolog "github.com/go-acme/lego/v4/log"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/bench"
	"github.com/crank-platform/crank-ca/internal/server"
	"github.com/crank-platform/crank-ca/provisioner"
)

func main() {
	// lego logs every step of every order on its single global logger;
	// at hundreds of issuances a second that is noise and client CPU. It is
	// silenced here, in cmd/, and nowhere else.
	legolog.Logger = log.New(io.Discard, "", 0)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("crank-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "crank-ca configuration file; join tokens are minted with its token key (required unless --http01-addr)")
	var urls, replicaURLs stringList
	var pids intList
	fs.Var(&urls, "url", "CA base URL (default https://<listen> from the configuration); repeated or comma-separated, the others are replicas")
	fs.Var(&replicaURLs, "replica-url", "base URL of another replica of the same CA; repeated or comma-separated. Requests alternate over all of them, one by one")
	root := fs.String("root", "", "PEM root that verifies the CA's HTTPS certificate (default the configuration's pki.rootCert)")
	prov := fs.String("provisioner", "workers", "provisioner: a worker-attestation one, or in http-01 mode an ACME one (crank-ca's adhoc, step-ca's)")
	mode := fs.String("mode", string(bench.ModeNewWorker), "new-worker, renew or storm")
	n := fs.Int("n", 200, "timed issuances (at most)")
	conc := fs.Int("concurrency", 16, "clients working at once")
	timeout := fs.Duration("timeout", 2*time.Minute, "bound on the whole run, set-up included")
	window := fs.Duration("window", 10*time.Second, "storm: spread of the renewal starts")
	accounts := fs.Int("accounts", 0, "renew: bound accounts to cycle through (default --concurrency)")
	prefix := fs.String("prefix", "", `worker name prefix (default "bench-<random>-"); names must match the worker pattern`)
	fs.Var(&pids, "server-pid", "CA process id, for server CPU and peak RSS from /proc; repeated for replicas (CPU is summed)")
	storePath := fs.String("store-path", "", "store file or directory, for its size")
	dbPID := fs.Int("db-pid", 0, "database server's main process (PostgreSQL's postmaster), for the CPU of its process tree per issuance")
	jsonOut := fs.String("json", "", "also write the report as JSON to this file")
	every := fs.Duration("progress", 5*time.Second, "interval of progress lines on stderr")
	h01Addr := fs.String("http01-addr", "", `drive an ordinary ACME provisioner (e.g. stock step-ca's) with http-01, answering on this address (":80")`)
	h01Name := fs.String("http01-name", "localhost", "http-01 mode: DNS name to order; the CA must resolve it to this machine")
	retries := fs.Int("retries", 3, "times a request that failed with a connection error is sent again, to the next replica (0 for none)")
	retryWithin := fs.Duration("retry-within", 10*time.Second, "no retry later than this after a request's first attempt")
	killPID := fs.Int("kill-pid", 0, "send SIGKILL to this server process --kill-after into the timed phase")
	killAfter := fs.Duration("kill-after", 3*time.Second, "with --kill-pid: when to kill")
	verify := fs.Bool("verify", true, "after the run, ask the CA (ARI renewalInfo) about every certificate received; one it does not know fails the run")
	verifyTimeout := fs.Duration("verify-timeout", time.Minute, "bound on that check")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 || (*cfgPath == "" && (*h01Addr == "" || len(urls) == 0 || *root == "")) {
		fmt.Fprintln(stderr, "crank-bench: --config is required (or --http01-addr with --url and --root); no arguments are taken")
		fs.Usage()
		return 2
	}
	maxRetries := *retries
	if maxRetries == 0 {
		maxRetries = -1 // bench.Config: negative is none, 0 the default
	}
	cfg := bench.Config{
		Provisioner: *prov, Mode: bench.Mode(*mode), N: *n, Concurrency: *conc, Timeout: *timeout,
		Window: *window, Accounts: *accounts, WorkerPrefix: *prefix, ServerPIDs: pids,
		StorePath: *storePath, ProgressEvery: *every, HTTP01Addr: *h01Addr, HTTP01Name: *h01Name,
		DatabasePID: *dbPID, MaxRetries: maxRetries, RetryWithin: *retryWithin, KillPID: *killPID, KillAfter: *killAfter,
		Verify: *verify, VerifyTimeout: *verifyTimeout,
	}
	if len(urls) > 0 {
		cfg.URL = urls[0]
		cfg.ReplicaURLs = urls[1:]
	}
	cfg.ReplicaURLs = append(cfg.ReplicaURLs, replicaURLs...)
	if err := bench1(ctx, benchArgs{cfgPath: *cfgPath, root: *root, jsonOut: *jsonOut, cfg: cfg}, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "crank-bench: %v\n", err)
		return 1
	}
	return 0
}

// stringList is a flag that may be repeated, each value a comma-separated
// list.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	for s := range strings.SplitSeq(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// intList is a repeatable flag of positive integers (comma lists allowed).
type intList []int

func (l *intList) String() string {
	s := make([]string, len(*l))
	for i, v := range *l {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}

func (l *intList) Set(v string) error {
	for s := range strings.SplitSeq(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("%q is not a process id", s)
		}
		*l = append(*l, n)
	}
	return nil
}

type benchArgs struct {
	cfgPath, root, jsonOut string
	cfg                    bench.Config
}

func bench1(ctx context.Context, a benchArgs, stdout, stderr io.Writer) error {
	rootPath := a.root
	var mint func(string) (provisioner.Token, error)
	if a.cfgPath != "" {
		caCfg, err := config.Load(a.cfgPath)
		if err != nil {
			return err
		}
		if a.cfg.URL == "" {
			a.cfg.URL = "https://" + caCfg.Listen
		}
		if rootPath == "" {
			rootPath = caCfg.Resolve(caCfg.PKI.RootCert)
		}
		mint = func(worker string) (provisioner.Token, error) {
			return server.MintToken(caCfg, server.TokenRequest{Provisioner: a.cfg.Provisioner, Worker: worker})
		}
	}
	pemBytes, err := os.ReadFile(rootPath)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		return fmt.Errorf("%s holds no PEM certificate", rootPath)
	}
	a.cfg.Roots = roots
	rep, err := bench.Run(ctx, a.cfg, bench.Deps{Mint: mint, Progress: stderr})
	if err != nil {
		return err
	}
	if err := rep.WriteText(stdout); err != nil {
		return err
	}
	if a.jsonOut != "" {
		if err := rep.WriteJSON(a.jsonOut); err != nil {
			return err
		}
	}
	missing := 0
	if rep.Verify != nil {
		missing = rep.Verify.Missing
	}
	if rep.Failed > 0 || rep.NotRun > 0 || missing > 0 {
		return fmt.Errorf("%d failed, %d not run, certificates missing: %d", rep.Failed, rep.NotRun, missing)
	}
	return nil
}
