package main

import (
	"log/slog"
	"sync"

	legolog "github.com/go-acme/lego/v4/log"

	"github.com/crank-platform/crank-ca/internal/agent"
)

// legoLogOnce guards lego's single global logger: a process runs one agent,
// but the command's tests run several at once.
var legoLogOnce sync.Once

// routeLegoLogs installs l as lego's logger, once per process. lego has a
// single global one; this is why it is set here, in cmd/, and nowhere else.
func routeLegoLogs(l *slog.Logger) {
	legoLogOnce.Do(func() { legolog.Logger = agent.LegoLogger{Log: l} })
}
