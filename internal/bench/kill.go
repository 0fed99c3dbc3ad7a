package bench

import (
	"fmt"
	"sync"
	"time"
)

// KillReport is what became of Config.KillPID.
type KillReport struct {
	PID int `json:"pid"`
	// AfterSec is the planned time from the start of the timed phase;
	// AtSec the time the signal was sent (0 if it was not).
	AfterSec float64 `json:"afterSeconds"`
	AtSec    float64 `json:"atSeconds,omitempty"`
	Sent     bool    `json:"sent"`
	// Error is why it was not sent: the run ended first, or the signal
	// failed.
	Error string `json:"error,omitempty"`
}

// killed holds a killed server's counters, read just before the signal:
// afterwards /proc has nothing to read, or a zombie's.
type killed struct {
	cpu   time.Duration
	rss   int64
	cpuOK bool
	rssOK bool
}

// scheduleKill sends Deps.Kill to Config.KillPID KillAfter after m.start,
// unless the returned stop is called (the timed phase ended) or the run's
// context ends first. stop waits for the kill to be over, so that the
// report reads m.kill and m.killed after it.
func (r *runner) scheduleKill(m *measure) (stop func()) {
	if r.cfg.KillPID == 0 {
		return func() {}
	}
	pid := r.cfg.KillPID
	m.kill = &KillReport{PID: pid, AfterSec: r.cfg.KillAfter.Seconds()}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tm := time.NewTimer(time.Until(m.start.Add(r.cfg.KillAfter)))
		defer tm.Stop()
		select {
		case <-quit:
			m.kill.Error = "the timed phase ended before the kill"
			return
		case <-r.ctx.Done():
			m.kill.Error = "the run's timeout came before the kill"
			return
		case <-tm.C:
		}
		k := &killed{}
		if cpu, err := ProcCPU(pid); err == nil {
			k.cpu, k.cpuOK = cpu, true
		}
		if rss, err := PeakRSS(pid); err == nil {
			k.rss, k.rssOK = rss, true
		}
		m.killed = k
		if err := r.deps.Kill(pid); err != nil {
			m.kill.Error = fmt.Sprintf("kill %d: %v", pid, err)
			return
		}
		m.kill.Sent = true
		m.kill.AtSec = time.Since(m.start).Seconds()
		if r.deps.Progress != nil {
			fmt.Fprintf(r.deps.Progress, "crank-bench: killed server pid %d after %.1fs\n", pid, m.kill.AtSec)
		}
	})
	return func() { close(quit); wg.Wait() }
}
