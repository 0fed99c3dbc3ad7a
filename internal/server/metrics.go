package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/metrics"
	"github.com/crank-platform/crank-ca/internal/store"
)

// serverMetrics are the server's Prometheus metrics and their listener
// (metrics.listen). A nil *serverMetrics means metrics are off: every
// method is then a no-op that leaves what it is given unchanged.
type serverMetrics struct {
	m  *metrics.CA
	ln net.Listener
	// srv is the server, set by attachMetrics at the end of New; the
	// collectors read the store and the CA certificates through it.
	srv       atomic.Pointer[Server]
	closeOnce sync.Once
}

// newServerMetrics builds the metrics when cfg turns them on. It opens
// nothing: the listener is bound by attachMetrics.
func newServerMetrics(cfg *config.Config, now func() time.Time, log *slog.Logger) (*serverMetrics, error) {
	if cfg.Metrics.Listen == "" {
		return nil, nil
	}
	sm := &serverMetrics{}
	provs, methods := metricsLabels(cfg)
	m, err := metrics.NewCA(metrics.CAConfig{
		Provisioners:     provs,
		AttestorMethods:  methods,
		LiveCertificates: sm.liveCertificates,
		CACerts:          sm.caCerts,
		Logger:           log,
		Now:              now,
	})
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	sm.m = m
	return sm, nil
}

// metricsLabels are the provisioner names and attestor methods of cfg, the
// only values the metrics' provisioner and method labels take.
func metricsLabels(cfg *config.Config) ([]string, map[string]string) {
	var provs []string
	methods := map[string]string{}
	for _, p := range cfg.Provisioners {
		provs = append(provs, p.Name)
		for _, a := range p.Attestors {
			methods[p.Name+"/"+a.Name] = a.Type
		}
	}
	return provs, methods
}

// audit wraps the audit logger so that the decisions it records are
// counted; with metrics off it returns l as it is.
func (sm *serverMetrics) audit(l *slog.Logger) *slog.Logger {
	if sm == nil {
		return l
	}
	var h slog.Handler = slog.DiscardHandler
	if l != nil {
		h = l.Handler()
	}
	return slog.New(sm.m.AuditHandler(h))
}

// observeStore is the store observer handed to the authority (nil: off).
func (sm *serverMetrics) observeStore() func(string, time.Duration) {
	if sm == nil {
		return nil
	}
	return sm.m.ObserveStore
}

// attachMetrics binds the metrics listener and starts counting requests;
// New calls it last, so a busy metrics port fails start-up before anything
// is served.
func (s *Server) attachMetrics(ctx context.Context, sm *serverMetrics) error {
	if sm == nil {
		return nil
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Metrics.Listen)
	if err != nil {
		return fmt.Errorf("metrics.listen %s: %w", s.cfg.Metrics.Listen, err)
	}
	sm.ln = ln
	sm.srv.Store(s)
	s.metrics = sm
	s.handler = sm.instrument(s.handler)
	return nil
}

// MetricsAddr is the address the metrics listener is bound to ("" when
// metrics are off).
func (s *Server) MetricsAddr() string {
	if s.metrics == nil {
		return ""
	}
	return s.metrics.ln.Addr().String()
}

// serve serves the metrics until ctx is done; the returned channel closes
// once the listener is shut down.
func (sm *serverMetrics) serve(ctx context.Context, log *slog.Logger) <-chan struct{} {
	done := make(chan struct{})
	if sm == nil {
		close(done)
		return done
	}
	log.Info("metrics serving", "addr", sm.ln.Addr().String(), "path", metrics.Path)
	go func() {
		defer close(done)
		if err := metrics.Serve(ctx, sm.ln, sm.m.Handler()); err != nil && !errors.Is(err, net.ErrClosed) {
			log.Error("metrics listener failed", "err", err)
		}
	}()
	return done
}

