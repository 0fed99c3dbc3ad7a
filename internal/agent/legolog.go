package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// LegoLogger adapts slog to the lego library's logger interface
// (github.com/go-acme/lego/v4/log.StdLogger), whose lines otherwise go to
// stderr unstructured and break JSON logs: its [INFO] chatter at debug
// level, [WARN] as warnings. lego has one global logger, so only cmd/ may
// install it: `legolog.Logger = agent.LegoLogger{Log: logger}`.
type LegoLogger struct{ Log *slog.Logger }

func (l LegoLogger) emit(msg string) {
	msg = strings.TrimSpace(msg)
	level := slog.LevelDebug
	switch {
	case strings.HasPrefix(msg, "[WARN] "):
		level, msg = slog.LevelWarn, strings.TrimPrefix(msg, "[WARN] ")
	case strings.HasPrefix(msg, "[INFO] "):
		msg = strings.TrimPrefix(msg, "[INFO] ")
	}
	l.Log.Log(context.Background(), level, msg, "lib", "lego")
}

func (l LegoLogger) Print(args ...any)                 { l.emit(fmt.Sprint(args...)) }
func (l LegoLogger) Println(args ...any)               { l.emit(fmt.Sprintln(args...)) }
func (l LegoLogger) Printf(format string, args ...any) { l.emit(fmt.Sprintf(format, args...)) }

func (l LegoLogger) Fatal(args ...any)                 { l.fatal(fmt.Sprint(args...)) }
func (l LegoLogger) Fatalln(args ...any)               { l.fatal(fmt.Sprintln(args...)) }
func (l LegoLogger) Fatalf(format string, args ...any) { l.fatal(fmt.Sprintf(format, args...)) }

// fatal honours lego's contract for Fatal (exit), after logging.
func (l LegoLogger) fatal(msg string) {
	l.Log.Error(strings.TrimSpace(msg), "lib", "lego")
	os.Exit(1)
}
