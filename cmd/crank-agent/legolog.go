package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	legolog "github.com/go-acme/lego/v4/log"
)

// legoLogger sends the lego library's own log lines (which otherwise go to
// stderr unstructured, breaking --log-format json) through slog: its [INFO]
// chatter at debug level, [WARN] as warnings.
type legoLogger struct{ log *slog.Logger }

// routeLegoLogs installs l as lego's logger. lego has a single global one;
// this is why it is set here, in cmd/, and nowhere else.
func routeLegoLogs(l *slog.Logger) { legolog.Logger = legoLogger{l.With("lib", "lego")} }

func (l legoLogger) emit(msg string) {
	msg = strings.TrimSpace(msg)
	level := slog.LevelDebug
	switch {
	case strings.HasPrefix(msg, "[WARN] "):
		level, msg = slog.LevelWarn, strings.TrimPrefix(msg, "[WARN] ")
	case strings.HasPrefix(msg, "[INFO] "):
		msg = strings.TrimPrefix(msg, "[INFO] ")
	}
	l.log.Log(context.Background(), level, msg)
}

func (l legoLogger) Print(args ...any)                 { l.emit(fmt.Sprint(args...)) }
func (l legoLogger) Println(args ...any)               { l.emit(fmt.Sprintln(args...)) }
func (l legoLogger) Printf(format string, args ...any) { l.emit(fmt.Sprintf(format, args...)) }

func (l legoLogger) Fatal(args ...any)                 { l.fatal(fmt.Sprint(args...)) }
func (l legoLogger) Fatalln(args ...any)               { l.fatal(fmt.Sprintln(args...)) }
func (l legoLogger) Fatalf(format string, args ...any) { l.fatal(fmt.Sprintf(format, args...)) }

func (l legoLogger) fatal(msg string) {
	l.log.Error(strings.TrimSpace(msg))
	os.Exit(1)
}
