package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Duration is a time.Duration that is written in JSON as a Go duration
// string such as "24h" or "5m".
//
// Operators read and write this file by hand; a bare number would be
// ambiguous (seconds? nanoseconds?), so numbers are rejected outright rather
// than guessed at, and negative durations, which no setting here accepts, are
// rejected at decode time with a message naming the value.
type Duration struct{ time.Duration }

// Dur is shorthand for building a Duration in code and tests.
func Dur(d time.Duration) Duration { return Duration{d} }

// MarshalJSON writes the duration as a compact string ("24h", "1h30m",
// "5m") that parses back to the same value.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(formatDuration(d.Duration))
}

// UnmarshalJSON accepts only a JSON string holding a non-negative Go
// duration. A JSON null leaves the value unchanged (unset), like every other
// field, so ApplyDefaults can fill it in.
func (d *Duration) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if string(data) == "null" {
		return nil
	}
	if len(data) == 0 || data[0] != '"' {
		return errDurationNotString(describeJSON(data))
	}
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// parseDuration is shared by UnmarshalJSON and the strict decoder (which
// reports the same message with the field's JSON path).
func parseDuration(s string) (time.Duration, error) {
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: use a Go duration string such as \"24h\", \"90m\" or \"30s\"", s)
	}
	if v < 0 {
		return 0, fmt.Errorf("invalid duration %q: must not be negative", s)
	}
	return v, nil
}

func errDurationNotString(got string) error {
	return fmt.Errorf("a duration must be a JSON string such as \"24h\" or \"5m\", not %s", got)
}

// describeJSON names the JSON kind of a raw value for error messages.
func describeJSON(data []byte) string {
	if len(data) == 0 {
		return "empty input"
	}
	switch c := data[0]; {
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == '-' || (c >= '0' && c <= '9'):
		return "a number"
	default:
		return "invalid JSON"
	}
}

// formatDuration is time.Duration.String without the redundant trailing
// zero units, so written files say "24h" rather than "24h0m0s".
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
