package server

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/ari"
	"github.com/crank-platform/crank-ca/internal/pki"
	"github.com/crank-platform/crank-ca/internal/stepca"
	"github.com/crank-platform/crank-ca/provisioner"
)

// A reload (SIGHUP; cmd/crank-ca calls Reload) builds a complete new
// generation of everything the configuration decides (the embedded
// authority with crank-ca's linker and provisioners, the admin API, the
// /attest handler, the token key, the intermediate) on the store that is
// already open, and only then swaps it in with one atomic store. Requests
// that started on the old generation finish on it; it is retired once the
// last of them is done. Connections are never touched: the listener, the
// TLS configuration and the server certificate source stay the same
// objects. A file that does not load, validate or build changes nothing.

// ErrReloadClosed is returned by Reload after Close.
var ErrReloadClosed = errors.New("server: reload after close")

// live dispatches every request to the current generation.
type live struct {
	// audit is the audit stream the generations' admin API and attest
	// handler write to.
	audit  *slog.Logger
	mu     sync.Mutex // one reload (or close) at a time
	closed bool
	cur    atomic.Pointer[generation]
	// retirers are the goroutines waiting to retire old generations.
	retirers sync.WaitGroup
	done     chan struct{} // closed by close
}

// generation is one configuration's server: a *Server whose cfg, ca,
// stepca, admin, attest and tokenKey were built from it. Shared parts
// (logger, clock, server certificates, readiness, retention) are the same
// objects in every generation.
type generation struct {
	srv     *Server
	handler http.Handler
	// refs counts the requests (and duties) using the generation;
	// drained is closed when it reaches zero after retiring is set.
	refs     atomic.Int64
	retiring atomic.Bool
	drained  chan struct{}
	once     sync.Once
}

func newGeneration(s *Server) *generation {
	return &generation{srv: s, handler: s.routes(), drained: make(chan struct{})}
}

// newLive makes s the first generation and returns the handler that serves
// whichever generation is current.
func newLive(s *Server, audit *slog.Logger) http.Handler {
	l := &live{audit: audit, done: make(chan struct{})}
	l.cur.Store(newGeneration(s))
	s.live = l
	return l
}

func (l *live) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g := l.acquire()
	defer g.release()
	g.handler.ServeHTTP(w, r)
}

// acquire returns the current generation, counted until release. A
// generation is only used if it was still current after the count went
// up: a retiring generation whose count reached zero is never used again.
func (l *live) acquire() *generation {
	for {
		g := l.cur.Load()
		g.refs.Add(1)
		if l.cur.Load() == g {
			return g
		}
		g.release()
	}
}

func (g *generation) release() {
	if g.refs.Add(-1) == 0 && g.retiring.Load() {
		g.once.Do(func() { close(g.drained) })
	}
}

// retire marks g as replaced; drained closes once no request uses it.
func (g *generation) retire() {
	g.retiring.Store(true)
	if g.refs.Load() == 0 {
		g.once.Do(func() { close(g.drained) })
	}
}

// current is the generation serving new requests, as a *Server.
func (s *Server) current() *Server { return s.live.cur.Load().srv }

// close closes the current generation's CA, which releases the shared
// store, after retiring the others.
func (l *live) close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.done)
	l.mu.Unlock()
	l.retirers.Wait()
	return l.cur.Load().srv.stepca.Close()
}

// Reloaded describes a successful reload.
type Reloaded struct {
	// Changed names the top-level settings whose new values are in force
	// ("provisioners", "admin", "pki.intermediate", ...).
	Changed []string
	// NeedsRestart names the changed settings that were ignored.
	NeedsRestart []string
}

