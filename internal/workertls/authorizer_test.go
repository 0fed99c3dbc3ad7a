package workertls

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	idAPI   = spiffeid.RequireFromString("spiffe://crank.internal/worker/api")
	idDB    = spiffeid.RequireFromString("spiffe://crank.internal/worker/db")
	idOther = spiffeid.RequireFromString("spiffe://other.example/worker/api")
)

func TestParseAuthorizer(t *testing.T) {
	t.Parallel()
	probes := []spiffeid.ID{idAPI, idDB, idOther}
	tests := []struct {
		in      string
		allowed []bool // for probes; nil when an error is expected
		wantErr string // substring of the error
	}{
		{in: "any", allowed: []bool{true, true, true}},
		{in: "  any\n", allowed: []bool{true, true, true}},
		{in: "id:spiffe://crank.internal/worker/api", allowed: []bool{true, false, false}},
		{in: "id: spiffe://crank.internal/worker/db ", allowed: []bool{false, true, false}},
		{in: "td:crank.internal", allowed: []bool{true, true, false}},
		{in: "td:other.example", allowed: []bool{false, false, true}},
		{in: "oneof:spiffe://crank.internal/worker/api,spiffe://other.example/worker/api", allowed: []bool{true, false, true}},
		{in: "oneof: spiffe://crank.internal/worker/db , spiffe://crank.internal/worker/api", allowed: []bool{true, true, false}},
		{in: "oneof:spiffe://crank.internal/worker/db", allowed: []bool{false, true, false}},

		{in: "", wantErr: `invalid authorizer "": want`},
		{in: "ANY", wantErr: `invalid authorizer "ANY": want`},
		{in: "spiffe://crank.internal/worker/api", wantErr: `unknown kind "spiffe"`},
		{in: "ID:spiffe://crank.internal/x", wantErr: `unknown kind "ID"`},
		{in: "id:", wantErr: `invalid authorizer "id:"`},
		{in: "id:crank.internal", wantErr: "scheme"},
		{in: "id:spiffe://Crank.internal/x", wantErr: "trust domain characters"},
		{in: "id:spiffe://crank.internal/../x", wantErr: "path cannot contain dot segments"},
		{in: "td:", wantErr: "trust domain is missing"},
		{in: "td:Crank.internal", wantErr: "trust domain characters"},
		{in: "td:spiffe://crank.internal", wantErr: "bare trust domain name"},
		{in: "td:spiffe://crank.internal/worker/x", wantErr: "bare trust domain name"},
		{in: "oneof:", wantErr: "empty entry"},
		{in: "oneof:spiffe://a,,spiffe://b", wantErr: "empty entry"},
		{in: "oneof:spiffe://a,", wantErr: "empty entry"},
		{in: "oneof:spiffe://a,b", wantErr: `entry 2 "b"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			authz, err := ParseAuthorizer(tt.in)
			if tt.wantErr != "" {
				var ae *AuthorizerError
				if !errors.As(err, &ae) || ae.Value != tt.in {
					t.Fatalf("err = %v, want *AuthorizerError for %q", err, tt.in)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("err = %q, want it to contain %q", err, tt.wantErr)
				}
				if authz != nil {
					t.Error("non-nil authorizer with an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := make([]bool, len(probes))
			for i, id := range probes {
				got[i] = authz(id, nil) == nil
			}
			if diff := cmp.Diff(tt.allowed, got); diff != "" {
				t.Errorf("allowed %v (-want +got):\n%s", probes, diff)
			}
		})
	}
}

func FuzzParseAuthorizer(f *testing.F) {
	for _, s := range []string{
		"any", "id:spiffe://crank.internal/worker/api", "td:crank.internal",
		"oneof:spiffe://a/x,spiffe://b/y", "oneof:", "td:spiffe://x", "id:\x00", " any ", "x:y:z",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		authz, err := ParseAuthorizer(s)
		if (authz == nil) == (err == nil) {
			t.Fatalf("ParseAuthorizer(%q) = %v, %v: want exactly one of authorizer and error", s, authz != nil, err)
		}
		if err != nil {
			var ae *AuthorizerError
			if !errors.As(err, &ae) || ae.Value != s {
				t.Fatalf("err %#v is not an *AuthorizerError carrying the input", err)
			}
			if !strings.Contains(err.Error(), strconv.Quote(s)) {
				t.Fatalf("error %q does not name the value", err)
			}
			return
		}
		_ = authz(idAPI, nil) // must not panic
		// An id: policy admits the ID it names.
		in := strings.TrimSpace(s)
		if rest, ok := strings.CutPrefix(in, "id:"); ok {
			if err := authz(spiffeid.RequireFromString(strings.TrimSpace(rest)), nil); err != nil {
				t.Fatalf("%q refuses its own ID: %v", s, err)
			}
		}
	})
}
