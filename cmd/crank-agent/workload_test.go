//go:build unix

package main

import (
	"slices"
	"strings"
	"testing"
)

func TestResolveWorkloadAPI(t *testing.T) {
	t.Parallel()
	const state = "/var/lib/crank/api"
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string // substring of a usage error
		want    *workloadConfig
	}{
		{name: "default", want: &workloadConfig{path: state + "/workload.sock", mode: 0o600}},
		{name: "flag", args: []string{"--workload-api", "unix:///run/crank/agent.sock"},
			want: &workloadConfig{path: "/run/crank/agent.sock", explicit: true, mode: 0o600}},
		{name: "env", env: map[string]string{envWorkloadAPI: "unix:/run/a.sock", envWorkloadAPIMode: "0660"},
			want: &workloadConfig{path: "/run/a.sock", explicit: true, mode: 0o660}},
		{name: "flag beats env", args: []string{"--workload-api", "/run/b.sock"}, env: map[string]string{envWorkloadAPI: "unix:///run/a.sock"},
			want: &workloadConfig{path: "/run/b.sock", explicit: true, mode: 0o600}},
		{name: "off", args: []string{"--workload-api", "off"}},
		{name: "env off", env: map[string]string{envWorkloadAPI: "none"}},
		{name: "once ignores env", args: []string{"--once"}, env: map[string]string{envWorkloadAPI: "unix:///run/a.sock"}},
		{name: "once with the flag", args: []string{"--once", "--workload-api", "unix:///run/a.sock"}, wantErr: "no use with --once"},
		{name: "allow-list", args: []string{"--workload-api-allow", "1001,0,1001"},
			want: &workloadConfig{path: state + "/workload.sock", mode: 0o600, allow: []uint32{0, 1001}}},
		{name: "allow-list by name", args: []string{"--workload-api-allow", "root"},
			want: &workloadConfig{path: state + "/workload.sock", mode: 0o600, allow: []uint32{0}}},
		{name: "world-writable with allow-list", args: []string{"--workload-api-mode", "0666"}, env: map[string]string{envWorkloadAPIAllow: "1000"},
			want: &workloadConfig{path: state + "/workload.sock", mode: 0o666, allow: []uint32{1000}}},
		{name: "world-writable without allow-list", args: []string{"--workload-api-mode", "0666"}, wantErr: "needs --workload-api-allow"},
		{name: "tcp", args: []string{"--workload-api", "tcp://127.0.0.1:1"}, wantErr: "--workload-api"},
		{name: "relative", env: map[string]string{envWorkloadAPI: "agent.sock"}, wantErr: "$" + envWorkloadAPI},
		{name: "bad mode", args: []string{"--workload-api-mode", "0400"}, wantErr: "--workload-api-mode"},
		{name: "bad allow-list", args: []string{"--workload-api-allow", "a:b"}, wantErr: "--workload-api-allow"},
		{name: "unknown user", args: []string{"--workload-api-allow", "no-such-user-crank"}, wantErr: "no-such-user-crank"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o, err := parseArgs(append([]string{"--ca-url", "https://ca:9090", "--worker", "api"}, tt.args...))
			if err != nil {
				t.Fatal(err)
			}
			got, err := resolveWorkloadAPI(o, func(k string) string { return tt.env[k] }, state)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (got == nil) != (tt.want == nil) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			if got != nil && (got.path != tt.want.path || got.explicit != tt.want.explicit || got.mode != tt.want.mode || !slices.Equal(got.allow, tt.want.allow)) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestWithEndpoint(t *testing.T) {
	t.Parallel()
	var off *workloadAPI
	env := []string{"A=1", envSPIFFEEndpoint + "=unix:///old.sock"}
	if got := off.withEndpoint(slices.Clone(env)); !slices.Equal(got, env) {
		t.Errorf("off: %q", got)
	}
	on := &workloadAPI{addr: "unix:///run/a.sock"}
	if got := on.withEndpoint(slices.Clone(env)); !slices.Equal(got, []string{"A=1", envSPIFFEEndpoint + "=unix:///run/a.sock"}) {
		t.Errorf("on: %q", got)
	}
}
