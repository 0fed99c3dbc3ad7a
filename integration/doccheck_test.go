package integration

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// This file reads examples out of the documentation so that tests run them
// as written. An example is a fenced code block preceded by a marker line,
// an HTML comment that Markdown renderers do not show:
//
//	<!-- quickstart -->           a shell step of the README's quick start
//	<!-- quickstart:file NAME --> a file the quick start saves as NAME
//	<!-- quickstart:output -->    what the step before prints (lines in order; others may come between)
//	<!-- doccheck NAME -->        "$ command" lines, each followed by its output (exactly)
//	<!-- doccheck NAME numbers --> the same, any number matching any other (sizes, counts)
//	<!-- doccheck-log NAME -->    log lines: messages and field names are checked; other lines as text
//	<!-- doccheck-run NAME -->    a shell block that a named test runs
//
// Outputs are compared after normalize: values that change from run to run
// (times, serials, keys, tokens, IDs) are replaced by placeholders, so what
// is checked is the shape: line prefixes, field names, messages, columns.

// docBlock is one marked code block of a Markdown file.
type docBlock struct {
	File   string   // path as given to docBlocks
	Line   int      // line of the marker, 1-based
	Marker string   // the marker's first word: quickstart, quickstart:output, doccheck, ...
	Arg    string   // the marker's second word: a file or example name
	Flags  []string // further words of the marker
	Body   string   // the block's content, ending in a newline
}

func (b docBlock) String() string {
	return fmt.Sprintf("%s:%d (%s %s)", b.File, b.Line, b.Marker, b.Arg)
}

var markerRE = regexp.MustCompile(`^<!--\s*((?:quickstart|doccheck)\S*)(?:\s+(.*?))?\s*-->$`)

// docBlocks returns the marked code blocks of path in order.
func docBlocks(t *testing.T, path string) []docBlock {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		blocks  []docBlock
		pending *docBlock
		inFence bool
		cur     strings.Builder
	)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case inFence && strings.HasPrefix(line, "```"):
			inFence = false
			if pending != nil {
				pending.Body = cur.String()
				blocks = append(blocks, *pending)
				pending = nil
			}
		case inFence:
			cur.WriteString(line + "\n")
		case strings.HasPrefix(line, "```"):
			inFence = true
			cur.Reset()
		case markerRE.MatchString(strings.TrimSpace(line)):
			if pending != nil {
				t.Fatalf("%s:%d: marker not followed by a code block", path, pending.Line)
			}
			m := markerRE.FindStringSubmatch(strings.TrimSpace(line))
			words := strings.Fields(m[2])
			pending = &docBlock{File: path, Line: n, Marker: m[1]}
			if len(words) > 0 {
				pending.Arg, pending.Flags = words[0], words[1:]
			}
		case pending != nil && strings.TrimSpace(line) != "":
			t.Fatalf("%s:%d: marker not followed by a code block", path, pending.Line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if pending != nil {
		t.Fatalf("%s:%d: marker not followed by a code block", path, pending.Line)
	}
	return blocks
}

var (
	// An RFC 3339 time, with or without fractional seconds.
	timeRE = regexp.MustCompile(`\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})`)
	// A run of 20 or more characters of base64url, decimal or hex: serials,
	// account and order IDs, HMAC keys, token parts, fingerprints.
	valueRE = regexp.MustCompile(`[A-Za-z0-9_-]{20,}`)
	spaceRE = regexp.MustCompile(`\s+`)
	digitRE = regexp.MustCompile(`[0-9]+`)
)

// normalize replaces what differs between runs by placeholders and
// collapses white space, so that table columns of other widths compare
// equal.
func normalize(line string) string {
	line = timeRE.ReplaceAllString(line, "<time>")
	line = valueRE.ReplaceAllString(line, "<v>")
	return strings.TrimSpace(spaceRE.ReplaceAllString(line, " "))
}

// normalizeNumbers is normalize, and then every number is alike.
func normalizeNumbers(line string) string {
	return digitRE.ReplaceAllString(normalize(line), "<n>")
}

// lineMatcher matches a normalized line of real output against one of the
// documentation, in which "..." stands for anything.
func lineMatcher(doc string) *regexp.Regexp { return lineMatcherWith(doc, normalize) }

func lineMatcherWith(doc string, norm func(string) string) *regexp.Regexp {
	parts := strings.Split(norm(doc), "...")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	return regexp.MustCompile("^" + strings.Join(parts, ".*") + "$")
}

