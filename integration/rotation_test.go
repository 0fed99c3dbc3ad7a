package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/internal/agent"
	"github.com/crank-platform/crank-ca/internal/worker"
	"github.com/crank-platform/crank-ca/internal/workertls"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// runWorker starts an in-process hello-worker against c and serves until the
// test ends.
func (c *ca) runWorker(t *testing.T, name string, logs *syncBuffer, opts ...func(*worker.Config)) *worker.Worker {
	t.Helper()
	cfg := worker.Config{
		Agent: agent.Config{
			CAURL: c.url, Fingerprint: c.fingerprint(), Token: c.token(name).Encode(), Worker: name,
			StateDir: filepath.Join(t.TempDir(), name), RetryMin: 200 * time.Millisecond, RetryMax: 2 * time.Second, HTTPTimeout: 5 * time.Second,
			CRLInterval: time.Second,
		},
		Listen: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	}
	for _, o := range opts {
		o(&cfg)
	}
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := w.Start(t.Context()); err != nil {
		t.Fatalf("start %s: %v\n%s", name, err, logs.String())
	}
	t.Logf("%s: start to ready mTLS listener: %s", name, time.Since(start))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Serve(ctx, w.Hello()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve %s: %v", name, err)
		}
	})
	return w
}

// callLog records what one worker saw calling the other.
type callLog struct {
	mu            sync.Mutex
	calls, failed int
	peerSerials   map[string]bool // server certificates presented to us
	ourSerials    map[string]bool // our certificates the peer saw
	problems      []string
}

func (l *callLog) fail(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failed++
	if len(l.problems) < 10 {
		l.problems = append(l.problems, fmt.Sprintf(format, args...))
	}
}

// TestRotationUnderLoad: two hello-workers with one-minute certificates call
// each other continuously through at least three rotations each. Every
// request must succeed, every rotation must be seen by the peer, and no
// certificate may be presented after its notAfter.
func TestRotationUnderLoad(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs through three one-minute certificate rotations")
	}
	const life = time.Minute
	c := newCA(t, shortLived(life))
	c.start()
	var logs syncBuffer
	alpha, beta := c.runWorker(t, "alpha", &logs), c.runWorker(t, "beta", &logs)

	// Certificates each agent ever held, by serial, to check the ones the
	// peer reports against their notAfter.
	var issuedMu sync.Mutex
	issued := map[string]time.Time{}
	track := func(w *worker.Worker) {
		ch := w.Agent().Subscribe()
		record := func() {
			id := w.Agent().Current()
			issuedMu.Lock()
			issued[id.Serial()] = id.NotAfter()
			issuedMu.Unlock()
		}
		record()
		go func() {
			for range ch {
				record()
			}
		}()
	}
	track(alpha)
	track(beta)

	call := func(from, to *worker.Worker, toID spiffeid.ID, l *callLog, stop <-chan struct{}, wg *sync.WaitGroup) {
		defer wg.Done()
		// Keep-alive connections: the runtime closes them after a rotation
		// so that every new certificate shows on the wire.
		client := from.Client(workertls.AuthorizeID(toID))
		url := "https://" + to.Addr().String() + "/"
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			at := time.Now()
			resp, err := client.Get(url)
			if err != nil {
				l.fail("%s: %v", at.Format(time.RFC3339Nano), err)
				continue
			}
			var g worker.Greeting
			err = json.NewDecoder(resp.Body).Decode(&g)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK {
				l.fail("status %d: %v", resp.StatusCode, err)
				continue
			}
			srv := resp.TLS.PeerCertificates[0]
			issuedMu.Lock()
			ourNotAfter, known := issued[g.CallerSerial]
			issuedMu.Unlock()
			switch {
			case !at.Before(srv.NotAfter):
				l.fail("server presented %s expired at %s", srv.SerialNumber, srv.NotAfter)
			case known && !at.Before(ourNotAfter):
				l.fail("we presented %s expired at %s", g.CallerSerial, ourNotAfter)
			}
			l.mu.Lock()
			l.calls++
			l.peerSerials[srv.SerialNumber.String()] = true
			l.ourSerials[g.CallerSerial] = true
			l.mu.Unlock()
		}
	}
	ab := &callLog{peerSerials: map[string]bool{}, ourSerials: map[string]bool{}}
	ba := &callLog{peerSerials: map[string]bool{}, ourSerials: map[string]bool{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go call(alpha, beta, beta.Agent().Current().SPIFFEID, ab, stop, &wg)
	go call(beta, alpha, alpha.Agent().Current().SPIFFEID, ba, stop, &wg)

	// Three rotations each = four certificates seen by the peer.
	start := time.Now()
	deadline := start.Add(4 * life)
	for {
		ab.mu.Lock()
		ba.mu.Lock()
		doneA, doneB := len(ba.peerSerials) >= 4 && len(ab.ourSerials) >= 4, len(ab.peerSerials) >= 4 && len(ba.ourSerials) >= 4
		ab.mu.Unlock()
		ba.mu.Unlock()
		if doneA && doneB {
			break
		}
		if time.Now().After(deadline) {
			close(stop)
			wg.Wait()
			t.Fatalf("fewer than three rotations each within %s: alpha certs seen %d, beta certs seen %d\n%s", 4*life, len(ba.peerSerials), len(ab.peerSerials), logs.String())
		}
		time.Sleep(250 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("after %s: alpha->beta %d calls, %d failed, beta certificates seen %d; beta->alpha %d calls, %d failed, alpha certificates seen %d",
		time.Since(start).Round(time.Second), ab.calls, ab.failed, len(ab.peerSerials), ba.calls, ba.failed, len(ba.peerSerials))
	if ab.failed+ba.failed > 0 {
		t.Errorf("failed requests during rotation: %d + %d: %v %v", ab.failed, ba.failed, ab.problems, ba.problems)
	}
}
