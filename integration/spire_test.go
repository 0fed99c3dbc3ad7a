package integration

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

var (
	spireOnce sync.Once
	spireBin  string
	spireErr  error
	spireSkip string
)

// spireAgent returns SPIRE's spire-agent CLI: $CRANK_SPIRE_AGENT if set
// (.ci/run builds it first), else what .ci/spire-agent builds from the Go
// module proxy into a cache directory (minutes the first time, instant
// after). It skips the test only when the proxy cannot be reached and
// $CRANK_SPIRE_AGENT is unset.
func spireAgent(t *testing.T) string {
	t.Helper()
	spireOnce.Do(func() {
		if p := os.Getenv("CRANK_SPIRE_AGENT"); p != "" {
			if _, err := os.Stat(p); err != nil {
				spireErr = errors.New("$CRANK_SPIRE_AGENT: " + err.Error())
			}
			spireBin = p
			return
		}
		var stdout, stderr bytes.Buffer
		cmd := exec.Command("bash", "../.ci/spire-agent")
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee) && ee.ExitCode() == 3:
			spireSkip = "the Go module proxy is unreachable, so spire-agent cannot be built (set CRANK_SPIRE_AGENT to a spire-agent binary):\n" + stderr.String()
		case err != nil:
			spireErr = errors.New(".ci/spire-agent: " + err.Error() + "\n" + stderr.String())
		default:
			spireBin = strings.TrimSpace(stdout.String())
		}
	})
	if spireSkip != "" {
		t.Skip(spireSkip)
	}
	if spireErr != nil {
		t.Fatal(spireErr)
	}
	return spireBin
}
