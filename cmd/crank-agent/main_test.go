//go:build unix

package main

import (
	"bytes"
	"errors"
	"flag"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestParseArgs(t *testing.T) {
	t.Parallel()
	base := []string{"--ca-url", "https://ca:9090", "--worker", "api"}
	tests := []struct {
		name    string
		args    []string
		wantErr string // substring of a usage error; "" for success
		check   func(*testing.T, *options)
	}{
		{name: "daemon defaults", args: base, check: func(t *testing.T, o *options) {
			if o.signal != syscall.SIGHUP || o.once || len(o.command) != 0 || o.provisioner != "workers" || o.logFormat != "text" {
				t.Errorf("%+v", o)
			}
		}},
		{name: "command after --", args: append(slices.Clone(base), "--signal", "usr2", "--", "app", "--flag", "x"), check: func(t *testing.T, o *options) {
			if !slices.Equal(o.command, []string{"app", "--flag", "x"}) || o.signal != syscall.SIGUSR2 {
				t.Errorf("command %q signal %v", o.command, o.signal)
			}
		}},
		{name: "signal none", args: append(slices.Clone(base), "--signal", "none"), check: func(t *testing.T, o *options) {
			if o.signal != nil {
				t.Errorf("signal %v", o.signal)
			}
		}},
		{name: "SIG prefix", args: append(slices.Clone(base), "--signal", "SIGTERM"), check: func(t *testing.T, o *options) {
			if o.signal != syscall.SIGTERM {
				t.Errorf("signal %v", o.signal)
			}
		}},
		{name: "once", args: append(slices.Clone(base), "--once"), check: func(t *testing.T, o *options) {
			if !o.once {
				t.Error("once not set")
			}
		}},
		{name: "once with a command", args: append(slices.Clone(base), "--once", "--", "app"), wantErr: "--once runs no command"},
		{name: "no ca-url", args: []string{"--worker", "api"}, wantErr: "--ca-url is required"},
		{name: "no worker", args: []string{"--ca-url", "https://ca"}, wantErr: "--worker is required"},
		{name: "two token sources", args: append(slices.Clone(base), "--token", "x", "--token-file", "f"), wantErr: "mutually exclusive"},
		{name: "jwt file without a worker", args: []string{"--ca-url", "https://ca", "--jwt-file", "/run/token"}, check: func(t *testing.T, o *options) {
			if o.jwtFile != "/run/token" || o.worker != "" {
				t.Errorf("%+v", o)
			}
		}},
		{name: "jwt file and token", args: append(slices.Clone(base), "--jwt-file", "f", "--token", "x"), wantErr: "--jwt-file and --token/--token-file are mutually exclusive"},
		{name: "jwt file and token file", args: append(slices.Clone(base), "--jwt-file", "f", "--token-file", "x"), wantErr: "--jwt-file and --token/--token-file are mutually exclusive"},
		{name: "unknown signal", args: append(slices.Clone(base), "--signal", "NOPE"), wantErr: "unknown signal"},
		{name: "bad log format", args: append(slices.Clone(base), "--log-format", "xml"), wantErr: "--log-format"},
		{name: "bad log level", args: append(slices.Clone(base), "--log-level", "loud"), wantErr: "--log-level"},
		{name: "unknown flag", args: append(slices.Clone(base), "--nope"), wantErr: "nope"},
		{name: "empty command", args: append(slices.Clone(base), "--"), wantErr: "no command after --"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o, err := parseArgs(tt.args)
			if tt.wantErr != "" {
				if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want a usage error mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, o)
		})
	}
}

func TestRunExitCodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		want     int
		inStderr string
	}{
		{"help", []string{"-h"}, 0, ""},
		{"usage error", []string{"--worker", "api"}, 2, "crank-agent: --ca-url is required"},
		{"invalid worker", []string{"--ca-url", "https://ca", "--worker", "Not_Valid", "--state", "x"}, 2, "not a valid worker name"},
		{"http URL", []string{"--ca-url", "http://ca", "--worker", "api", "--state", "x"}, 2, "https"},
		{"garbage token", []string{"--ca-url", "https://ca", "--worker", "api", "--state", "x", "--token", "garbage"}, 2, "join token"},
		{"missing token file", []string{"--ca-url", "https://ca", "--worker", "api", "--state", "x", "--token-file", "/nonexistent/token"}, 1, "--token-file"},
		{"jwt file without worker or state", []string{"--ca-url", "https://ca", "--jwt-file", "/run/token"}, 2, "--jwt-file without --worker needs --state or $CRANK_STATE_DIR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			if got := run(tt.args, &stdout, &stderr); got != tt.want || !strings.Contains(stderr.String(), tt.inStderr) {
				t.Errorf("run = %d, stderr %q; want %d mentioning %q", got, stderr.String(), tt.want, tt.inStderr)
			}
			if tt.name == "help" && !strings.Contains(stdout.String(), "--once") {
				t.Errorf("help output %q", stdout.String())
			}
		})
	}
	if _, err := parseArgs([]string{"-help"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-help: %v", err)
	}
}

func TestChildEnv(t *testing.T) {
	t.Parallel()
	env := childEnv([]string{"PATH=/bin", "CRANK_TOKEN=secret", "CRANK_CERT_FILE=/old", "HOME=/h"}, "/out", "spiffe://td/worker/api")
	want := []string{
		"PATH=/bin", "HOME=/h",
		"CRANK_CERT_FILE=/out/cert.pem", "CRANK_KEY_FILE=/out/key.pem", "CRANK_CHAIN_FILE=/out/chain.pem",
		"CRANK_ROOT_FILE=/out/root.pem", "CRANK_SPIFFE_ID=spiffe://td/worker/api",
	}
	if !slices.Equal(env, want) {
		t.Errorf("childEnv =\n%q\nwant\n%q", env, want)
	}
}
