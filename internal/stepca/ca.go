package stepca

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/smallstep/certificates/acme"
	acmeapi "github.com/smallstep/certificates/acme/api"
	acmenosql "github.com/smallstep/certificates/acme/db/nosql"
	apilog "github.com/smallstep/certificates/api/log"
	"github.com/smallstep/certificates/api/render"
	"github.com/smallstep/certificates/authority"
	authconfig "github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/policy"
	steppro "github.com/smallstep/certificates/authority/provisioner"
	stepdb "github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"

	"github.com/crank-platform/crank-ca/internal/ari"
	"github.com/crank-platform/crank-ca/internal/limit"
	"github.com/crank-platform/crank-ca/internal/store"
)

// maxRequestBody bounds every ACME request body. The largest legitimate
// request is a finalize with an RSA-8192 CSR, a few KiB.
const maxRequestBody = 256 << 10

// CA is an embedded smallstep authority serving crank-ca's ACME directories.
type CA struct {
	now    func() time.Time
	ari    ari.Band
	auth   *authority.Authority
	db     *acmeDB
	store  *store.Store
	nosql  nosql.DB
	data   *storeDB
	nonces *nonceSource
	// stopBackground ends the CA's own loops (pruning spent nonces).
	stopBackground context.CancelFunc
	linker         *linker
	log            *slog.Logger
	audit          *slog.Logger
	handler        http.Handler
}

// New opens the store, builds the authority and its ACME handler. The caller
// must Close the CA to release the store (embedded stores lock their file).
func New(ctx context.Context, cfg Config) (*CA, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("stepca: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	audit := cfg.Audit
	if audit == nil {
		audit = slog.New(slog.DiscardHandler)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}

	provs, specs := stepProvisioners(cfg.Provisioners)

	crl := crlConfig(cfg) // smallstep's generator off: crank-ca generates the CRL (crl.go)
	authCfg := &authconfig.Config{
		CRL: crl,
		AuthorityConfig: &authconfig.AuthConfig{
			Provisioners: provs,
			// The root's own lifetime bounds nothing here; claims come from
			// each provisioner.
			DisableIssuedAtCheck: true,
		},
	}
	data, err := openDatabase(ctx, cfg.Storage)
	if err != nil {
		return nil, err
	}
	held := newHeldDB(observedStore(data, cfg.ObserveStore))
	auth, err := authority.NewEmbedded(
		authority.WithConfig(authCfg),
		authority.WithDatabase(held),
		authority.WithX509RootCerts(cfg.Root),
		authority.WithX509Signer(cfg.Intermediate, cfg.Signer),
		authority.WithX509Enforcers(issuerLifetimeEnforcer{issuer: cfg.Intermediate}),
		authority.WithQuietInit(),
	)
	if err != nil {
		_ = data.Close()
		return nil, fmt.Errorf("stepca: build authority: %w", err)
	}
	closeAll := func() {
		_ = auth.Shutdown()
		_ = data.Close()
	}
	ndb := data.DB
	st, err := store.New(store.Config{DB: ndb, Now: now, Observe: cfg.ObserveStore})
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("stepca: %w", err)
	}
	inner, err := acmenosql.New(observed(ndb, cfg.ObserveStore))
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("stepca: open ACME tables: %w", err)
	}
	nonces, err := newNonceSource(ctx, st, cfg.Storage.Type == "postgresql", now, logger)
	if err != nil {
		closeAll()
		return nil, err
	}
	tokens := &tokenChecker{key: cfg.TokenKey, store: st, now: now, audit: audit}
	adb := &acmeDB{nonces: nonces.Source, held: held, DB: inner, specs: specsByID(specs), store: st, tokens: tokens, log: logger, audit: audit, now: now,
		pending:   limit.NewPending(now),
		isRevoked: func(serial string) bool { r, _ := auth.IsRevoked(serial); return r }}
	lk := &linker{
		Linker:  acme.NewLinker("", "acme"),
		specs:   specs,
		clients: validationClients(cfg.Provisioners, cfg.Listen, logger),
		tokens:  tokens,
		db:      adb,
		rates:   limit.NewRates(now),
		now:     now,
	}
	bg, stop := context.WithCancel(context.WithoutCancel(ctx))
	go nonces.prune(bg, now, logger)
	go func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-bg.Done():
				return
			case <-t.C:
				held.flushStale(bg, st, 10*time.Second, logger)
			}
		}
	}()
	c := &CA{nonces: nonces, stopBackground: stop, now: now, ari: cfg.ARI, auth: auth, db: adb, store: st, nosql: ndb, data: data, linker: lk, log: logger, audit: audit}
	c.handler = c.routes()
	return c, nil
}

