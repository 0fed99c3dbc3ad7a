package metrics

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Defaults for CAConfig's zero values.
const (
	// DefaultLiveCacheTTL is how long a count of live certificates is
	// reused: counting reads the whole certificate table, so scrapes more
	// frequent than this must not each do it.
	DefaultLiveCacheTTL = time.Minute
	// DefaultLiveTimeout bounds one count of live certificates.
	DefaultLiveTimeout = 10 * time.Second
)

// Label values used when a value is not one of the known ones, so that no
// input can create new series.
const (
	// LabelNone is the provisioner of an event that names none (a request
	// refused before its provisioner was known).
	LabelNone = "none"
	// LabelOther replaces any value outside the known set.
	LabelOther = "other"
)

// CACert is one of the CA's own certificates whose expiry is exported.
type CACert struct {
	// Name is the label value: "root" or "intermediate".
	Name     string
	NotAfter time.Time
}

// CAConfig configures the CA's metrics.
type CAConfig struct {
	// Provisioners are the configured provisioner names, the only values
	// the provisioner label takes (besides "none" and "other").
	Provisioners []string
	// AttestorMethods maps "<provisioner>/<attestor name>" to the
	// attestor's method (kubernetes, oidc), the method label of
	// attestations and of binds made with attested credentials.
	AttestorMethods map[string]string
	// LiveCertificates counts the unexpired, unrevoked certificates by
	// provisioner. It is called on scrape, at most once per LiveCacheTTL;
	// nil exports no live-certificate gauge.
	LiveCertificates func(context.Context) (map[string]int, error)
	// LiveCacheTTL defaults to DefaultLiveCacheTTL.
	LiveCacheTTL time.Duration
	// CACerts returns the CA's root and intermediate (read on every
	// scrape, so a rotated intermediate shows at once). nil exports none.
	CACerts func() []CACert
	// Logger receives failures to count live certificates. nil discards.
	Logger *slog.Logger
	// Now is the clock of the live-certificate cache; nil means time.Now.
	Now func() time.Time
}

// CA holds crank-ca's metrics on a registry of their own.
type CA struct {
	reg *prometheus.Registry
	// labels are the known label values, replaced by SetLabels.
	labels atomic.Pointer[labelSets]

	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	issued       *prometheus.CounterVec
	refusals     *prometheus.CounterVec
	attestations *prometheus.CounterVec
	binds        *prometheus.CounterVec
	tokenRefused *prometheus.CounterVec
	revocations  *prometheus.CounterVec
	replacements prometheus.Counter
	storeOps     *prometheus.HistogramVec
}

// NewCA builds the metrics and registers them, with the Go runtime and
// process collectors, on a new registry.
func NewCA(cfg CAConfig) (*CA, error) {
	if cfg.LiveCacheTTL <= 0 {
		cfg.LiveCacheTTL = DefaultLiveCacheTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &CA{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "crank_ca_http_requests_total",
			Help: "HTTP requests served on the CA's listener, by route pattern and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "crank_ca_http_request_duration_seconds",
			Help:    "Time to serve an HTTP request on the CA's listener, by route pattern.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "crank_ca_certificates_issued_total",
			Help: "Certificates issued, by provisioner.",
		}, []string{"provisioner"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "crank_ca_acme_refusals_total",
			Help: "ACME requests refused with a problem document (4xx), by provisioner and ACME problem type.",
		}, []string{"provisioner", "reason"}),
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "crank_ca_attestations_total",
			Help: "Attestations at /attest, by provisioner, method, outcome (accepted, refused) and failed check.",
		}, []string{"provisioner", "method", "outcome", "check"}),
		binds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "crank_ca_token_binds_total",
			Help: "ACME accounts bound to a worker identity, by provisioner and method (join-token or the attestor's).",
		}, []string{"provisioner", "method"}),
		tokenRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "crank_ca_token_refusals_total",
			Help: "Join tokens and EAB credentials refused, by provisioner and reason.",
		}, []string{"provisioner", "reason"}),
		revocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "crank_ca_revocations_total",
			Help: "Certificates revoked, by the way the revocation came (admin, acme).",
		}, []string{"via"}),
		replacements: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "crank_ca_replacement_orders_total",
			Help: "Orders naming a certificate they replace (ARI renewals).",
		}),
		storeOps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "crank_ca_store_operation_duration_seconds",
			Help:    "Time of store operations, by operation: the embedded ACME and authority layers' record operations (get, set, cas, delete, list, update) and crank-ca's own transactions (txn) and nonce spends (nonce).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"operation"}),
	}
	m.SetLabels(cfg.Provisioners, cfg.AttestorMethods)
	cs := []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.requests, m.duration, m.issued, m.refusals, m.attestations, m.binds,
		m.tokenRefused, m.revocations, m.replacements, m.storeOps,
	}
	if cfg.LiveCertificates != nil {
		cs = append(cs, &liveCollector{
			count: cfg.LiveCertificates, ttl: cfg.LiveCacheTTL, now: cfg.Now, log: cfg.Logger,
			labels: m.labels.Load,
			desc: prometheus.NewDesc("crank_ca_live_certificates",
				"Unexpired, unrevoked certificates in the store, by provisioner (counted at most once per cache period).",
				[]string{"provisioner"}, nil),
		})
	}
	if cfg.CACerts != nil {
		cs = append(cs, &caCertCollector{
			certs: cfg.CACerts,
			desc: prometheus.NewDesc("crank_ca_certificate_not_after_timestamp_seconds",
				"Expiry (notAfter, Unix seconds) of the CA's own certificates: root and intermediate.",
				[]string{"certificate"}, nil),
		})
	}
	if err := registerAll(m.reg, cs); err != nil {
		return nil, err
	}
	return m, nil
}

