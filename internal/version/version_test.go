package version_test

import (
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/crank-platform/crank-ca/internal/version"
)

func TestFromBuildInfo(t *testing.T) {
	t.Parallel()
	vcs := func(modified string) *debug.BuildInfo {
		return &debug.BuildInfo{
			GoVersion: "go1.26.8",
			Main:      debug.Module{Path: "github.com/crank-platform/crank-ca", Version: "v0.0.0-20261130120000-0f3bed4c2a1b+dirty"},
			Settings: []debug.BuildSetting{
				{Key: "GOOS", Value: "linux"},
				{Key: "GOARCH", Value: "arm64"},
				{Key: "vcs", Value: "git"},
				{Key: "vcs.revision", Value: "0f3bed4c2a1b3c4d5e6f708192a3b4c5d6e7f809"},
				{Key: "vcs.time", Value: "2026-11-30T12:00:00Z"},
				{Key: "vcs.modified", Value: modified},
			},
		}
	}
	tests := []struct {
		name      string
		stamp     string
		bi        *debug.BuildInfo
		want      version.Info
		wantShort string
		wantLine  string
	}{
		{
			name:      "git checkout with changes",
			bi:        vcs("true"),
			want:      version.Info{Version: "v0.0.0-20261130120000-0f3bed4c2a1b+dirty", Revision: "0f3bed4c2a1b3c4d5e6f708192a3b4c5d6e7f809-dirty", Time: "2026-11-30T12:00:00Z", GoVersion: "go1.26.8", Platform: "linux/arm64"},
			wantShort: "v0.0.0-20261130120000-0f3bed4c2a1b+dirty (commit 0f3bed4c2a1b3c4d5e6f708192a3b4c5d6e7f809-dirty)",
			wantLine:  "crank-ca v0.0.0-20261130120000-0f3bed4c2a1b+dirty (commit 0f3bed4c2a1b3c4d5e6f708192a3b4c5d6e7f809-dirty, 2026-11-30T12:00:00Z, go1.26.8, linux/arm64)",
		},
		{
			name:      "clean checkout, release stamp wins",
			stamp:     "v1.2.0\n",
			bi:        vcs("false"),
			want:      version.Info{Version: "v1.2.0", Revision: "0f3bed4c2a1b3c4d5e6f708192a3b4c5d6e7f809", Time: "2026-11-30T12:00:00Z", GoVersion: "go1.26.8", Platform: "linux/arm64"},
			wantShort: "v1.2.0 (commit 0f3bed4c2a1b3c4d5e6f708192a3b4c5d6e7f809)",
			wantLine:  "crank-ca v1.2.0 (commit 0f3bed4c2a1b3c4d5e6f708192a3b4c5d6e7f809, 2026-11-30T12:00:00Z, go1.26.8, linux/arm64)",
		},
		{
			name:      "no VCS information",
			bi:        &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/crank-platform/crank-ca"}},
			want:      version.Info{Version: "(devel)", GoVersion: "go1.26.8", Platform: runtime.GOOS + "/" + runtime.GOARCH},
			wantShort: "(devel)",
			wantLine:  "crank-ca (devel) (go1.26.8, " + runtime.GOOS + "/" + runtime.GOARCH + ")",
		},
		{
			name:      "no build information at all",
			stamp:     "v2.0.0-rc1",
			want:      version.Info{Version: "v2.0.0-rc1", GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH},
			wantShort: "v2.0.0-rc1",
			wantLine:  "crank-ca v2.0.0-rc1 (" + runtime.Version() + ", " + runtime.GOOS + "/" + runtime.GOARCH + ")",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := version.FromBuildInfo(tc.stamp, tc.bi)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("FromBuildInfo (-want +got):\n%s", diff)
			}
			if s := got.Short(); s != tc.wantShort {
				t.Errorf("Short() = %q, want %q", s, tc.wantShort)
			}
			if l := got.Line("crank-ca"); l != tc.wantLine {
				t.Errorf("Line() = %q, want %q", l, tc.wantLine)
			}
		})
	}
}

func TestGetIsThisBinary(t *testing.T) {
	t.Parallel()
	got := version.Get()
	if got.GoVersion != runtime.Version() {
		t.Errorf("GoVersion = %q, want %q", got.GoVersion, runtime.Version())
	}
	if got.Version == "" {
		t.Error("Version is empty")
	}
}

func TestRequested(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"--version"}, true},
		{[]string{"-version"}, true},
		{[]string{"--version", "--worker", "x"}, true},
		{[]string{"--worker", "x", "--", "prog", "--version"}, false},
		{[]string{"--token", "--version"}, false},
		{[]string{"version"}, false},
		{[]string{"--versions"}, false},
	}
	for _, tc := range tests {
		if got := version.Requested(tc.args); got != tc.want {
			t.Errorf("Requested(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}