// close releases the listener of a server that never served.
func (sm *serverMetrics) close() error {
	if sm == nil {
		return nil
	}
	var err error
	sm.closeOnce.Do(func() {
		if cerr := sm.ln.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = cerr
		}
	})
	return err
}

// liveCertificates counts the live certificates of the store by
// provisioner. It reads the whole certificate table (live certificates and
// the expired ones retention still keeps), which is why the metrics cache
// the count (metrics.DefaultLiveCacheTTL).
func (sm *serverMetrics) liveCertificates(ctx context.Context) (map[string]int, error) {
	s := sm.srv.Load()
	if s == nil {
		return nil, errors.New("server not built yet")
	}
	cur := s.current()
	now := cur.now()
	counts := map[string]int{}
	_, err := cur.stepca.Store().Certs(ctx, func(r store.CertRecord) bool {
		if r.Live(now) {
			counts[r.Provisioner]++
		}
		return false // count, keep nothing
	})
	return counts, err
}

// caCerts are the root and the intermediate the current configuration
// signs with.
func (sm *serverMetrics) caCerts() []metrics.CACert {
	s := sm.srv.Load()
	if s == nil {
		return nil
	}
	ca := s.current().ca
	return []metrics.CACert{{Name: "root", NotAfter: ca.Root.NotAfter}, {Name: "intermediate", NotAfter: ca.Intermediate.NotAfter}}
}

// instrument counts every request by route pattern and status and times
// it.
func (sm *serverMetrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		mw := &statusWriter{ResponseWriter: w} // server.go
		next.ServeHTTP(mw, r)
		if mw.status == 0 {
			mw.status = http.StatusOK
		}
		// The mux below set r.Pattern on this very request.
		sm.m.ObserveRequest(routeOf(r), mw.status, time.Since(start))
	})
}

// routeOf is the route label of a served request: the mux pattern that
// matched it, refined to the ACME resource under /acme/ (smallstep's chi
// patterns), or "other" for a request no route matched. It never contains
// anything of the request's own path.
func routeOf(r *http.Request) string {
	switch r.Pattern {
	case "":
		return "other"
	case "/acme/":
		return acmeRoute(r.URL.Path)
	default:
		return r.Pattern
	}
}

// acmeRoutes are smallstep's ACME routes (and crank-ca's renewal-info)
// below /acme/{provisioner}/.
var acmeRoutes = []string{
	"directory", "new-nonce", "new-account", "new-order", "revoke-cert",
	"key-change", "key-change/{accID}", "account/{accID}", "account/{accID}/orders",
	"order/{ordID}", "order/{ordID}/finalize", "authz/{authzID}",
	"challenge/{authzID}/{chID}", "certificate/{certID}", "renewal-info/{certID}",
}

// acmeRoute is the route pattern a path under /acme/ matches, or
// "/acme/other".
func acmeRoute(path string) string {
	rest, _ := strings.CutPrefix(path, "/acme/")
	_, rest, ok := strings.Cut(rest, "/") // the provisioner
	if !ok {
		return "/acme/other"
	}
	segs := strings.Split(rest, "/")
	for _, pat := range acmeRoutes {
		if matchRoute(strings.Split(pat, "/"), segs) {
			return "/acme/{provisioner}/" + pat
		}
	}
	return "/acme/other"
}

// matchRoute matches path segments against a pattern's: literals equal,
// placeholders non-empty.
func matchRoute(pat, segs []string) bool {
	if len(pat) != len(segs) {
		return false
	}
	for i, p := range pat {
		if strings.HasPrefix(p, "{") {
			if segs[i] == "" {
				return false
			}
		} else if p != segs[i] {
			return false
		}
	}
	return true
}

// reconfigure makes a reloaded configuration's provisioners and attestors
// the known label values; a reload calls it once the new configuration is
// in force, so events of a provisioner it added are not counted as "other".
func (sm *serverMetrics) reconfigure(cfg *config.Config) {
	if sm != nil {
		sm.m.SetLabels(metricsLabels(cfg))
	}
}