// Reload re-reads the configuration file at path and, if it loads,
// validates and builds completely, serves it from the next request on.
// Provisioners (policies, claims, limits, attestors), admin IDs and
// controllers, the trust domain, ARI and CRL settings, the token key and
// the intermediate take effect; the listen address, DNS names, storage,
// root certificate, server certificate lifetime, retention, log and metrics
// settings are logged as needing a restart and otherwise ignored. On any
// error the running configuration stays, and every problem is logged.
func (s *Server) Reload(ctx context.Context, path string) (Reloaded, error) {
	l := s.live
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return Reloaded{}, ErrReloadClosed
	}
	old := l.cur.Load()
	res, next, err := old.srv.rebuild(ctx, path)
	if err != nil {
		problems := reloadProblems(err)
		s.log.Error("configuration reload refused; the running configuration stays", "config", path, "problems", len(problems))
		for _, p := range problems {
			s.log.Error("configuration problem", "config", path, "problem", p)
		}
		return Reloaded{}, err
	}
	g := newGeneration(next)
	l.cur.Store(g)
	s.metrics.reconfigure(next.cfg)
	old.retire()
	l.retirers.Go(func() {
		select {
		case <-old.drained:
		case <-l.done:
		}
		if err := old.srv.stepca.Retire(); err != nil {
			s.log.Warn("retiring the previous configuration's authority", "err", err)
		}
	})
	for _, f := range res.NeedsRestart {
		s.log.Warn("configuration change needs a restart; keeping the running value", "config", path, "setting", f)
	}
	changed := res.Changed
	if len(changed) == 0 {
		changed = []string{"nothing"}
	}
	s.log.Info("configuration reloaded", "config", path, "changed", strings.Join(changed, ","), "intermediate", next.ca.Intermediate.Subject.CommonName)
	return res, nil
}

// reloadProblems splits an error into its problems, one per line (config
// validation and the builders join theirs with newlines), leaving out the
// "config FILE is invalid:" heading.
func reloadProblems(err error) []string {
	var out []string
	for p := range strings.SplitSeq(err.Error(), "\n") {
		if p = strings.TrimSpace(p); p != "" && !strings.HasSuffix(p, ":") {
			out = append(out, p)
		}
	}
	return out
}

// rebuild loads path and builds the next generation from it. It reports
// every problem it finds, and on error leaves nothing running.
func (s *Server) rebuild(ctx context.Context, path string) (Reloaded, *Server, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return Reloaded{}, nil, err
	}
	var res Reloaded
	res.NeedsRestart = keepRestartOnly(s.cfg, cfg)

	var errs []error
	ca, err := pki.Load(cfg.Resolve(cfg.PKI.RootCert), cfg.Resolve(cfg.PKI.IntermediateCert), cfg.Resolve(cfg.PKI.IntermediateKey))
	switch {
	case err != nil:
		errs = append(errs, err)
	case !bytes.Equal(ca.Root.Raw, s.ca.Root.Raw):
		// The root is what every client trusts: a new one needs a
		// restart, and the intermediate must chain to the running one.
		res.NeedsRestart = append(res.NeedsRestart, "pki.rootCert")
		if _, verr := ca.Intermediate.Verify(x509Opts(s.ca)); verr != nil {
			errs = append(errs, fmt.Errorf("pki.intermediateCert: %s does not chain to the running root (a new root needs a restart): %w", cfg.Resolve(cfg.PKI.IntermediateCert), verr))
		}
		ca.Root = s.ca.Root
	}
	provs, err := Provisioners(cfg)
	if err != nil {
		errs = append(errs, err)
	}
	key, err := LoadTokenKey(cfg)
	if err != nil {
		errs = append(errs, err)
	}
	admins, controllers, err := adminPrincipals(cfg)
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return Reloaded{}, nil, err
	}

	sca, err := s.stepca.Rebuild(ctx, stepca.Config{
		Root: ca.Root, Intermediate: ca.Intermediate, Signer: ca.IntermediateKey,
		Provisioners: provs, TokenKey: key,
		ARI: ariBand(cfg), CRLInterval: cfg.CRL.Interval.Duration, CRLURL: crlURL(cfg),
		Listen: cfg.Listen,
	})
	if err != nil {
		return Reloaded{}, nil, err
	}
	n := *s
	n.cfg, n.ca, n.stepca, n.tokenKey = cfg, ca, sca, key
	if n.admin, err = admin.New(admin.Config{Operator: operator{&n}, Admins: admins, Controllers: controllers, Logger: s.log, Audit: s.live.audit}); err != nil {
		errs = append(errs, err)
	}
	if n.attest, err = newAttest(cfg, provs, key, sca, s.log, s.live.audit, s.now); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		_ = sca.Retire()
		return Reloaded{}, nil, err
	}
	if !bytes.Equal(ca.Intermediate.Raw, s.ca.Intermediate.Raw) {
		if err := s.certs.Switch(ca); err != nil {
			_ = sca.Retire()
			return Reloaded{}, nil, fmt.Errorf("server certificate from the new intermediate: %w", err)
		}
	}
	res.Changed = changedSettings(s.cfg, cfg, s.ca, ca)
	if a, b := keyText(s.tokenKey), keyText(key); !bytes.Equal(a, b) && !slices.Contains(res.Changed, "tokenKeyFile") {
		res.Changed = append(res.Changed, "tokenKey")
		slices.Sort(res.Changed)
	}
	return res, &n, nil
}

