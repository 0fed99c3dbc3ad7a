package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/crank-platform/crank-ca/internal/agent"
	"github.com/crank-platform/crank-ca/internal/metrics"
)

// envMetricsListen is the environment's --metrics-listen.
const envMetricsListen = "CRANK_METRICS_LISTEN"

// agentMetrics serves crank-agent's metrics (--metrics-listen). A nil
// *agentMetrics means they are off; its methods are then no-ops.
type agentMetrics struct {
	m      *metrics.Agent
	agent  atomic.Pointer[agent.Agent]
	cancel context.CancelFunc
	done   chan struct{}
}

// startMetrics binds --metrics-listen (else $CRANK_METRICS_LISTEN) and
// serves the metrics until stop; it returns nil when neither is set. With
// --once there is nothing to watch: the flag is a usage error there, the
// variable (often set for a whole container) is ignored. Port 0 picks a
// free port; the log names it.
func startMetrics(o *options, getenv func(string) string, log *slog.Logger) (*agentMetrics, error) {
	addr, what := o.metricsListen, "--metrics-listen"
	if addr == "" {
		addr, what = getenv(envMetricsListen), "$"+envMetricsListen
		if o.once {
			return nil, nil
		}
	}
	if addr == "" {
		return nil, nil
	}
	if o.once {
		return nil, usageErr("--metrics-listen has no use with --once (crank-agent exits at once)")
	}
	host, port, err := net.SplitHostPort(addr)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
		return nil, usageErr("%s %q: want host:port such as 127.0.0.1:9102", what, addr)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "tcp", net.JoinHostPort(host, port))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	am := &agentMetrics{done: make(chan struct{})}
	am.m, err = metrics.NewAgent(metrics.AgentConfig{NotAfter: am.notAfter, NextRenewal: am.nextRenewal})
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	am.cancel = cancel
	log.Info("metrics serving", "addr", ln.Addr().String(), "path", metrics.Path)
	go func() {
		defer close(am.done)
		if err := metrics.Serve(ctx, ln, am.m.Handler()); err != nil {
			log.Error("metrics listener failed", "err", err)
		}
	}()
	return am, nil
}

// observer is the agent's Observer (nil when metrics are off).
func (am *agentMetrics) observer() agent.Observer {
	if am == nil {
		return nil
	}
	return am.m
}

// attach makes the agent's certificate and plan visible to scrapes.
func (am *agentMetrics) attach(a *agent.Agent) {
	if am != nil {
		am.agent.Store(a)
	}
}

// stop shuts the listener down and waits for it.
func (am *agentMetrics) stop() {
	if am == nil {
		return
	}
	am.cancel()
	<-am.done
}

func (am *agentMetrics) notAfter() (time.Time, bool) {
	a := am.agent.Load()
	if a == nil {
		return time.Time{}, false
	}
	id := a.Current()
	if id == nil {
		return time.Time{}, false
	}
	return id.NotAfter(), true
}

func (am *agentMetrics) nextRenewal() time.Time {
	if a := am.agent.Load(); a != nil {
		return a.NextRenewal()
	}
	return time.Time{}
}
