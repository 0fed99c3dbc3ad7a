package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strconv"
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
	// ServerCPUMSPerIssuance sums over every server process;
	// ServerPeakRSSBytes is the largest process's. Servers has each one.
	ServerCPUMSPerIssuance *float64      `json:"serverCpuMsPerIssuance,omitempty"`
	ServerPeakRSSBytes     int64         `json:"serverPeakRssBytes,omitempty"`
	Servers                []ServerStats `json:"servers,omitempty"`
	StoreBytes             int64         `json:"storeBytes,omitempty"`
	// DatabaseCPUMSPerIssuance is the CPU of the database's process tree
	// (Config.DatabasePID), shared by every client of the database.
	DatabaseCPUMSPerIssuance *float64 `json:"databaseCpuMsPerIssuance,omitempty"`
	// MachineBusyCores is the machine's busy CPU time over the timed
	// phase divided by its wall time (all cores, /proc/stat);
	// OtherBusyCores is what is left of it after this process, the
	// servers and the database: other load on a shared machine, which
	// makes the run's figures suspect when it is not near 0.
	MachineBusyCores float64 `json:"machineBusyCores"`
	OtherBusyCores   float64 `json:"otherBusyCores"`

	// Replicas counts the requests of the timed phase (set-up included)
	// sent to each server URL. Retries counts requests sent again to the
	// next replica after a connection error; RetriesExhausted those that
	// still failed when the retries ran out.
	Replicas         []ReplicaStats `json:"replicas"`
	Retries          int64          `json:"retries"`
	RetriesExhausted int64          `json:"retriesExhausted"`
	// Reorders counts issuances ordered again after finalize answered
	// orderNotReady (a replayed finalize; see runner.issue).
	Reorders int64 `json:"reorders"`
	// Kill is the SIGKILL of one server (Config.KillPID), Verify the check
	// of the certificates received (Config.Verify).
	Kill   *KillReport   `json:"kill,omitempty"`
	Verify *VerifyReport `json:"verify,omitempty"`
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

// ServerStats are one server process's figures over the timed phase.
type ServerStats struct {
	PID   int     `json:"pid"`
	CPUMS float64 `json:"cpuMs"`
	// PeakRSSBytes is VmHWM: the peak of the process's whole life.
	PeakRSSBytes int64 `json:"peakRssBytes,omitempty"`
	// Killed marks the process of Config.KillPID; its figures were read
	// just before the kill.
	Killed bool `json:"killed,omitempty"`
}

// measure holds the counters read when the timed phase starts, and what
// the kill (scheduleKill) read just before it.
type measure struct {
	start     time.Time
	clientCPU time.Duration
	servers   []serverStart
	dbCPU     time.Duration
	machine   time.Duration
	kill      *KillReport
	killed    *killed
}

type serverStart struct {
	pid int
	cpu time.Duration
}

// serverPIDs are ServerPID and ServerPIDs without zeros and repeats.
func (c *Config) serverPIDs() []int {
	var pids []int
	for _, p := range append([]int{c.ServerPID}, c.ServerPIDs...) {
		if p != 0 && !slices.Contains(pids, p) {
			pids = append(pids, p)
		}
	}
	return pids
}

func (r *runner) startMeasure() (*measure, error) {
	m := &measure{}
	var err error
	if m.clientCPU, err = SelfCPU(); err != nil {
		return nil, err
	}
	if m.machine, err = MachineCPU(); err != nil {
		return nil, err
	}
	for _, pid := range r.cfg.serverPIDs() {
		cpu, err := ProcCPU(pid)
		if err != nil {
			return nil, fmt.Errorf("bench: server pid %d: %w", pid, err)
		}
		m.servers = append(m.servers, serverStart{pid: pid, cpu: cpu})
	}
	if pid := r.cfg.DatabasePID; pid != 0 {
		if m.dbCPU, err = TreeCPU(pid); err != nil {
			return nil, fmt.Errorf("bench: database pid %d: %w", pid, err)
		}
	}
	m.start = time.Now()
	return m, nil
}

