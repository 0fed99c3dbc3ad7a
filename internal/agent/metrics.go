package agent

import "time"

// Observer hears of the agent's renewal attempts and of the CA's answers
// to its renewalInfo polls; crank-agent's metrics implement it. Its methods
// are called on the agent's goroutines and must not block.
type Observer interface {
	// Renewal reports one renewal attempt: err is nil on success.
	Renewal(err error)
	// RenewalInfoPolled reports that the CA answered a renewalInfo poll.
	RenewalInfoPolled(at time.Time)
}

// renewalDone records the outcome of a renewal attempt: LastError, and
// the observer.
func (a *Agent) renewalDone(err error) {
	a.setLastError(err)
	if o := a.cfg.Observer; o != nil {
		o.Renewal(err)
	}
}

// renewalInfoPolled tells the observer that the CA answered renewalInfo.
func (a *Agent) renewalInfoPolled() {
	if o := a.cfg.Observer; o != nil {
		o.RenewalInfoPolled(a.now())
	}
}
