package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/crank-platform/crank-ca/internal/agent"
	"github.com/crank-platform/crank-ca/internal/workertls"
)

// Config configures a worker. cmd/ fills it from flags and environment.
type Config struct {
	Agent agent.Config
	// Listen is the mTLS address to serve on, e.g. 127.0.0.1:8443.
	Listen string
	// Authorizer decides which callers may connect; nil admits any member of
	// the worker's own trust domain.
	Authorizer tlsconfig.Authorizer
	Logger     *slog.Logger
	// IdleTimeout is how long the mTLS server keeps an unused kept-alive
	// connection open; 0 means DefaultServerIdleTimeout.
	IdleTimeout time.Duration
}

// Worker is a running worker: its agent, listener and clients.
type Worker struct {
	cfg   Config
	log   *slog.Logger
	agent *agent.Agent
	ln    net.Listener

	// rotatedAt is when the identity last rotated: connections accepted
	// before it are closed after their next response, so that peers see
	// the new certificate.
	rotatedAt atomic.Pointer[time.Time]
	// transports of the clients handed out, whose idle connections are
	// dropped on rotation so that peers see our new certificate.
	mu         sync.Mutex
	transports []*PeerTransport
}

// New validates the configuration; no I/O.
func New(cfg Config) (*Worker, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Agent.Logger == nil {
		cfg.Agent.Logger = cfg.Logger
	}
	if cfg.Listen == "" {
		return nil, errors.New("a listen address is required")
	}
	a, err := agent.New(cfg.Agent)
	if err != nil {
		return nil, err
	}
	return &Worker{cfg: cfg, log: cfg.Logger.With("worker", cfg.Agent.Worker), agent: a}, nil
}

// Agent is the worker's certificate agent.
func (w *Worker) Agent() *agent.Agent { return w.agent }

// Addr is the listener's address once Start returned.
func (w *Worker) Addr() net.Addr { return w.ln.Addr() }

// Start obtains the identity (or reuses it from state) and binds the
// listener, so that when it returns the worker can serve. It fails with the
// agent's typed errors (fingerprint, token, CA unreachable).
func (w *Worker) Start(ctx context.Context) error {
	if err := w.agent.Start(ctx); err != nil {
		return err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", w.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", w.cfg.Listen, err)
	}
	w.ln = ln
	return nil
}

// Serve serves h over mTLS and keeps the identity rotating and the CA's
// CRL fresh until ctx is done, then shuts down gracefully. Callers whose
// certificate the CA has revoked are refused. Start must have succeeded.
func (w *Worker) Serve(ctx context.Context, h http.Handler) error {
	authz := w.cfg.Authorizer
	if authz == nil {
		authz = workertls.AuthorizeMemberOf(w.agent.Current().SPIFFEID.TrustDomain())
	}
	authz = workertls.RefuseRevoked(authz, w.agent)
	hs := w.newHTTPServer(w.recheck(h))
	hs.TLSConfig = workertls.ServerConfig(w.agent, authz)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go w.watchRotations(runCtx)
	agentDone := make(chan error, 1)
	go func() { agentDone <- w.agent.Run(runCtx) }()
	crlDone := make(chan error, 1)
	go func() { crlDone <- w.agent.RunCRL(runCtx) }()
	serveDone := make(chan error, 1)
	go func() { serveDone <- hs.ServeTLS(w.ln, "", "") }()
	id := w.agent.Current()
	w.log.Info("worker serving mTLS", "addr", w.ln.Addr().String(), "spiffeID", id.SPIFFEID.String(), "serial", id.Serial(), "notAfter", id.NotAfter())

	var err error
	select {
	case err = <-serveDone:
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err = hs.Shutdown(sctx)
		cancel()
		<-serveDone
	}
	stop()
	<-agentDone
	<-crlDone
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Server timeouts. Read and write bound a peer that stalls mid-request;
// idle closes kept-alive connections nobody uses, which would otherwise
// stay open forever: the server re-checks a connection only when a request
// arrives on it, so an idle one keeps a handshake made with a certificate
// since rotated or revoked, and holds a file descriptor for a peer that may
// be long gone.
const (
	// DefaultServerIdleTimeout is longer than the clients' IdleTimeout, so
	// that normally the client closes first and never sends a request on a
	// connection the server is closing.
	DefaultServerIdleTimeout = 90 * time.Second
	serverReadHeaderTimeout  = 10 * time.Second
	serverReadTimeout        = 30 * time.Second
	serverWriteTimeout       = 60 * time.Second
)

// newHTTPServer is the worker's HTTP server without its TLS configuration
// (Serve adds it; tests serve plain TCP).
func (w *Worker) newHTTPServer(h http.Handler) *http.Server {
	idle := w.cfg.IdleTimeout
	if idle <= 0 {
		idle = DefaultServerIdleTimeout
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: serverReadHeaderTimeout,
		ReadTimeout:       serverReadTimeout,
		WriteTimeout:      serverWriteTimeout,
		IdleTimeout:       idle,
		ErrorLog:          slog.NewLogLogger(w.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return context.WithValue(ctx, connStartKey{}, time.Now())
		},
	}
}

// Client returns an HTTP client that calls peers over mTLS with the
// worker's current certificate, accepting servers that authz admits (nil:
// any member of the trust domain) unless the CA has revoked their
// certificate; revocations are known while Serve runs, which fetches the
// CRL. Every response is re-checked (PeerTransport), so a kept-alive
// connection does not outlive the server certificate's expiry or
// revocation, and idle connections are dropped when our own certificate
// rotates, so peers see the new one.
func (w *Worker) Client(authz tlsconfig.Authorizer) *http.Client {
	if authz == nil {
		authz = workertls.AuthorizeMemberOf(w.agent.Current().SPIFFEID.TrustDomain())
	}
	authz = workertls.RefuseRevoked(authz, w.agent)
	t := &PeerTransport{
		Transport: &http.Transport{
			TLSClientConfig:     workertls.ClientConfig(w.agent, authz),
			IdleConnTimeout:     IdleTimeout,
			MaxIdleConnsPerHost: 4,
		},
		agent: w.agent,
	}
	w.mu.Lock()
	w.transports = append(w.transports, t)
	w.mu.Unlock()
	return &http.Client{Timeout: 10 * time.Second, Transport: t}
}

// IdleTimeout bounds how long a client's peer connection stays open unused.
const IdleTimeout = 30 * time.Second