// nonEmptyLines splits s into its lines, leaving out blank ones.
func nonEmptyLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// matchInOrder reports the first documented line that real output lacks:
// every line of want must match a line of got, in order; got may have more.
func matchInOrder(want, got string) error {
	gl := nonEmptyLines(got)
	i := 0
	for _, w := range nonEmptyLines(want) {
		re := lineMatcher(w)
		for i < len(gl) && !re.MatchString(normalize(gl[i])) {
			i++
		}
		if i == len(gl) {
			return fmt.Errorf("documented line not in the output (in order): %q (normalized %q)", w, normalize(w))
		}
		i++
	}
	return nil
}

// matchExactly reports the first difference between the documented output
// and the real one, line by line.
func matchExactly(want, got string) error { return matchExactlyWith(want, got, normalize) }

// matchExactlyWith is matchExactly with another normalization.
func matchExactlyWith(want, got string, norm func(string) string) error {
	wl, gl := nonEmptyLines(want), nonEmptyLines(got)
	for i := range max(len(wl), len(gl)) {
		switch {
		case i >= len(wl):
			return fmt.Errorf("output has more lines than documented, from %q", gl[i])
		case i >= len(gl):
			return fmt.Errorf("output lacks documented line %q", wl[i])
		case !lineMatcherWith(wl[i], norm).MatchString(norm(gl[i])):
			return fmt.Errorf("line %d differs:\n  documented: %s\n  real:       %s", i+1, norm(wl[i]), norm(gl[i]))
		}
	}
	return nil
}

// docCommand is one "$ command" of a doccheck block and its documented
// output.
type docCommand struct {
	Command string // with continuation lines joined as written (backslash-newline kept)
	Output  string
}

// docCommands splits a doccheck block into its commands.
func docCommands(b docBlock) []docCommand {
	var (
		out  []docCommand
		cont bool
	)
	for _, line := range strings.Split(strings.TrimRight(b.Body, "\n"), "\n") {
		switch {
		case cont:
			out[len(out)-1].Command += "\n" + line
		case strings.HasPrefix(line, "$ "):
			out = append(out, docCommand{Command: strings.TrimPrefix(line, "$ ")})
		case len(out) > 0:
			out[len(out)-1].Output += line + "\n"
		}
		cont = len(out) > 0 && strings.HasSuffix(line, `\`) && (cont || strings.HasPrefix(line, "$ "))
	}
	return out
}

// logShape is the level, message and field names of a text-handler log
// line (`level=INFO msg="..." key=value ...`), or "" for any other line.
// Values are left out: they differ from run to run.
func logShape(line string) string {
	var keys []string
	msg, level := "", ""
	for s := strings.TrimSpace(line); s != ""; {
		eq := strings.IndexByte(s, '=')
		sp := strings.IndexByte(s, ' ')
		if eq <= 0 || (sp >= 0 && sp < eq) {
			return "" // not key=value
		}
		key := s[:eq]
		s = s[eq+1:]
		var val string
		if strings.HasPrefix(s, `"`) {
			end := 1
			for end < len(s) && s[end] != '"' {
				if s[end] == '\\' {
					end++
				}
				end++
			}
			if end >= len(s) {
				return ""
			}
			val, s = s[1:end], s[end+1:]
		} else if sp := strings.IndexByte(s, ' '); sp >= 0 {
			val, s = s[:sp], s[sp:]
		} else {
			val, s = s, ""
		}
		s = strings.TrimLeft(s, " ")
		switch key {
		case "time":
		case "level":
			level = val
		case "msg":
			msg = val
		default:
			keys = append(keys, key)
		}
	}
	if msg == "" {
		return ""
	}
	return level + " " + strconv.Quote(msg) + " " + strings.Join(keys, " ")
}

// matchLogsInOrder reports the first documented line that got lacks, in
// order: a log line must have a line of the same shape (level, message,
// field names in order), any other line a line that matches it as text
// (normalized, "..." for anything). Log lines and other lines are matched
// in order each among their own kind, not against each other: they come
// from different processes (crank-agent's log, its child's output) whose
// writes interleave as the scheduler lets them.
func matchLogsInOrder(want, got string) error {
	var wantLogs, wantText, gotLogs, gotText []string
	for _, w := range nonEmptyLines(want) {
		if logShape(w) != "" {
			wantLogs = append(wantLogs, w)
		} else {
			wantText = append(wantText, w)
		}
	}
	for _, g := range nonEmptyLines(got) {
		if logShape(g) != "" {
			gotLogs = append(gotLogs, g)
		} else {
			gotText = append(gotText, g)
		}
	}
	i := 0
	for _, w := range wantLogs {
		ws := logShape(w)
		for i < len(gotLogs) && logShape(gotLogs[i]) != ws {
			i++
		}
		if i == len(gotLogs) {
			return fmt.Errorf("no log line (in order) of the documented shape %s", ws)
		}
		i++
	}
	i = 0
	for _, w := range wantText {
		re := lineMatcher(w)
		for i < len(gotText) && !re.MatchString(normalize(gotText[i])) {
			i++
		}
		if i == len(gotText) {
			return fmt.Errorf("documented line not in the output (in order): %q", w)
		}
		i++
	}
	return nil
}

