package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"time"
)

// Report is the outcome of one run, as crank-bench prints and stores it.
// CPU figures are divided by the successful issuances of the timed phase.
type Report struct {
	Mode Mode `json:"mode"`
	// HTTP01 marks a run against an ordinary ACME provisioner with
	// http-01 validation (Config.HTTP01Addr) instead of worker tokens.
	HTTP01      bool      `json:"http01,omitempty"`
	URL         string    `json:"url"`
	N           int       `json:"n"`
	Concurrency int       `json:"concurrency"`
	Accounts    int       `json:"accounts,omitempty"`
	WindowSec   float64   `json:"windowSeconds,omitempty"`
	Started     time.Time `json:"started"`

	Succeeded int `json:"succeeded"`
	Failed    int `json:"failed"`
	// NotRun counts issuances the timeout cut off or never started.
	NotRun   int  `json:"notRun"`
	TimedOut bool `json:"timedOut"`
	// Failures counts failed issuances by ACME problem type (without the
	// urn:ietf:params:acme:error: prefix) or transport failure;
	// FailureSamples holds the first message of each kind.
	Failures       map[string]int    `json:"failures,omitempty"`
	FailureSamples map[string]string `json:"failureSamples,omitempty"`

	ElapsedSec         float64   `json:"elapsedSeconds"`
	IssuancesPerSecond float64   `json:"issuancesPerSecond"`
	LatencyMS          LatencyMS `json:"latencyMs"`

	ClientCPUMSPerIssuance float64 `json:"clientCpuMsPerIssuance"`
	// Server figures are absent without a server PID (or store path).
	ServerCPUMSPerIssuance *float64 `json:"serverCpuMsPerIssuance,omitempty"`
	ServerPeakRSSBytes     int64    `json:"serverPeakRssBytes,omitempty"`
	StoreBytes             int64    `json:"storeBytes,omitempty"`
	// Warnings are measurements that could not be taken.
	Warnings []string `json:"warnings,omitempty"`
}

// LatencyMS is Latency in milliseconds, for people and JSON readers.
type LatencyMS struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// measure holds the counters read when the timed phase starts.
type measure struct {
	start     time.Time
	clientCPU time.Duration
	serverCPU time.Duration
	serverOK  bool
}

func (r *runner) startMeasure() (measure, error) {
	m := measure{}
	var err error
	if m.clientCPU, err = SelfCPU(); err != nil {
		return m, err
	}
	if r.cfg.ServerPID != 0 {
		if m.serverCPU, err = ProcCPU(r.cfg.ServerPID); err != nil {
			return m, fmt.Errorf("bench: server pid %d: %w", r.cfg.ServerPID, err)
		}
		m.serverOK = true
	}
	m.start = time.Now()
	return m, nil
}

func (r *runner) report(m measure) *Report {
	elapsed := time.Since(m.start)
	rep := &Report{
		Mode: r.cfg.Mode, URL: r.cfg.URL, N: r.cfg.N, Concurrency: r.cfg.Concurrency, Started: m.start.UTC(),
		HTTP01: r.cfg.HTTP01Addr != "",
	}
	switch r.cfg.Mode {
	case ModeRenew:
		rep.Accounts = r.cfg.Accounts
	case ModeStorm:
		rep.WindowSec = r.cfg.Window.Seconds()
	}
	clientCPU, err := SelfCPU()
	if err != nil {
		rep.Warnings = append(rep.Warnings, err.Error())
	}
	r.mu.Lock()
	lat := Summarise(r.latencies)
	rep.Succeeded = len(r.latencies)
	rep.Failures, rep.FailureSamples = r.failures, r.samples
	r.mu.Unlock()
	for _, v := range rep.Failures {
		rep.Failed += v
	}
	rep.NotRun = r.cfg.N - rep.Succeeded - rep.Failed
	rep.TimedOut = r.ctx.Err() != nil
	rep.ElapsedSec = elapsed.Seconds()
	rep.IssuancesPerSecond = Rate(rep.Succeeded, elapsed)
	rep.LatencyMS = LatencyMS{P50: ms(lat.P50), P90: ms(lat.P90), P99: ms(lat.P99), Max: ms(lat.Max)}
	rep.ClientCPUMSPerIssuance = PerOp(clientCPU-m.clientCPU, rep.Succeeded)
	if m.serverOK {
		if cpu, err := ProcCPU(r.cfg.ServerPID); err != nil {
			rep.Warnings = append(rep.Warnings, err.Error())
		} else {
			v := PerOp(cpu-m.serverCPU, rep.Succeeded)
			rep.ServerCPUMSPerIssuance = &v
		}
		if rss, err := PeakRSS(r.cfg.ServerPID); err != nil {
			rep.Warnings = append(rep.Warnings, err.Error())
		} else {
			rep.ServerPeakRSSBytes = rss
		}
	}
	if r.cfg.StorePath != "" {
		if n, err := PathSize(r.cfg.StorePath); err != nil {
			rep.Warnings = append(rep.Warnings, err.Error())
		} else {
			rep.StoreBytes = n
		}
	}
	return rep
}

// WriteText prints the report for people.
func (rep *Report) WriteText(w io.Writer) error {
	var p printer
	p.w = w
	if rep.HTTP01 {
		p.f("http-01 ")
	}
	p.f("%s: %d/%d succeeded, %d failed, %d not run%s, c=%d", rep.Mode, rep.Succeeded, rep.N, rep.Failed, rep.NotRun,
		map[bool]string{true: " (timed out)", false: ""}[rep.TimedOut], rep.Concurrency)
	if rep.Accounts > 0 {
		p.f(", %d accounts", rep.Accounts)
	}
	if rep.WindowSec > 0 {
		p.f(", window %.0fs", rep.WindowSec)
	}
	p.f("\n  %.1f issuances/s over %.2fs; latency p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms\n",
		rep.IssuancesPerSecond, rep.ElapsedSec, rep.LatencyMS.P50, rep.LatencyMS.P90, rep.LatencyMS.P99, rep.LatencyMS.Max)
	p.f("  client CPU %.2f ms/issuance", rep.ClientCPUMSPerIssuance)
	if rep.ServerCPUMSPerIssuance != nil {
		p.f(", server CPU %.2f ms/issuance, server peak RSS %.1f MB", *rep.ServerCPUMSPerIssuance, float64(rep.ServerPeakRSSBytes)/(1<<20))
	}
	if rep.StoreBytes > 0 {
		p.f(", store %.1f MB", float64(rep.StoreBytes)/(1<<20))
	}
	p.f("\n")
	kinds := make([]string, 0, len(rep.Failures))
	for k := range rep.Failures {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		p.f("  failure %s x%d: %s\n", k, rep.Failures[k], rep.FailureSamples[k])
	}
	for _, s := range rep.Warnings {
		p.f("  warning: %s\n", s)
	}
	return p.err
}

type printer struct {
	w   io.Writer
	err error
}

func (p *printer) f(format string, a ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, a...)
	}
}

// WriteJSON writes the report to path as indented JSON.
func (rep *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
