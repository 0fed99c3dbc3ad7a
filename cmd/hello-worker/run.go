package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	legolog "github.com/go-acme/lego/v4/log"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/crank-platform/crank-ca/internal/agent"
	"github.com/crank-platform/crank-ca/internal/paths"
	"github.com/crank-platform/crank-ca/internal/worker"
	"github.com/crank-platform/crank-ca/internal/workertls"
)

// run parses flags and environment (the only place that reads them), starts
// the worker and serves until ctx is done. It returns the exit code.
func run(ctx context.Context, args []string, getenv func(string) string) int {
	fs := flag.NewFlagSet("hello-worker", flag.ContinueOnError)
	caURL := fs.String("ca-url", getenv("CRANK_CA_URL"), "crank-ca base URL (env CRANK_CA_URL)")
	fp := fs.String("fingerprint", getenv("CRANK_CA_FINGERPRINT"), "root fingerprint, hex SHA-256 (env CRANK_CA_FINGERPRINT)")
	token := fs.String("token", "", "join token (or --token-file, or env CRANK_TOKEN)")
	tokenFile := fs.String("token-file", "", "file holding the join token")
	jwtFile := fs.String("jwt-file", getenv("CRANK_JWT_FILE"), "file holding a JWT to attest with instead of a join token, read afresh at every attestation (env CRANK_JWT_FILE)")
	name := fs.String("worker", getenv("CRANK_WORKER"), "worker name (env CRANK_WORKER)")
	state := fs.String("state", "", "state directory (default: env CRANK_STATE_DIR, /var/lib/crank/<worker> in containers, else the XDG state dir)")
	listen := fs.String("listen", "127.0.0.1:8443", "mTLS listen address")
	allow := fs.String("allow", "", `callers to admit: "td:<trust-domain>", "id:<spiffe-id>", "oneof:<id>,<id>" or "any" (default: the worker's trust domain)`)
	peer := fs.String("peer", "", "URL of a peer worker to greet periodically")
	peerID := fs.String("peer-id", "", "SPIFFE ID the peer must present (default: any member of the trust domain)")
	interval := fs.Duration("interval", time.Second, "how often to greet the peer")
	logFormat := fs.String("log-format", "text", "text or json")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, nil)
	if *logFormat == "json" {
		h = slog.NewJSONHandler(os.Stderr, nil)
	}
	log := slog.New(h)
	// lego has one global logger; route it through ours (cmd/ only).
	legolog.Logger = agent.LegoLogger{Log: log}
	fail := func(code int, err error) int {
		fmt.Fprintf(os.Stderr, "hello-worker: %v\n", err)
		return code
	}

	var (
		tok string
		err error
	)
	if *jwtFile != "" {
		if *token != "" || *tokenFile != "" || getenv("CRANK_TOKEN") != "" {
			return fail(2, errors.New("--jwt-file and --token/--token-file/CRANK_TOKEN are mutually exclusive: join with a JWT or with a join token, not both"))
		}
	} else if tok, err = readToken(*token, *tokenFile, getenv); err != nil {
		return fail(2, err)
	}
	dir, src, err := paths.StateDir(*state, *name, paths.Env{Getenv: getenv})
	if err != nil {
		return fail(2, fmt.Errorf("--worker/--state: %w", err))
	}
	if err := paths.EnsureChosen(dir, src); err != nil {
		return fail(1, err)
	}
	var callers, peers tlsconfig.Authorizer
	if *allow != "" {
		if callers, err = workertls.ParseAuthorizer(*allow); err != nil {
			return fail(2, fmt.Errorf("--allow: %w", err))
		}
	}
	if *peerID != "" {
		if peers, err = workertls.ParseAuthorizer("id:" + *peerID); err != nil {
			return fail(2, fmt.Errorf("--peer-id: %w", err))
		}
	}
	w, err := worker.New(worker.Config{
		Agent:      agent.Config{CAURL: *caURL, Fingerprint: *fp, Token: tok, JWTFile: *jwtFile, Worker: *name, StateDir: dir, Logger: log},
		Listen:     *listen,
		Authorizer: callers,
		Logger:     log,
	})
	if err != nil {
		return fail(2, err)
	}
	log.Info("state directory", "dir", dir, "chosenBy", string(src))
	if err := w.Start(ctx); err != nil {
		return fail(1, err)
	}
	if *peer != "" {
		go greetPeer(ctx, w.Client(peers), *peer, *interval, log)
	}
	if err := w.Serve(ctx, w.Hello()); err != nil {
		return fail(1, err)
	}
	return 0
}

func readToken(flagVal, file string, getenv func(string) string) (string, error) {
	switch {
	case flagVal != "":
		return flagVal, nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	default:
		return getenv("CRANK_TOKEN"), nil
	}
}

// greetPeer calls the peer every interval and logs what it answered.
func greetPeer(ctx context.Context, c *http.Client, url string, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			log.Error("peer request", "err", err)
			return
		}
		resp, err := c.Do(req)
		if err != nil {
			log.Warn("peer call failed", "peer", url, "err", err)
			continue
		}
		var g worker.Greeting
		err = json.NewDecoder(resp.Body).Decode(&g)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			log.Warn("peer answered badly", "peer", url, "status", resp.StatusCode, "err", err)
			continue
		}
		log.Info("peer answered", "message", g.Message, "peerSerial", resp.TLS.PeerCertificates[0].SerialNumber.String())
	}
}
