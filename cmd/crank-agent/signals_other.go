//go:build !unix

package main

import (
	"os"
	"syscall"
)

var signalNames = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "TERM": syscall.SIGTERM, "KILL": syscall.SIGKILL,
}

var forwarded = []os.Signal{os.Interrupt, syscall.SIGTERM}
