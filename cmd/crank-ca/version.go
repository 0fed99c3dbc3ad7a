package main

import (
	"fmt"
	"io"

	"github.com/crank-platform/crank-ca/internal/version"
)

// cmdVersion prints the build: `crank-ca version` and `crank-ca --version`.
// --json prints the fields (version, revision, time, goVersion, platform)
// for scripts.
func cmdVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", stderr)
	asJSON := fs.Bool("json", false, `print {"version","revision","time","goVersion","platform"}`)
	if err := parse(fs, args); err != nil {
		return err
	}
	info := version.Get()
	if *asJSON {
		return printJSON(stdout, info)
	}
	_, err := fmt.Fprintln(stdout, info.Line("crank-ca"))
	return err
}
