//go:build unix

package main

import (
	"os"
	"syscall"
)

// signalNames are the signals --signal accepts, by name without "SIG".
var signalNames = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM,
	"WINCH": syscall.SIGWINCH, "ALRM": syscall.SIGALRM, "CONT": syscall.SIGCONT,
	"KILL": syscall.SIGKILL,
}

// forwarded are the signals crank-agent passes on to its child instead of
// acting on them: it stays out of the way of whatever the child's own
// supervisor or operator sends.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}
