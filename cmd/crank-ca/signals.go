package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/crank-platform/crank-ca/internal/server"
)

// watchHangups starts catching SIGHUP. serve calls it first thing: the
// default action of SIGHUP ends the process, so one that arrives during
// start-up is queued (and then reloads) instead. stop restores the default.
func watchHangups() (hangups <-chan os.Signal, stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	return ch, func() { signal.Stop(ch) }
}

// reloadOnHangup re-reads the configuration file on every SIGHUP until ctx
// is done. Signals arriving during a reload collapse into one more reload.
// The server logs the outcome (what changed, what needs a restart, or every
// problem of a file it refused).
func reloadOnHangup(ctx context.Context, hangups <-chan os.Signal, srv *server.Server, path string) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hangups:
			_, _ = srv.Reload(ctx, path)
		}
	}
}
