// Command crank-bench is a bounded load generator for a running crank-ca:
// it registers, orders and renews as workers do (lego v4 over HTTPS) and
// reports issuances/s, latency percentiles, failures, and the CPU, memory
// and disk the CA spends. The logic is in internal/bench.
//
//	crank-bench --config DIR/crank-ca.json --mode new-worker --n 200 \
//	    --server-pid PID --store-path DIR/db --json out.json
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
	url := fs.String("url", "", "CA base URL (default https://<listen> from the configuration)")
	root := fs.String("root", "", "PEM root that verifies the CA's HTTPS certificate (default the configuration's pki.rootCert)")
	prov := fs.String("provisioner", "workers", "provisioner: a worker-attestation one, or in http-01 mode an ACME one (crank-ca's adhoc, step-ca's)")
	mode := fs.String("mode", string(bench.ModeNewWorker), "new-worker, renew or storm")
	n := fs.Int("n", 200, "timed issuances (at most)")
	conc := fs.Int("concurrency", 16, "clients working at once")
	timeout := fs.Duration("timeout", 2*time.Minute, "bound on the whole run, set-up included")
	window := fs.Duration("window", 10*time.Second, "storm: spread of the renewal starts")
	accounts := fs.Int("accounts", 0, "renew: bound accounts to cycle through (default --concurrency)")
	prefix := fs.String("prefix", "", `worker name prefix (default "bench-<random>-"); names must match the worker pattern`)
	pid := fs.Int("server-pid", 0, "CA process id, for server CPU and peak RSS from /proc")
	storePath := fs.String("store-path", "", "store file or directory, for its size")
	jsonOut := fs.String("json", "", "also write the report as JSON to this file")
	every := fs.Duration("progress", 5*time.Second, "interval of progress lines on stderr")
	h01Addr := fs.String("http01-addr", "", `drive an ordinary ACME provisioner (e.g. stock step-ca's) with http-01, answering on this address (":80")`)
	h01Name := fs.String("http01-name", "localhost", "http-01 mode: DNS name to order; the CA must resolve it to this machine")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 || (*cfgPath == "" && (*h01Addr == "" || *url == "" || *root == "")) {
		fmt.Fprintln(stderr, "crank-bench: --config is required (or --http01-addr with --url and --root); no arguments are taken")
		fs.Usage()
		return 2
	}
	if err := bench1(ctx, benchArgs{
		cfgPath: *cfgPath, url: *url, root: *root, jsonOut: *jsonOut,
		cfg: bench.Config{
			Provisioner: *prov, Mode: bench.Mode(*mode), N: *n, Concurrency: *conc, Timeout: *timeout,
			Window: *window, Accounts: *accounts, WorkerPrefix: *prefix, ServerPID: *pid,
			StorePath: *storePath, ProgressEvery: *every, HTTP01Addr: *h01Addr, HTTP01Name: *h01Name,
		},
	}, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "crank-bench: %v\n", err)
		return 1
	}
	return 0
}

type benchArgs struct {
	cfgPath, url, root, jsonOut string
	cfg                         bench.Config
}

func bench1(ctx context.Context, a benchArgs, stdout, stderr io.Writer) error {
	a.cfg.URL = a.url
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
	if rep.Failed > 0 || rep.NotRun > 0 {
		return fmt.Errorf("%d failed, %d not run", rep.Failed, rep.NotRun)
	}
	return nil
}
