package config

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// errorLines splits a (possibly joined) error into its individual
// messages.
func errorLines(err error) []string {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []string
		for _, e := range j.Unwrap() {
			out = append(out, errorLines(e)...)
		}
		return out
	}
	return []string{err.Error()}
}

func TestDecodeRejects(t *testing.T) {
	t.Parallel()
	const prov = `"provisioners":[{"name":"p","type":"acme"}]`
	tests := []struct {
		name string
		in   string
		want []string // each decode error, in order (substring match)
	}{
		{
			name: "unknown top-level field",
			in:   `{"listn":"127.0.0.1:1"}`,
			want: []string{`json: unknown field "listn"`},
		},
		{
			name: "unknown nested field names the path",
			in:   `{"provisioners":[{"name":"a"},{"name":"b","claims":{"maxDuration":"1h"}}]}`,
			want: []string{`provisioners[1].claims: json: unknown field "maxDuration"`},
		},
		{
			name: "unknown field in pointer struct",
			in:   `{"provisioners":[{"policy":{"allowedDnsSuffixes":["x"]}}]}`,
			want: []string{`provisioners[0].policy: json: unknown field "allowedDnsSuffixes" (field names are case-sensitive: did you mean "allowedDNSSuffixes"?)`},
		},
		{
			name: "case mismatch is unknown",
			in:   `{"Listen":"127.0.0.1:1"}`,
			want: []string{`json: unknown field "Listen" (field names are case-sensitive: did you mean "listen"?)`},
		},
		{
			name: "a misspelt field gets a suggestion",
			in:   `{"trustDomian":"example.org"}`,
			want: []string{`json: unknown field "trustDomian" (did you mean "trustDomain"?)`},
		},
		{
			name: "a misspelt nested field gets a suggestion",
			in:   `{"storage":{"tpye":"bbolt"}}`,
			want: []string{`storage: json: unknown field "tpye" (did you mean "type"?)`},
		},
		{
			name: "misspelt and wrongly cased",
			in:   `{"TrustDomian":"example.org"}`,
			want: []string{`json: unknown field "TrustDomian" (did you mean "trustDomain"?)`},
		},
		{
			name: "removed storage.maxOpenConns is unknown",
			in:   `{"storage":{"type":"postgresql","dsn":"host=db","maxOpenConns":16}}`,
			want: []string{`storage: json: unknown field "maxOpenConns"`},
		},
		{
			name: "Dir is not settable from JSON",
			in:   `{"Dir":"/tmp"}`,
			want: []string{`json: unknown field "Dir"`},
		},
		{
			name: "all unknown fields reported",
			in:   `{"a":1,"storage":{"b":{"deep":[1,{"x":2}]}},"c":[]}`,
			want: []string{`json: unknown field "a"`, `storage: json: unknown field "b"`, `json: unknown field "c"`},
		},
		{
			name: "duplicate field",
			in:   `{"listen":"a:1","listen":"b:2"}`,
			want: []string{`json: duplicate field "listen"`},
		},
		{
			name: "trailing object",
			in:   `{` + prov + `} {}`,
			want: []string{"unexpected data after the top-level JSON object at line 1, column"},
		},
		{
			name: "trailing garbage",
			in:   "{" + prov + "}\nxyz",
			want: []string{"unexpected data after the top-level JSON object at line 2, column 1"},
		},
		{
			name: "wrong types with paths",
			in:   `{"listen":9090,"dnsNames":"localhost","provisioners":[{"requireEAB":"yes","claims":[],"validationPorts":{"http01":"80"}}]}`,
			want: []string{
				"listen: must be a JSON string, not a number",
				"dnsNames: must be a JSON array, not a string",
				"provisioners[0].requireEAB: must be true or false, not a string",
				"provisioners[0].claims: must be a JSON object, not an array",
				"provisioners[0].validationPorts.http01: must be an integer, not a string",
			},
		},
		{
			name: "non-integer number",
			in:   `{"provisioners":[{"validationPorts":{"http01":1.5}}]}`,
			want: []string{"provisioners[0].validationPorts.http01: must be an integer, not 1.5"},
		},
		{
			name: "huge integer",
			in:   `{"provisioners":[{"validationPorts":{"http01":99999999999999999999}}]}`,
			want: []string{"provisioners[0].validationPorts.http01: must be an integer, not 99999999999999999999"},
		},
		{
			name: "durations with paths",
			in:   `{"pki":{"serverCertLifetime":86400},"retention":{"interval":"-1m","expiredCertificates":"1d"}}`,
			want: []string{
				`pki.serverCertLifetime: a duration must be a JSON string such as "24h" or "5m", not a number`,
				`retention.interval: invalid duration "-1m": must not be negative`,
				`retention.expiredCertificates: invalid duration "1d"`,
			},
		},
		{
			name: "empty input",
			in:   " \n",
			want: []string{"empty input"},
		},
		{
			name: "top-level array",
			in:   `[]`,
			want: []string{"top level must be a JSON object, not an array"},
		},
		{
			name: "top-level null",
			in:   `null`,
			want: []string{"top level must be a JSON object, not null"},
		},
		{
			name: "syntax error has line and column",
			in:   "{\n  \"listen\": \"x\",\n  }",
			want: []string{"invalid JSON at line 3, column"},
		},
		{
			name: "truncated",
			in:   `{"listen":`,
			want: []string{"invalid JSON"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Decode(strings.NewReader(tt.in))
			if err == nil {
				t.Fatalf("Decode succeeded with %+v, want errors %q", c, tt.want)
			}
			got := errorLines(err)
			if len(got) != len(tt.want) {
				t.Fatalf("Decode errors:\n%s\nwant %d errors: %q", strings.Join(got, "\n"), len(tt.want), tt.want)
			}
			for i := range got {
				if !strings.Contains(got[i], tt.want[i]) {
					t.Errorf("error %d = %q, want containing %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestDecodeFieldErrorsAreInspectable(t *testing.T) {
	t.Parallel()
	_, err := Decode(strings.NewReader(`{"provisioners":[{"claims":{"x":1}}]}`))
	fe, ok := errors.AsType[*FieldError](err)
	if !ok {
		t.Fatalf("error %v has no *FieldError", err)
	}
	if fe.Path != "provisioners[0].claims" {
		t.Errorf("Path = %q, want provisioners[0].claims", fe.Path)
	}
}

func TestDecodeAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want *Config
	}{
		{
			name: "empty object",
			in:   `{}`,
			want: &Config{},
		},
		{
			name: "null means unset",
			in:   `{"listen":null,"pki":{"serverCertLifetime":null},"provisioners":null}`,
			want: &Config{},
		},
		{
			name: "trailing whitespace",
			in:   "{\"listen\":\"a:1\"}\n\n\t ",
			want: &Config{Listen: "a:1"},
		},
		{
			name: "nested values",
			in: `{"storage":{"type":"postgresql","dsn":"host=db"},
			      "provisioners":[{"name":"a","type":"acme","requireEAB":true,"claims":{"maxCertDuration":"48h"},
			                       "validationPorts":{"http01":8080}}]}`,
			want: &Config{
				Storage: Storage{Type: "postgresql", DSN: "host=db"},
				Provisioners: []Provisioner{{
					Name: "a", Type: "acme", RequireEAB: true,
					Claims:          Claims{MaxCertDuration: Dur(48 * time.Hour)},
					ValidationPorts: &ValidationPorts{HTTP01: 8080},
				}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := Decode(strings.NewReader(tt.in))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Decode mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeTooLarge(t *testing.T) {
	t.Parallel()
	in := `{"listen":"` + strings.Repeat("a", MaxFileSize) + `"}`
	if _, err := Decode(strings.NewReader(in)); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Decode error = %v, want size error", err)
	}
}

func TestClosestField(t *testing.T) {
	t.Parallel()
	fields := map[string]int{"listen": 0, "trustDomain": 0, "type": 0, "tokenKeyFile": 0, "ari": 0, "crl": 0}
	tests := []struct {
		key    string
		want   string
		wantOK bool
	}{
		{"trustDomian", "trustDomain", true}, // adjacent swap
		{"trustdomain", "trustDomain", true}, // case only
		{"trustDomainn", "trustDomain", true},
		{"trstDmain", "trustDomain", true}, // two edits from 6 letters on
		{"tpye", "type", true},
		{"lsten", "listen", true},
		{"tokenFile", "", false}, // too far to be a typo
		{"crt", "crl", true},
		{"xyz", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		got, ok := closestField(tt.key, fields)
		if ok != tt.wantOK || (ok && got != tt.want) {
			t.Errorf("closestField(%q) = %q, %v; want %q, %v", tt.key, got, ok, tt.want, tt.wantOK)
		}
	}
}