func specsByID(byName map[string]*Provisioner) map[string]*Provisioner {
	m := make(map[string]*Provisioner, len(byName))
	for _, p := range byName {
		m[p.id()] = p
	}
	return m
}

// stepProvisioner translates a Provisioner into smallstep's ACME provisioner.
func stepProvisioner(p *Provisioner) *steppro.ACME {
	dur := func(d time.Duration) *steppro.Duration { return &steppro.Duration{Duration: d} }
	ap := &steppro.ACME{
		ID:   p.id(),
		Type: "ACME",
		Name: p.Name,
		Claims: &steppro.Claims{
			MinTLSDur:     dur(p.MinDuration),
			DefaultTLSDur: dur(p.DefaultDuration),
			MaxTLSDur:     dur(p.MaxDuration),
		},
		RequireEAB: p.usesTokens(),
	}
	switch p.Kind {
	case KindWorkers:
		// One challenge per authorization is enough: it is marked valid at
		// creation and never dialled.
		ap.Challenges = []steppro.ACMEChallenge{steppro.HTTP_01}
	case KindACME:
		for _, ch := range p.Challenges {
			ap.Challenges = append(ap.Challenges, steppro.ACMEChallenge(ch))
		}
		if denied := stepDeniedNames(p); denied != nil {
			ap.Options = &steppro.Options{X509: &steppro.X509Options{DeniedNames: denied}}
		}
	}
	return ap
}

// stepDeniedNames hands the denied part of an acme provisioner's policy to
// smallstep's own x509 policy engine, which then refuses those names at
// new-order and again when signing: a third check that shares no code with
// crank-ca's. It fits only partly: smallstep's "*.suffix" matches exactly one
// label, so it covers the names of the usual templates
// ("{worker}.workers.{trustDomain}"); deeper names are crank-ca's to refuse.
// The allowed suffixes are not handed over for the same reason (they would
// refuse names crank-ca allows).
func stepDeniedNames(p *Provisioner) *policy.X509NameOptions {
	o := &policy.X509NameOptions{URIDomains: append([]string{}, p.DeniedURIDomains...)}
	for _, d := range p.Policy.DeniedDNSSuffixes {
		d = strings.TrimPrefix(d, ".")
		o.DNSDomains = append(o.DNSDomains, d, "*."+d)
	}
	for _, ip := range p.Policy.DeniedIPs {
		o.IPRanges = append(o.IPRanges, netip.PrefixFrom(ip, ip.BitLen()).String())
	}
	if !o.HasNames() {
		return nil
	}
	return o
}

// Handler serves the ACME API under /acme/<provisioner>/...
func (c *CA) Handler() http.Handler { return c.handler }

// Store exposes crank-ca's own records (bindings, spent tokens, certificate records, worker states).
func (c *CA) Store() *store.Store { return c.store }

// NoSQL returns the shared database (for retention).
func (c *CA) NoSQL() nosql.DB { return c.nosql }

// Close shuts the authority down and releases the store.
func (c *CA) Close() error {
	c.stopBackground()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.db.held.flushStale(ctx, c.store, 0, c.log)
	return errors.Join(c.nonces.save(ctx), c.auth.Shutdown(), c.data.Close())
}

func (c *CA) routes() http.Handler {
	r := chi.NewRouter()
	// Paths and methods no route answers get problem documents too, not
	// chi's plain-text defaults.
	r.NotFound(func(w http.ResponseWriter, req *http.Request) {
		e := acme.NewDetailedError(acme.ErrorMalformedType, "no ACME resource at %s", truncate(req.URL.Path, 120))
		e.Status = http.StatusNotFound
		render.Error(w, req, e)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, req *http.Request) {
		e := acme.NewDetailedError(acme.ErrorMalformedType, "%s is not allowed on %s", req.Method, truncate(req.URL.Path, 120))
		e.Status = http.StatusMethodNotAllowed
		render.Error(w, req, e)
	})
	r.Route("/acme", func(r chi.Router) {
		acmeapi.Route(r)
		r.Get("/{provisionerID}/"+renewalInfoPath+"/{certID}", c.renewalInfo)
	})
	client := acme.NewClient()
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ctx := req.Context()
		ctx = authority.NewContext(ctx, c.auth)
		ctx = acme.NewContext(ctx, c.db, client, c.linker, nil)
		ctx = stepdb.NewContext(ctx, c.auth.GetDatabase())
		ctx = apilog.WithErrorLogger(ctx, c.logError)
		ctx = withState(ctx)
		req = req.WithContext(ctx)
		w = &retryAfterWriter{ResponseWriter: w, st: stateFrom(ctx)}
		// Refusals smallstep would answer with a 500 or a non-ACME 404.
		if err := c.readBody(w, req); err != nil {
			render.Error(w, req, err)
			return
		}
		if err := c.knownProvisioner(req); err != nil {
			render.Error(w, req, err)
			return
		}
		if allow := allowedMethods(req.URL.Path); !strings.Contains(allow, req.Method) {
			w.Header().Set("Allow", allow)
			e := acme.NewDetailedError(acme.ErrorMalformedType, "%s is not allowed here; ACME resources are read and changed with POST (RFC 8555 section 6.3)", req.Method)
			e.Status = http.StatusMethodNotAllowed
			render.Error(w, req, e)
			return
		}
		if isDirectory(req.URL.Path) {
			c.directoryWithARI(r, w, req)
			return
		}
		r.ServeHTTP(w, req)
		c.db.releaseClaim(ctx)
	})
}

