package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/attest"
	"github.com/crank-platform/crank-ca/internal/lease"
	"github.com/crank-platform/crank-ca/internal/pki"
	"github.com/crank-platform/crank-ca/internal/stepca"
	"github.com/crank-platform/crank-ca/internal/store"
	"github.com/crank-platform/crank-ca/provisioner"
)

// shutdownGrace bounds how long in-flight requests may finish after a signal.
const shutdownGrace = 10 * time.Second

// Deps are what New needs. Config must have been loaded with config.Load
// (defaults applied, validated).
type Deps struct {
	Config *config.Config
	// Logger receives operational logs, Audit the issuance and binding
	// decisions. nil discards.
	Logger *slog.Logger
	Audit  *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server is a configured, not yet serving, crank-ca.
type Server struct {
	cfg      *config.Config
	log      *slog.Logger
	now      func() time.Time
	ca       *pki.CA
	stepca   *stepca.CA
	certs    *pki.ServerCerts
	handler  http.Handler
	retainer *store.Retainer
	admin    *admin.API
	attest   *attest.Handler
	tokenKey *provisioner.TokenKey
	ready    *readiness
	// live serves the current configuration's generation (reload.go).
	live *live
	// metrics is nil when metrics.listen is empty (metrics.go).
	metrics *serverMetrics
}

// New loads the key material, opens the store and builds the authority. On
// error nothing stays open.
func New(ctx context.Context, d Deps) (*Server, error) {
	cfg := d.Config
	if cfg == nil {
		return nil, errors.New("server: nil config")
	}
	log := d.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := d.Now
	if now == nil {
		now = time.Now
	}
	mx, err := newServerMetrics(cfg, now, log)
	if err != nil {
		return nil, err
	}
	d.Audit = mx.audit(d.Audit) // counts the audited decisions (metrics off: unchanged)
	ca, err := pki.Load(cfg.Resolve(cfg.PKI.RootCert), cfg.Resolve(cfg.PKI.IntermediateCert), cfg.Resolve(cfg.PKI.IntermediateKey))
	if err != nil {
		return nil, err
	}
	provs, err := Provisioners(cfg)
	if err != nil {
		return nil, err
	}
	key, err := LoadTokenKey(cfg)
	if err != nil {
		return nil, err
	}
	st := Storage(cfg)
	if st.Type == "bbolt" {
		if err := os.MkdirAll(filepath.Dir(st.DataSource), 0o700); err != nil {
			return nil, fmt.Errorf("storage: %w", err)
		}
	}
	dnsNames, ips := serverNames(cfg)
	certs, err := pki.NewServerCerts(pki.ServerCertsConfig{
		CA: ca, DNSNames: dnsNames, IPs: ips,
		Lifetime: cfg.PKI.ServerCertLifetime.Duration,
		Now:      now, Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	sca, err := stepca.New(ctx, stepca.Config{
		Root: ca.Root, Intermediate: ca.Intermediate, Signer: ca.IntermediateKey,
		Storage: st, Provisioners: provs, TokenKey: key,
		Logger: log, Audit: d.Audit, Now: now, ObserveStore: mx.observeStore(),
		ARI:         ariBand(cfg),
		CRLInterval: cfg.CRL.Interval.Duration,
		CRLURL:      crlURL(cfg),
		Listen:      cfg.Listen,
	})
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, now: now, ca: ca, stepca: sca, certs: certs, tokenKey: key}
	s.ready = newReadiness(readinessConfig{Probe: sca.Ready, FailedSince: sca.StoreFailedSince, Now: now, Logger: log})
	s.retainer = store.NewRetainer(store.RetainerConfig{
		DB:     sca.NoSQL(),
		Keep:   cfg.Retention.ExpiredCertificates.Duration,
		Unused: cfg.Retention.UnusedAccounts.Duration,
		Now:    now,
		Logger: log,
	})
	admins, controllers, err := adminPrincipals(cfg)
	if err != nil {
		_ = sca.Close()
		return nil, err
	}
	api, err := admin.New(admin.Config{Operator: operator{s}, Admins: admins, Controllers: controllers, Logger: log, Audit: d.Audit})
	if err != nil {
		_ = sca.Close()
		return nil, err
	}
	s.admin = api
	if s.attest, err = newAttest(cfg, provs, key, sca, d.Logger, d.Audit, now); err != nil {
		_ = sca.Close()
		return nil, err
	}
	s.handler = newLive(s, d.Audit)
	if err := s.attachMetrics(ctx, mx); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// crlURL is the address of /crl by the server's first DNS name.
func crlURL(cfg *config.Config) string {
	_, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil || len(cfg.DNSNames) == 0 {
		return ""
	}
	return "https://" + net.JoinHostPort(cfg.DNSNames[0], port) + "/crl"
}

// serverNames returns the SANs of the server's own certificate: the
// configured names and the listen address, or both loopback addresses when
// the listener is unspecified (0.0.0.0, ::).
func serverNames(cfg *config.Config) ([]string, []net.IP) {
	dns := append([]string(nil), cfg.DNSNames...)
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return dns, nil
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil && host != "":
		dns = append(dns, host)
		return dns, nil
	case ip == nil || ip.IsUnspecified():
		return dns, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	default:
		return dns, []net.IP{ip}
	}
}

// Fingerprint is the hex SHA-256 of the root certificate.
func (s *Server) Fingerprint() string { return s.ca.Fingerprint() }

// Handler serves every route; exported for in-process tests.
func (s *Server) Handler() http.Handler { return s.handler }

// TLSConfig is the HTTPS configuration: TLS 1.2+, the self-renewing server
// certificate, and client certificates verified against the root when a
// client offers one (the admin API requires one; ACME clients offer none).
// Certificates stays empty so GetCertificate also serves clients that send
// no SNI.
func (s *Server) TLSConfig() *tls.Config {
	roots := x509.NewCertPool()
	roots.AddCert(s.ca.Root)
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: s.certs.GetCertificate,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      roots,
	}
}

// ListenAndServe listens on the configured address and serves until ctx is
// done.
func (s *Server) ListenAndServe(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Listen)
	if err != nil {
		_ = s.Close()
		return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves HTTPS on ln until ctx is done, then shuts down gracefully
// and releases the store. It returns nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.handler,
		TLSConfig:         s.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	bg, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = s.certs.Run(bg) }()
	go s.watchOperatorCert(bg) // opcert.go
	dutiesDone := make(chan struct{})
	go func() { defer close(dutiesDone); s.runDuties(bg, ln.Addr().String()) }()
	metricsDone := s.metrics.serve(bg, s.log)

	errc := make(chan error, 1)
	go func() { errc <- hs.ServeTLS(ln, "", "") }()
	storage := Storage(s.cfg)
	if storage.Type != "bbolt" {
		storage.DataSource = config.RedactDSN(storage.DataSource)
	}
	s.log.Info("crank-ca serving", "addr", ln.Addr().String(), "fingerprint", s.Fingerprint(), "storage", storage.Type, "dataSource", storage.DataSource)

	var serveErr error
	select {
	case err := <-errc:
		serveErr = err
	case <-ctx.Done():
		s.log.Info("shutting down")
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
		serveErr = hs.Shutdown(sctx)
		cancel()
		<-errc
	}
	stop()
	<-dutiesDone // no duty may use the store after Close
	<-metricsDone
	if err := s.Close(); err != nil && serveErr == nil {
		serveErr = err
	}
	if errors.Is(serveErr, http.ErrServerClosed) {
		return nil
	}
	return serveErr
}

