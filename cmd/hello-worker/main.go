// Command hello-worker is the reference Crank worker: it obtains its mTLS
// identity from crank-ca, keeps it rotating, serves a greeting naming the
// caller's SPIFFE ID to authorized peers, and optionally calls a peer.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/crank-platform/crank-ca/internal/version"
)

func main() {
	if version.Requested(os.Args[1:]) {
		fmt.Println(version.Get().Line("hello-worker"))
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv))
}
