package config

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestValidateMetrics: metrics.listen is off when empty, otherwise a
// host:port of its own; every mistake names the field.
func TestValidateMetrics(t *testing.T) {
	t.Parallel()
	tests := []struct {
		listen string
		want   string // "" = valid
	}{
		{"", ""},
		{"127.0.0.1:9091", ""},
		{"[::1]:9091", ""},
		{":9091", ""},
		{"127.0.0.1", `metrics.listen: must be host:port such as`},
		{"127.0.0.1:0", `metrics.listen: port must be a number 1-65535; got "0"`},
		{"localhost:metrics", `metrics.listen: port must be a number 1-65535; got "metrics"`},
		{DefaultListen, "metrics.listen: must differ from listen (" + DefaultListen + ")"},
	}
	for _, tc := range tests {
		t.Run(tc.listen, func(t *testing.T) {
			t.Parallel()
			c := Default(InitOptions{})
			c.Metrics.Listen = tc.listen
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			var fe *FieldError
			if err == nil || !errors.As(err, &fe) || fe.Path != "metrics.listen" || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want one problem containing %q", err, tc.want)
			}
		})
	}
}

// TestLoadMetrics: the section is decoded strictly (a misspelled field is
// refused) and absent by default.
func TestLoadMetrics(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := Default(InitOptions{})
	if c.Metrics.Listen != "" {
		t.Fatalf("metrics on by default: %q", c.Metrics.Listen)
	}
	write := func(name, metrics string) string {
		t.Helper()
		b, err := json.MarshalIndent(c, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), `"metrics"`) {
			t.Fatalf("a configuration without metrics writes a metrics section:\n%s", b)
		}
		s := strings.Replace(string(b), "{", "{\n  \"metrics\": "+metrics+",", 1)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	got, err := Load(write("good.json", `{"listen": "127.0.0.1:9091"}`))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got.Metrics.Listen != "127.0.0.1:9091" {
		t.Errorf("metrics.listen = %q", got.Metrics.Listen)
	}
	if _, err := Load(write("typo.json", `{"listn": "127.0.0.1:9091"}`)); err == nil || !strings.Contains(err.Error(), "listn") {
		t.Errorf("Load with metrics.listn: %v, want an error naming it", err)
	}
}