// keyText is the token key's encoding, to tell whether it changed.
func keyText(k *provisioner.TokenKey) []byte {
	b, _ := k.MarshalText()
	return b
}

// x509Opts verifies against ca's root.
func x509Opts(ca *pki.CA) x509.VerifyOptions {
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root)
	return x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
}

// adminPrincipals parses admin.spiffeIDs and admin.controllers.
func adminPrincipals(cfg *config.Config) ([]spiffeid.ID, []admin.Controller, error) {
	var (
		admins      []spiffeid.ID
		controllers []admin.Controller
		errs        []error
	)
	for i, raw := range cfg.Admin.SPIFFEIDs {
		id, err := spiffeid.FromString(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("admin.spiffeIDs[%d]: %w", i, err))
			continue
		}
		admins = append(admins, id)
	}
	for i, ctl := range cfg.Admin.Controllers {
		id, err := spiffeid.FromString(ctl.SPIFFEID)
		if err != nil {
			errs = append(errs, fmt.Errorf("admin.controllers[%d].spiffeID: %w", i, err))
			continue
		}
		def, maxTTL := cfg.ControllerTTLs(ctl)
		controllers = append(controllers, admin.Controller{
			ID: id, Provisioner: ctl.Provisioner, WorkerPattern: ctl.WorkerPattern,
			MaxTTL: maxTTL, DefaultTTL: def,
		})
	}
	return admins, controllers, errors.Join(errs...)
}

// ariBand is the ARI configuration as the adapter takes it.
func ariBand(cfg *config.Config) ari.Band {
	return ari.Band{
		Start: float64(cfg.ARI.BandStartPercent) / 100, End: float64(cfg.ARI.BandEndPercent) / 100,
		Width:         float64(cfg.ARI.WindowPercent) / 100,
		MinRetryAfter: cfg.ARI.MinRetryAfter.Duration, MaxRetryAfter: cfg.ARI.MaxRetryAfter.Duration,
	}
}

// keepRestartOnly copies the running values of the settings a reload cannot
// change into next and returns the names of those that differed.
func keepRestartOnly(running, next *config.Config) []string {
	var changed []string
	keep(&changed, "listen", running.Listen, &next.Listen)
	keep(&changed, "dnsNames", running.DNSNames, &next.DNSNames)
	keep(&changed, "storage", running.Storage, &next.Storage)
	keep(&changed, "pki.serverCertLifetime", running.PKI.ServerCertLifetime, &next.PKI.ServerCertLifetime)
	keep(&changed, "retention", running.Retention, &next.Retention)
	keep(&changed, "log", running.Log, &next.Log)
	keep(&changed, "metrics", running.Metrics, &next.Metrics)
	return changed
}

// keep sets *next to running, noting name in changed if they differed.
func keep[T any](changed *[]string, name string, running T, next *T) {
	if !reflect.DeepEqual(running, *next) {
		*changed = append(*changed, name)
	}
	*next = running
}

// changedSettings names what a reload changed, by comparing the JSON of
// each top-level setting (and the intermediate by content).
func changedSettings(running, next *config.Config, runCA, nextCA *pki.CA) []string {
	var out []string
	a, b := settings(running), settings(next)
	for k, v := range b {
		if !bytes.Equal(a[k], v) {
			out = append(out, k)
		}
	}
	if !bytes.Equal(runCA.Intermediate.Raw, nextCA.Intermediate.Raw) {
		out = append(out, "pki.intermediate")
	}
	slices.Sort(out)
	return out
}

// settings is each top-level setting of cfg as JSON (pki without the
// intermediate paths, which changedSettings compares by content).
func settings(cfg *config.Config) map[string][]byte {
	c := *cfg
	c.PKI.IntermediateCert, c.PKI.IntermediateKey, c.PKI.RootCert = "", "", ""
	b, err := json.Marshal(&c)
	if err != nil {
		return nil
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	out := make(map[string][]byte, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// refreshCRL is the CRL duty on the current generation: first a CRL from
// the current intermediate if the stored one is from another (a rotation),
// otherwise the regular check.
func (s *Server) refreshCRL(ctx context.Context) (stepca.CRLRefresh, error) {
	g := s.live.acquire()
	defer g.release()
	sca := g.srv.stepca
	if r, err := sca.RefreshIssuerCRL(ctx); err != nil || r.Reason != "" {
		return r, err
	}
	return sca.RefreshCRL(ctx)
}
