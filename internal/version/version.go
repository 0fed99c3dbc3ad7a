package version

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// Stamp is the release version, set only by the linker:
//
//	go build -ldflags "-X github.com/crank-platform/crank-ca/internal/version.Stamp=v1.2.0" ./cmd/...
//
// `make release` sets it to `git describe --always --dirty`. It is the one
// package-level variable of the project that is not a constant, as an
// exception to the rule against package-level mutable state: the linker
// writes it before the program starts and no code ever assigns it, so it is
// a constant of the build rather than state. Empty in ordinary builds,
// which fall back to the build information.
var Stamp string

// devel is the module version of a build that has neither a stamp nor a
// version from the toolchain (a test binary, `go run`).
const devel = "(devel)"

// Info describes one build.
type Info struct {
	// Version is Stamp if set, else the main module's version as the
	// toolchain recorded it (a tag, or a pseudo-version derived from the
	// commit with "+dirty" for a modified work tree), else "(devel)".
	Version string `json:"version"`
	// Revision is the VCS commit the binary was built from, with "-dirty"
	// appended when the work tree had uncommitted changes; empty when the
	// build carried no VCS information (-buildvcs=false, not a checkout).
	Revision string `json:"revision,omitempty"`
	// Time is the commit time (RFC 3339), when known.
	Time string `json:"time,omitempty"`
	// GoVersion is the toolchain that built the binary, e.g. "go1.26.8".
	GoVersion string `json:"goVersion"`
	// Platform is GOOS/GOARCH of the binary.
	Platform string `json:"platform"`
}

// Get returns the running binary's Info.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return FromBuildInfo(Stamp, bi)
}

// FromBuildInfo builds an Info from a stamp and build information (nil when
// the binary has none). Get uses it with the running binary's; it is
// exported so that a test can feed it any build.
func FromBuildInfo(stamp string, bi *debug.BuildInfo) Info {
	info := Info{
		Version:   devel,
		GoVersion: runtime.Version(),
		Platform:  runtime.GOOS + "/" + runtime.GOARCH,
	}
	if bi != nil {
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
		if v := bi.Main.Version; v != "" {
			info.Version = v
		}
		var goos, goarch string
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Revision = s.Value
			case "vcs.time":
				info.Time = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			case "GOOS":
				goos = s.Value
			case "GOARCH":
				goarch = s.Value
			}
		}
		if info.Revision != "" && modified {
			info.Revision += "-dirty"
		}
		if goos != "" && goarch != "" {
			info.Platform = goos + "/" + goarch
		}
	}
	if stamp = strings.TrimSpace(stamp); stamp != "" {
		info.Version = stamp
	}
	return info
}

// Short is the version and the commit, for /health: enough to tell which
// build answers, without the toolchain details.
func (i Info) Short() string {
	if i.Revision == "" {
		return i.Version
	}
	return i.Version + " (commit " + i.Revision + ")"
}

// String is the whole description, as --version prints it after the
// program's name:
//
//	v1.2.0 (commit 0f3bed4c...-dirty, 2026-11-30T12:00:00Z, go1.26.8, linux/amd64)
func (i Info) String() string {
	parts := make([]string, 0, 4)
	if i.Revision != "" {
		parts = append(parts, "commit "+i.Revision)
	}
	if i.Time != "" {
		parts = append(parts, i.Time)
	}
	parts = append(parts, i.GoVersion, i.Platform)
	return i.Version + " (" + strings.Join(parts, ", ") + ")"
}

// Line is what `PROGRAM --version` prints: the program's name and String.
func (i Info) Line(program string) string { return program + " " + i.String() }

// Requested reports whether a command line asks for the version: its
// first argument is -version or --version. The programs check it before
// their own flag parsing, so that --version works without the flags a run
// requires; only the first argument counts, because further on a
// "--version" may be a flag value or belong to the command crank-agent
// supervises.
func Requested(args []string) bool {
	return len(args) > 0 && (args[0] == "--version" || args[0] == "-version")
}