// allowedMethods lists the methods an ACME path answers: GET/HEAD for the
// directory and new-nonce, GET for renewalInfo, POST for everything else.
func allowedMethods(path string) string {
	rest, _ := strings.CutPrefix(path, "/acme/")
	_, rest, _ = strings.Cut(rest, "/")
	switch {
	case rest == "directory":
		return "GET, HEAD"
	case rest == "new-nonce":
		return "GET, HEAD"
	case strings.HasPrefix(rest, renewalInfoPath+"/"):
		return "GET"
	default:
		return "POST"
	}
}

// retryAfterWriter adds the Retry-After of a rateLimited refusal decided
// deep inside smallstep's handlers, which render the problem without it.
type retryAfterWriter struct {
	http.ResponseWriter
	st *state
}

func (w *retryAfterWriter) WriteHeader(code int) {
	if code == http.StatusTooManyRequests && w.st.retryAfter > 0 && w.Header().Get("Retry-After") == "" {
		w.Header().Set("Retry-After", strconv.Itoa(w.st.retryAfter))
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *retryAfterWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// readBody reads the whole body once, bounded, and keeps it for the
// prechecks; smallstep gets an identical reader.
func (c *CA) readBody(w http.ResponseWriter, r *http.Request) error {
	if r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			e := acme.NewDetailedError(acme.ErrorMalformedType, "request body larger than %d bytes", maxRequestBody)
			e.Status = http.StatusRequestEntityTooLarge
			return e
		}
		return acme.WrapError(acme.ErrorMalformedType, err, "error reading request body")
	}
	stateFrom(r.Context()).body = b
	r.Body = io.NopCloser(bytes.NewReader(b))
	return nil
}

// knownProvisioner answers a path naming no provisioner with a problem
// document (smallstep answers a plain JSON 404).
func (c *CA) knownProvisioner(r *http.Request) error {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), "/acme/")
	if !ok {
		return nil
	}
	seg, _, _ := strings.Cut(rest, "/")
	name, err := url.PathUnescape(seg)
	if err == nil && c.linker.specs[name] != nil {
		return nil
	}
	e := acme.NewDetailedError(acme.ErrorMalformedType, "no ACME provisioner named %q", seg)
	e.Status = http.StatusNotFound
	return e
}

// logError records the real cause of an ACME error, which smallstep hides
// from the client. Client mistakes log at warn, server faults at error.
func (c *CA) logError(_ http.ResponseWriter, r *http.Request, err error) {
	level := slog.LevelError
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.String("remote", r.RemoteAddr),
	}
	var ae *acme.Error
	if errors.As(err, &ae) {
		if ae.Status < 500 {
			level = slog.LevelWarn
		}
		attrs = append(attrs, slog.Int("status", ae.Status), slog.String("type", ae.Type), slog.String("detail", ae.Detail))
		if ae.Err != nil {
			attrs = append(attrs, slog.String("cause", ae.Err.Error()))
		}
	} else {
		attrs = append(attrs, slog.String("cause", err.Error()))
	}
	c.log.LogAttrs(r.Context(), level, "acme request failed", attrs...)
	c.auditRefusal(r, err)
}

// issuerLifetimeEnforcer keeps every leaf inside its issuer's validity: a
// client-requested notAfter may never outlive the intermediate.
type issuerLifetimeEnforcer struct{ issuer *x509.Certificate }

func (e issuerLifetimeEnforcer) Enforce(cert *x509.Certificate) error {
	if cert.NotAfter.After(e.issuer.NotAfter) {
		cert.NotAfter = e.issuer.NotAfter
	}
	return nil
}

// stepProvisioners is the configuration's provisioners as smallstep's list
// and by name.
func stepProvisioners(ps []Provisioner) (steppro.List, map[string]*Provisioner) {
	provs := make(steppro.List, 0, len(ps))
	specs := make(map[string]*Provisioner, len(ps))
	for i := range ps {
		p := &ps[i]
		specs[p.Name] = p
		provs = append(provs, stepProvisioner(p))
	}
	return provs, specs
}
