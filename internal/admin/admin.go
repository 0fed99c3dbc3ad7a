package admin

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Config configures New.
type Config struct {
	// Operator carries out the operations; required.
	Operator Operator
	// Admins are the SPIFFE IDs allowed to use the API; at least one is
	// required. A client certificate must name one of them exactly.
	Admins []spiffeid.ID
	// Controllers may only mint join tokens within their limits (see
	// Controller). Optional; an ID must not also be in Admins.
	Controllers []Controller
	// Logger receives operational events, such as the real cause of a 500.
	// nil discards.
	Logger *slog.Logger
	// Audit receives one "admin request" record per request. nil discards.
	Audit *slog.Logger
}

// API serves the admin routes. It is safe for concurrent use.
type API struct {
	op      Operator
	admins  map[string]struct{} // SPIFFE ID strings
	ctls    map[string]*controller
	log     *slog.Logger
	audit   *slog.Logger
	csrf    *http.CrossOriginProtection
	mux     *http.ServeMux
	handler http.Handler
}

// New validates cfg, reporting every problem at once, and builds the API.
func New(cfg Config) (*API, error) {
	var errs []error
	if cfg.Operator == nil {
		errs = append(errs, errors.New("admin: Config.Operator is required"))
	}
	if len(cfg.Admins) == 0 {
		errs = append(errs, errors.New("admin: Config.Admins must list at least one SPIFFE ID"))
	}
	admins := make(map[string]struct{}, len(cfg.Admins))
	for i, id := range cfg.Admins {
		if id.IsZero() {
			errs = append(errs, fmt.Errorf("admin: Config.Admins[%d] is empty", i))
			continue
		}
		admins[id.String()] = struct{}{}
	}
	ctls, err := newControllers(cfg.Controllers, admins)
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Audit == nil {
		cfg.Audit = slog.New(slog.DiscardHandler)
	}
	a := &API{
		op:     cfg.Operator,
		admins: admins,
		ctls:   ctls,
		log:    cfg.Logger,
		audit:  cfg.Audit,
		csrf:   http.NewCrossOriginProtection(),
	}
	a.mux = a.newMux()
	a.handler = http.HandlerFunc(a.serve)
	return a, nil
}

// Handler returns the handler for every route under Prefix. Mount it as
// mux.Handle(Prefix+"/", api.Handler()) on a listener whose tls.Config
// verifies client certificates against the CA root (see the package
// documentation).
func (a *API) Handler() http.Handler { return a.handler }

// route is one endpoint: a method, a ServeMux path pattern and what to do.
type route struct {
	method string
	path   string
	h      endpoint
}

// routes lists the API's endpoints.
func (a *API) routes() []route {
	return []route{
		{http.MethodPost, Prefix + "/tokens", a.mintToken},
		{http.MethodGet, Prefix + "/workers", a.workers},
		{http.MethodPost, Prefix + "/workers/{provisioner}/{name}/disable", a.setDisabled(true)},
		{http.MethodPost, Prefix + "/workers/{provisioner}/{name}/enable", a.setDisabled(false)},
		{http.MethodGet, Prefix + "/accounts", a.accounts},
		{http.MethodGet, Prefix + "/certificates", a.certificates},
		{http.MethodPost, Prefix + "/revoke", a.revoke},
		{http.MethodPost, Prefix + "/rotate", a.rotate},
	}
}

// newMux routes requests that passed authentication. Every path of a route
// is also registered without a method, so that any other method is answered
// with a 405 problem, and everything else ends in a 404 problem; ServeMux's
// own plain-text answers are never used.
func (a *API) newMux() *http.ServeMux {
	mux := http.NewServeMux()
	allowed := map[string][]string{}
	var paths []string
	for _, rt := range a.routes() {
		mux.Handle(rt.method+" "+rt.path, a.adapt(rt.h))
		if _, ok := allowed[rt.path]; !ok {
			paths = append(paths, rt.path)
		}
		allowed[rt.path] = append(allowed[rt.path], rt.method)
		if rt.method == http.MethodGet {
			allowed[rt.path] = append(allowed[rt.path], http.MethodHead)
		}
	}
	for _, p := range paths {
		allow := strings.Join(slices.Sorted(slices.Values(allowed[p])), ", ")
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			a.writeProblem(w, r, fmt.Errorf("%w: %s %s; allowed: %s", errMethodNotAllowed, r.Method, r.URL.Path, allow))
		})
	}
	a.handleBackup(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		a.writeProblem(w, r, fmt.Errorf("no admin endpoint %s: %w", r.URL.Path, ErrNotFound))
	})
	return mux
}
