package adminclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/crank-platform/crank-ca/internal/admin"
)

// The client can download backups.
var _ admin.Backuper = (*Client)(nil)

// Backup downloads a consistent copy of the server's store (GET /backup).
// The caller reads Body to the end and closes it; a copy cut short, by the
// server or the network, ends in an error rather than early, because
// Body must deliver exactly Size bytes. The client's Timeout does not bound
// the whole download (a large store may take longer); it bounds the wait
// for the answer and then every pause in the transfer, and ctx bounds the
// rest.
func (c *Client) Backup(ctx context.Context) (admin.Backup, error) {
	target := c.base.String() + admin.BackupPath
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		cancel()
		return admin.Backup{}, fmt.Errorf("adminclient: %w", err)
	}
	req.Header.Set("Accept", "application/octet-stream, application/problem+json")
	req.Header.Set("User-Agent", "crank-ca-adminclient")
	idle := c.hc.Timeout
	watch := newIdleWatch(idle, cancel)
	hc := &http.Client{Transport: c.tr, CheckRedirect: c.hc.CheckRedirect}
	resp, err := hc.Do(req)
	if err != nil {
		watch.stop()
		cancel()
		if watch.fired() {
			return admin.Backup{}, fmt.Errorf("GET %s: no answer within %s", target, idle)
		}
		return admin.Backup{}, classify(http.MethodGet, target, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer cancel()
		defer watch.stop()
		defer resp.Body.Close()
		data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
		if err != nil {
			return admin.Backup{}, fmt.Errorf("GET %s: reading the response: %w", target, err)
		}
		return admin.Backup{}, problemFrom(resp, data)
	}
	if resp.ContentLength < 0 {
		watch.stop()
		cancel()
		resp.Body.Close()
		return admin.Backup{}, fmt.Errorf("GET %s: the answer has no Content-Length; cannot tell a complete backup from a partial one", target)
	}
	if !watch.kick() {
		cancel()
		resp.Body.Close()
		return admin.Backup{}, fmt.Errorf("GET %s: no answer within %s", target, idle)
	}
	return admin.Backup{Size: resp.ContentLength, Body: &backupBody{rc: resp.Body, watch: watch, cancel: cancel, target: target}}, nil
}

// idleWatch cancels a download that makes no progress for idle.
type idleWatch struct {
	idle  time.Duration
	mu    sync.Mutex
	timer *time.Timer
	fire  bool
}

func newIdleWatch(idle time.Duration, cancel context.CancelFunc) *idleWatch {
	w := &idleWatch{idle: idle}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.timer = time.AfterFunc(idle, func() {
		w.mu.Lock()
		w.fire = true
		w.mu.Unlock()
		cancel()
	})
	return w
}

// kick restarts the countdown after progress. It reports false once the
// countdown has run out.
func (w *idleWatch) kick() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fire {
		return false
	}
	w.timer.Reset(w.idle)
	return true
}

func (w *idleWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.timer.Stop()
}

func (w *idleWatch) fired() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fire
}

// backupBody is a download in progress.
type backupBody struct {
	rc     io.ReadCloser
	watch  *idleWatch
	cancel context.CancelFunc
	target string
}

func (b *backupBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 && !b.watch.kick() {
		return n, fmt.Errorf("GET %s: the transfer stalled for %s", b.target, b.watch.idle)
	}
	if err != nil && !errors.Is(err, io.EOF) && b.watch.fired() {
		return n, fmt.Errorf("GET %s: the transfer stalled for %s", b.target, b.watch.idle)
	}
	return n, err
}

func (b *backupBody) Close() error {
	b.watch.stop()
	b.cancel()
	return b.rc.Close()
}
