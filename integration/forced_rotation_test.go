package integration

import (
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/worker"
	"github.com/crank-platform/crank-ca/internal/workertls"
)

// TestForcedRotation: a running hello-worker pair with four-minute
// certificates follows ARI; `rotate --all` through the admin API moves their
// windows to now and both rotate within one Retry-After, with zero failed
// requests between them.
func TestForcedRotation(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("waits for ARI-driven rotation")
	}
	const life = 4 * time.Minute // Retry-After = life/20 = 12s
	retryAfter := life / 20
	c := newCA(t, shortLived(life))
	c.start()
	var logs syncBuffer
	alpha, beta := c.runWorker(t, "alpha", &logs), c.runWorker(t, "beta", &logs)
	rotA, rotB := alpha.Agent().Subscribe(), beta.Agent().Subscribe()
	serialA, serialB := alpha.Agent().Current().Serial(), beta.Agent().Current().Serial()

	// Both call each other continuously meanwhile.
	var failed, calls atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range [][2]*worker.Worker{{alpha, beta}, {beta, alpha}} {
		wg.Add(1)
		go func(from, to *worker.Worker) {
			defer wg.Done()
			cl := from.Client(workertls.AuthorizeID(to.Agent().Current().SPIFFEID))
			for {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				resp, err := cl.Get("https://" + to.Addr().String() + "/")
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					continue
				}
				var g worker.Greeting
				if json.NewDecoder(resp.Body).Decode(&g) != nil || resp.StatusCode != http.StatusOK {
					failed.Add(1)
				}
				resp.Body.Close()
			}
		}(p[0], p[1])
	}
	// Let the agents settle on their first ARI answer (a window minutes away).
	time.Sleep(2 * time.Second)

	var res admin.RotateResult
	if st := c.admin(t, http.MethodPost, "/rotate", admin.RotateRequest{All: true}, &res); st != http.StatusOK || len(res.Rotated) != 2 {
		t.Fatalf("rotate: %d %+v", st, res)
	}
	rotated := time.Now()
	deadline := rotated.Add(retryAfter + 2*time.Second) // one Retry-After plus the renewal itself
	var lastRotated time.Time
	for _, ch := range []<-chan struct{}{rotA, rotB} {
		select {
		case <-ch:
			lastRotated = time.Now()
		case <-time.After(time.Until(deadline)):
			t.Fatalf("a worker did not rotate within one Retry-After (%s)\n%s", retryAfter, logs.String())
		}
	}
	close(stop)
	wg.Wait()
	if alpha.Agent().Current().Serial() == serialA || beta.Agent().Current().Serial() == serialB {
		t.Error("serials did not change")
	}
	t.Logf("rotate to last worker rotated: %s (Retry-After %s); %d calls, %d failed", lastRotated.Sub(rotated).Round(time.Millisecond), retryAfter, calls.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Errorf("%d failed requests during forced rotation", failed.Load())
	}
}
