package config

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestDurationRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want time.Duration
		out  string // canonical form written back
	}{
		{`"24h"`, 24 * time.Hour, `"24h"`},
		{`"5m"`, 5 * time.Minute, `"5m"`},
		{`"90m"`, 90 * time.Minute, `"1h30m"`},
		{`"1h0m0s"`, time.Hour, `"1h"`},
		{`"30s"`, 30 * time.Second, `"30s"`},
		{`"1h10m"`, 70 * time.Minute, `"1h10m"`},
		{`"1m0.5s"`, time.Minute + 500*time.Millisecond, `"1m0.5s"`},
		{`"1.5s"`, 1500 * time.Millisecond, `"1.5s"`},
		{`"0s"`, 0, `"0s"`},
		{`"2160h"`, 2160 * time.Hour, `"2160h"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			var d Duration
			if err := json.Unmarshal([]byte(tt.in), &d); err != nil {
				t.Fatalf("Unmarshal(%s): %v", tt.in, err)
			}
			if d.Duration != tt.want {
				t.Fatalf("Unmarshal(%s) = %v, want %v", tt.in, d.Duration, tt.want)
			}
			out, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			if string(out) != tt.out {
				t.Errorf("Marshal = %s, want %s", out, tt.out)
			}
			var back Duration
			if err := json.Unmarshal(out, &back); err != nil || back != d {
				t.Errorf("round trip: got %v, %v; want %v", back, err, d)
			}
		})
	}
}

func TestDurationRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		wantErr string
	}{
		{`86400`, "not a number"},
		{`-5`, "not a number"},
		{`1.5`, "not a number"},
		{`"-5m"`, "must not be negative"},
		{`"5"`, `invalid duration "5"`},
		{`"1d"`, `invalid duration "1d"`},
		{`""`, `invalid duration ""`},
		{`"soon"`, "Go duration string"},
		{`true`, "not a boolean"},
		{`{}`, "not an object"},
		{`["5m"]`, "not an array"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			var d Duration
			err := json.Unmarshal([]byte(tt.in), &d)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Unmarshal(%s) error = %v, want containing %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestDurationNullLeavesUnset(t *testing.T) {
	t.Parallel()
	d := Dur(time.Hour)
	if err := json.Unmarshal([]byte(`null`), &d); err != nil || d.Duration != time.Hour {
		t.Fatalf("Unmarshal(null) = %v, %v; want unchanged 1h", d, err)
	}
}