// Registry is the registry the metrics are on (tests gather from it).
func (m *CA) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus exposition formats.
func (m *CA) Handler() http.Handler {
	return handlerFor(m.reg)
}

// ObserveRequest records one served HTTP request. route must come from a
// fixed set (a route pattern), never from the raw URL.
func (m *CA) ObserveRequest(route string, status int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(route).Observe(d.Seconds())
}

// ObserveStore records the time of one store operation; op comes from a
// fixed set (get, set, cas, delete, list, update).
func (m *CA) ObserveStore(op string, d time.Duration) {
	m.storeOps.WithLabelValues(op).Observe(d.Seconds())
}

// labelSets are the values the provisioner and method labels may take.
type labelSets struct {
	provs   []string
	known   map[string]bool
	methods map[string]string
}

// SetLabels replaces the known provisioner names and attestor methods (a
// configuration reload that adds a provisioner calls it, so its events are
// not counted as "other"). Counts already made keep their labels.
func (m *CA) SetLabels(provisioners []string, attestorMethods map[string]string) {
	ls := &labelSets{provs: slices.Clone(provisioners), known: map[string]bool{}, methods: maps.Clone(attestorMethods)}
	for _, p := range provisioners {
		ls.known[p] = true
		// Every known provisioner shows zero issuances rather than
		// nothing, so rate() and absence alerts work from the start.
		m.issued.WithLabelValues(p)
	}
	m.labels.Store(ls)
}

// provisioner maps a provisioner name to its label value.
func (ls *labelSets) provisioner(name string) string {
	switch {
	case name == "":
		return LabelNone
	case ls.known[name]:
		return name
	default:
		return LabelOther
	}
}

// method is the method label of an attestor of a provisioner.
func (ls *labelSets) method(provisioner, attestor string) string {
	if attestor == "" {
		return LabelNone
	}
	if v, ok := ls.methods[provisioner+"/"+attestor]; ok {
		return v
	}
	return LabelOther
}

// liveCollector exports the live-certificate counts, recounting at most
// once per ttl. Concurrent scrapes share one count.
type liveCollector struct {
	count  func(context.Context) (map[string]int, error)
	ttl    time.Duration
	now    func() time.Time
	log    *slog.Logger
	labels func() *labelSets
	desc   *prometheus.Desc

	mu     sync.Mutex
	at     time.Time
	counts map[string]int
}

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.now(); c.counts == nil || now.Sub(c.at) >= c.ttl {
		ctx, cancel := context.WithTimeout(context.Background(), DefaultLiveTimeout)
		counts, err := c.count(ctx)
		cancel()
		if err != nil {
			// The last good count stays (marked by its age in the log);
			// a first failure exports nothing rather than a false zero.
			c.log.Warn("counting live certificates for metrics", "err", err)
		} else {
			// Known provisioners without certificates show 0.
			ls := c.labels()
			agg := map[string]int{}
			for _, p := range ls.provs {
				agg[p] = 0
			}
			for p, n := range counts {
				agg[ls.provisioner(p)] += n
			}
			c.counts, c.at = agg, now
		}
	}
	for _, p := range slices.Sorted(maps.Keys(c.counts)) {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(c.counts[p]), p)
	}
}

// caCertCollector exports the expiry of the CA's own certificates.
type caCertCollector struct {
	certs func() []CACert
	desc  *prometheus.Desc
}

func (c *caCertCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *caCertCollector) Collect(ch chan<- prometheus.Metric) {
	for _, cc := range c.certs() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(cc.NotAfter.Unix()), cc.Name)
	}
}

// registerAll registers every collector, reporting every failure at once.
func registerAll(reg *prometheus.Registry, cs []prometheus.Collector) error {
	var errs []error
	for _, c := range cs {
		errs = append(errs, reg.Register(c))
	}
	return errors.Join(errs...)
}

// handlerFor serves reg in the Prometheus exposition formats, counting its
// own errors on reg.
func handlerFor(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