func (r *runner) report(m *measure) *Report {
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
	machine, err := MachineCPU()
	if err != nil {
		rep.Warnings = append(rep.Warnings, err.Error())
	}
	// ours is the CPU of the processes measured: this one, the servers,
	// the database.
	ours := clientCPU - m.clientCPU
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
	if len(m.servers) > 0 {
		var total time.Duration
		for _, s := range m.servers {
			st, cpu := r.serverStats(m, s, &rep.Warnings)
			total += cpu
			ours += cpu
			rep.Servers = append(rep.Servers, st)
			rep.ServerPeakRSSBytes = max(rep.ServerPeakRSSBytes, st.PeakRSSBytes)
		}
		v := PerOp(total, rep.Succeeded)
		rep.ServerCPUMSPerIssuance = &v
	}
	if pid := r.cfg.DatabasePID; pid != 0 {
		if cpu, err := TreeCPU(pid); err != nil {
			rep.Warnings = append(rep.Warnings, err.Error())
		} else {
			v := PerOp(cpu-m.dbCPU, rep.Succeeded)
			rep.DatabaseCPUMSPerIssuance = &v
			ours += cpu - m.dbCPU
		}
	}
	if elapsed > 0 && machine > 0 {
		rep.MachineBusyCores = float64(machine-m.machine) / float64(elapsed)
		rep.OtherBusyCores = max(0, float64(machine-m.machine-ours)/float64(elapsed))
	}
	rep.Replicas = r.transport.replicaStats()
	rep.Retries, rep.RetriesExhausted = r.transport.retries.Load(), r.transport.exhausted.Load()
	rep.Reorders = r.reorders.Load()
	rep.Kill = m.kill
	if m.kill != nil && !m.kill.Sent {
		rep.Warnings = append(rep.Warnings, "server pid "+strconv.Itoa(m.kill.PID)+" not killed: "+m.kill.Error)
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

// serverStats reads one server's CPU time and peak RSS at the end of the
// timed phase, or as the kill read them; a figure that cannot be read is a
// warning, and its CPU counts as 0 in the sum.
func (r *runner) serverStats(m *measure, s serverStart, warnings *[]string) (ServerStats, time.Duration) {
	st := ServerStats{PID: s.pid}
	var cpu time.Duration
	if m.kill != nil && m.kill.PID == s.pid && m.killed != nil {
		st.Killed = m.kill.Sent
		if m.killed.cpuOK {
			cpu = m.killed.cpu - s.cpu
		} else {
			*warnings = append(*warnings, fmt.Sprintf("server pid %d: CPU not read before the kill", s.pid))
		}
		st.PeakRSSBytes = m.killed.rss
		st.CPUMS = ms(cpu)
		return st, cpu
	}
	if end, err := ProcCPU(s.pid); err != nil {
		*warnings = append(*warnings, err.Error())
	} else {
		cpu = end - s.cpu
	}
	if rss, err := PeakRSS(s.pid); err != nil {
		*warnings = append(*warnings, err.Error())
	} else {
		st.PeakRSSBytes = rss
	}
	st.CPUMS = ms(cpu)
	return st, cpu
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
	if rep.DatabaseCPUMSPerIssuance != nil {
		p.f(", database CPU %.2f ms/issuance", *rep.DatabaseCPUMSPerIssuance)
	}
	p.f("\n  machine: %.2f cores busy, %.2f of them by processes not measured\n", rep.MachineBusyCores, rep.OtherBusyCores)
	if len(rep.Servers) > 1 {
		p.f("  servers:")
		for _, s := range rep.Servers {
			p.f(" pid %d %.0f ms CPU, peak RSS %.1f MB", s.PID, s.CPUMS, float64(s.PeakRSSBytes)/(1<<20))
			if s.Killed {
				p.f(" (killed)")
			}
			p.f(";")
		}
		p.f("\n")
	}
	if len(rep.Replicas) > 1 || rep.Retries > 0 || rep.RetriesExhausted > 0 || rep.Reorders > 0 {
		p.f("  requests:")
		for _, s := range rep.Replicas {
			p.f(" %s %d (%d connection errors);", s.URL, s.Requests, s.ConnErrors)
		}
		p.f(" retries %d, retries exhausted %d, orders made again after orderNotReady %d\n", rep.Retries, rep.RetriesExhausted, rep.Reorders)
	}
	if k := rep.Kill; k != nil {
		if k.Sent {
			p.f("  killed pid %d at %.1fs\n", k.PID, k.AtSec)
		} else {
			p.f("  pid %d not killed: %s\n", k.PID, k.Error)
		}
	}
	if v := rep.Verify; v != nil {
		if v.Skipped != "" {
			p.f("  certificates not verified: %s\n", v.Skipped)
		} else {
			p.f("  certificates verified: %d checked, %d found, certificates missing: %d, unverified: %d\n",
				v.Checked, v.Found, v.Missing, v.Unverified)
		}
		for _, s := range v.Samples {
			p.f("    %s\n", s)
		}
	}
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
