package worker

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"time"

	"github.com/crank-platform/crank-ca/internal/agent"
)

// The TLS handshake checks certificates once; a kept-alive connection would
// otherwise outlive a rotation, an expiry or a revocation. These checks run
// again on every request (server side) and every response (client side).

type connStartKey struct{}

// peerProblem says why a peer's certificate may no longer be trusted, or "".
func peerProblem(leaf *x509.Certificate, a *agent.Agent, now time.Time) string {
	switch {
	case !now.Before(leaf.NotAfter):
		return "certificate expired at " + leaf.NotAfter.UTC().Format(time.RFC3339)
	case a.Revoked(leaf.SerialNumber):
		return "certificate revoked"
	default:
		return ""
	}
}

// recheck refuses requests over connections whose peer certificate has
// since expired or been revoked, refuses to answer with our own expired
// certificate, and closes connections accepted before our last rotation
// after this response, so the peer reconnects and sees the new certificate.
func (w *Worker) recheck(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		now := time.Now()
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			if p := peerProblem(r.TLS.PeerCertificates[0], w.agent, now); p != "" {
				rw.Header().Set("Connection", "close")
				http.Error(rw, "peer "+p+"; reconnect with a current certificate", http.StatusUnauthorized)
				return
			}
		}
		if !now.Before(w.agent.Current().NotAfter()) {
			rw.Header().Set("Connection", "close")
			http.Error(rw, "this worker's certificate has expired; it is renewing", http.StatusServiceUnavailable)
			return
		}
		if started, ok := r.Context().Value(connStartKey{}).(time.Time); ok {
			if rot := w.rotatedAt.Load(); rot != nil && started.Before(*rot) {
				rw.Header().Set("Connection", "close")
			}
		}
		h.ServeHTTP(rw, r)
	})
}

// watchRotations records rotations and drops the idle connections of every
// client handed out (now, and once more a second later for connections
// that were busy), so peers see our new certificate.
func (w *Worker) watchRotations(ctx context.Context) {
	ch := w.agent.Subscribe()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
		now := time.Now()
		w.rotatedAt.Store(&now)
		w.closeIdle()
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
			w.closeIdle()
		}
	}
}

func (w *Worker) closeIdle() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, t := range w.transports {
		t.CloseIdleConnections()
	}
}

// PeerTransport is the transport of Worker.Client: an http.Transport that
// re-checks the server's certificate on every response.
type PeerTransport struct {
	*http.Transport
	agent *agent.Agent
}

// RoundTrip refuses a response from a server whose certificate has expired
// or been revoked since the connection was made, and drops the connection.
func (t *PeerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.Transport.RoundTrip(req)
	if err != nil || resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		return resp, err
	}
	leaf := resp.TLS.PeerCertificates[0]
	if p := peerProblem(leaf, t.agent, time.Now()); p != "" {
		_ = resp.Body.Close()
		t.CloseIdleConnections()
		return nil, fmt.Errorf("worker: server %s: %s", leaf.SerialNumber, p)
	}
	return resp, nil
}
