package stepca

import (
	"context"
	"fmt"
	"time"

	"github.com/smallstep/nosql/database"
)

// readyPingTimeout bounds the PostgreSQL ping of Ready: a readiness probe
// that waits as long as a request would tells a load balancer nothing.
const readyPingTimeout = 2 * time.Second

// readyProbeTable and readyProbeKey name a read that touches the store but
// never finds anything: smallstep creates the nonces table at start-up and
// never writes a key of this shape (nonces are random base64url).
var (
	readyProbeTable = []byte("nonces")
	readyProbeKey   = []byte("crank-ca readiness probe")
)

// Ready reports whether the store answers, so that a load balancer can take
// a replica whose database is gone out of rotation and the ACME routes can
// say "retry later" instead of a bare 500. It pings the PostgreSQL
// connection (when there is one) within a short timeout, then reads a key
// that does not exist through the same nosql handle smallstep uses: "not
// found" means healthy. The nosql read takes no context; on PostgreSQL the
// ping in front of it fails fast when the server is gone, and callers that
// must not block (the HTTP readiness cache) bound their own wait.
func (c *CA) Ready(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, readyPingTimeout)
	err := c.data.ping(pctx)
	cancel()
	if err != nil {
		return fmt.Errorf("store: ping: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if _, err := c.nosql.Get(readyProbeTable, readyProbeKey); err != nil && !database.IsErrNotFound(err) {
		return fmt.Errorf("store: read: %w", err)
	}
	return nil
}

// StoreFailedSince reports whether the store's connection failed or broke
// at or after t (PostgreSQL; always false for bbolt). The degraded mode
// uses it beside a fresh probe: a failover can finish between a request's
// failure and the probe that would explain it.
func (c *CA) StoreFailedSince(t time.Time) bool {
	return c.data.failedSince != nil && c.data.failedSince(t)
}
