package main

import (
	"log/slog"

	legolog "github.com/go-acme/lego/v4/log"

	"github.com/crank-platform/crank-ca/internal/agent"
)

// routeLegoLogs installs l as lego's logger. lego has a single global one;
// this is why it is set here, in cmd/, and nowhere else.
func routeLegoLogs(l *slog.Logger) { legolog.Logger = agent.LegoLogger{Log: l} }