// TestDocCheckHelpers pins what the documentation checks treat as equal
// and as different.
func TestDocCheckHelpers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		doc, real string
		exact     bool
		ok        bool
	}{
		{"values and columns", "SERIAL  WORKER  NOT AFTER\n49148647040360831595940012879441059295  api  2026-11-30T07:39:34Z\n",
			"SERIAL                                 WORKER  NOT AFTER\n3570227447502674039990567591276490719  api     2026-12-02T04:38:12Z\n", true, true},
		{"other text", "crank-ca: conflict: certificate already revoked: 1 (HTTP 409)\n", "crank-ca: certificate already revoked: 1 (HTTP 409)\n", true, false},
		{"extra line", "a\n", "a\nb\n", true, false},
		{"ellipsis", "ct1.eyJwIjoid29ya2VycyIsInciOiJhcGkiLCJlIjoxNzk1OTQxNjczLCJu...\n", "ct1.eyJwIjoid29ya2VycyIsInciOiJhcGkiLCJlIjoxNzk1OTQxNjczLCJuIjoiT1g.NOLXbhXpISUwS8wN2IycZg.bCp8DcxrsSo9uPTZxmvkmj29_Foe-ScrPmLmqIIYEug\n", true, true},
		{"in order with noise", "X509v3 Subject Alternative Name: critical\n", "noise\nX509v3 Subject Alternative Name: critical\n", false, true},
		{"criticality", "X509v3 Subject Alternative Name: critical\n", "X509v3 Subject Alternative Name: \n", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			match := matchInOrder
			if tc.exact {
				match = matchExactly
			}
			if err := match(tc.doc, tc.real); (err == nil) != tc.ok {
				t.Errorf("match = %v, want ok %v", err, tc.ok)
			}
		})
	}
	doc := `level=INFO msg="renewal planned" worker=alpha at=2026-11-29T08:45:56.214Z serial=1 notAfter=2026-11-30T07:45:56.000Z`
	real := `time=2026-12-01T04:42:47.117Z level=INFO msg="worker serving mTLS" worker=alpha addr=127.0.0.1:8443 serial=2`
	if err := matchLogsInOrder(doc, real); err == nil {
		t.Error("a documented message the log lacks matched")
	}
	// A child's output may land before or after the agent's log line
	// about it; within each kind the order still counts.
	doc = "level=INFO msg=\"child started\" pid=1\nchild: hello\nlevel=INFO msg=\"renewed\" serial=1\nchild: reloading\n"
	for real, ok := range map[string]bool{
		"child: hello\ntime=x level=INFO msg=\"child started\" pid=2\nlevel=INFO msg=\"renewed\" serial=2\nchild: reloading\n": true,
		"level=INFO msg=\"child started\" pid=2\nchild: hello\nchild: reloading\nlevel=INFO msg=\"renewed\" serial=2\n":        true,
		"level=INFO msg=\"renewed\" serial=2\nlevel=INFO msg=\"child started\" pid=2\nchild: hello\nchild: reloading\n":        false,
		"level=INFO msg=\"child started\" pid=2\nchild: reloading\nchild: hello\nlevel=INFO msg=\"renewed\" serial=2\n":        false,
	} {
		if err := matchLogsInOrder(doc, real); (err == nil) != ok {
			t.Errorf("matchLogsInOrder(%q) = %v, want ok %v", real, err, ok)
		}
	}
	if got, want := logShape(`level=INFO msg="peer answered" message="hello \"x\", this" peerSerial=9`), `INFO "peer answered" message peerSerial`; got != want {
		t.Errorf("logShape = %q, want %q", got, want)
	}
	cmds := docCommands(docBlock{Body: "$ curl -s a \\\n    -d b\n{\"x\":1}\n\n$ crank-ca x\nout \\\nmore\n"})
	if len(cmds) != 2 || cmds[0].Command != "curl -s a \\\n    -d b" || cmds[0].Output != "{\"x\":1}\n\n" || cmds[1].Output != "out \\\nmore\n" {
		t.Errorf("docCommands = %q", cmds)
	}
}
