package metrics

import (
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// AgentConfig configures crank-agent's metrics.
type AgentConfig struct {
	// NotAfter returns the expiry of the certificate the agent serves now;
	// ok is false before it has one. Read on every scrape.
	NotAfter func() (notAfter time.Time, ok bool)
	// NextRenewal returns when the agent plans its next renewal attempt
	// (zero: none planned yet). nil exports no such gauge.
	NextRenewal func() time.Time
}

// Agent holds crank-agent's metrics on a registry of their own. Its
// Renewal and RenewalInfoPolled methods are the agent's observer.
type Agent struct {
	reg      *prometheus.Registry
	renewals prometheus.Counter
	failures prometheus.Counter
	// lastPoll is the Unix time of the last answered renewalInfo poll, 0
	// before the first.
	lastPoll atomic.Int64
}

// NewAgent builds the metrics and registers them, with the Go runtime and
// process collectors, on a new registry.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if cfg.NotAfter == nil {
		return nil, errors.New("metrics: AgentConfig.NotAfter is required")
	}
	m := &Agent{
		reg: prometheus.NewRegistry(),
		renewals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "crank_agent_renewals_total",
			Help: "Successful certificate renewals.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "crank_agent_renewal_failures_total",
			Help: "Failed renewal attempts (the current certificate stays in service).",
		}),
	}
	cs := []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.renewals, m.failures,
		&funcCollector{
			desc: prometheus.NewDesc("crank_agent_certificate_not_after_timestamp_seconds",
				"Expiry (notAfter, Unix seconds) of the certificate the agent serves.", nil, nil),
			value: func() (float64, bool) {
				t, ok := cfg.NotAfter()
				return float64(t.Unix()), ok
			},
		},
		&funcCollector{
			desc: prometheus.NewDesc("crank_agent_last_renewal_info_poll_timestamp_seconds",
				"When the CA last answered the agent's ARI renewalInfo poll (Unix seconds).", nil, nil),
			value: func() (float64, bool) {
				t := m.lastPoll.Load()
				return float64(t), t != 0
			},
		},
	}
	if cfg.NextRenewal != nil {
		cs = append(cs, &funcCollector{
			desc: prometheus.NewDesc("crank_agent_next_renewal_timestamp_seconds",
				"When the agent plans its next renewal attempt or renewalInfo poll (Unix seconds).", nil, nil),
			value: func() (float64, bool) {
				t := cfg.NextRenewal()
				return float64(t.Unix()), !t.IsZero()
			},
		})
	}
	if err := registerAll(m.reg, cs); err != nil {
		return nil, err
	}
	return m, nil
}

// Registry is the registry the metrics are on (tests gather from it).
func (m *Agent) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus exposition formats.
func (m *Agent) Handler() http.Handler {
	return handlerFor(m.reg)
}

// Renewal records one renewal attempt; err is nil on success.
func (m *Agent) Renewal(err error) {
	if err != nil {
		m.failures.Inc()
		return
	}
	m.renewals.Inc()
}

// RenewalInfoPolled records an answered renewalInfo poll.
func (m *Agent) RenewalInfoPolled(at time.Time) { m.lastPoll.Store(at.Unix()) }

// funcCollector exports one gauge read on scrape; a value that is not ok
// is left out rather than exported as zero (a zero expiry would fire every
// alert).
type funcCollector struct {
	desc  *prometheus.Desc
	value func() (float64, bool)
}

func (c *funcCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *funcCollector) Collect(ch chan<- prometheus.Metric) {
	if v, ok := c.value(); ok {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v)
	}
}