// Sweep runs one retention pass now, whatever the lease (Serve also runs
// them periodically, at one replica at a time).
func (s *Server) Sweep(ctx context.Context) (store.Stats, error) { return s.retainer.Sweep(ctx) }

// Cluster duties: their names key the leases that replicas on one
// PostgreSQL database share.
const (
	retentionDuty = "crank-ca/retention"
	crlDuty       = "crank-ca/crl"
)

// runDuties runs the cluster duties until ctx is done, each under its own
// lease so that one replica at a time runs it (with an embedded store this
// process always does): a retention pass every retention.interval, and a
// CRL check every stepca.CRLCheckInterval. addr names this replica in the
// logs. It returns once the duties have stopped and released their leases.
func (s *Server) runDuties(ctx context.Context, addr string) {
	var dsn string
	if st := Storage(s.cfg); st.Type == config.StoragePostgreSQL {
		dsn = st.DataSource
	}
	log := s.log.With("addr", addr)
	duties := []struct {
		name  string
		every time.Duration
		run   func(context.Context) error
	}{
		{retentionDuty, s.cfg.Retention.Interval.Duration, func(ctx context.Context) error {
			st, err := s.retainer.Sweep(ctx)
			log.Info("retention pass", "deleted", st)
			return err
		}},
		{crlDuty, stepca.CRLCheckInterval, func(ctx context.Context) error {
			r, err := s.refreshCRL(ctx)
			if err == nil && r.Reason != "" {
				log.Info("CRL generated", "crlNumber", r.Number, "reason", r.Reason, "revoked", r.Revoked,
					"thisUpdate", r.ThisUpdate, "nextUpdate", r.NextUpdate)
			}
			return err
		}},
	}
	var wg sync.WaitGroup
	for _, d := range duties {
		l := lease.New(lease.Config{DSN: dsn, Name: d.name, Logger: log})
		wg.Go(func() {
			defer func() { _ = l.Close() }()
			l.Every(ctx, d.every, d.run)
		})
	}
	wg.Wait()
}

// Close releases the store; Serve calls it on the way out.
func (s *Server) Close() error { return errors.Join(s.metrics.close(), s.live.close()) }

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/acme/", degraded(s.ready, s.stepca.Handler()))
	mux.Handle(attest.Prefix, degraded(s.ready, s.attest))
	mux.Handle(admin.Prefix+"/", s.admin.Handler())
	mux.HandleFunc("GET /roots.pem", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, _ = w.Write(s.ca.RootPEM())
	})
	mux.HandleFunc("GET /crl", func(w http.ResponseWriter, r *http.Request) {
		der, err := s.stepca.CRL(r.Context())
		if err != nil {
			s.log.Error("serving the CRL", "err", err)
			setRetryAfter(w.Header())
			http.Error(w, "CRL unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		_, _ = w.Write(der)
	})
	// /health is the liveness check of earlier releases; load balancers
	// should use /health/ready.
	mux.HandleFunc("GET /health", liveHandler)
	mux.HandleFunc("GET /health/live", liveHandler)
	mux.HandleFunc("GET /health/ready", readyHandler(s.ready))
	return s.logRequests(mux)
}

// statusWriter remembers the status for the access log and the metrics
// (a body written without WriteHeader is a 200).
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", sw.status, "duration", time.Since(start), "remote", r.RemoteAddr)
	})
}
