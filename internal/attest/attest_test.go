package attest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/provisioner"
)

func newTestHandler(t *testing.T, perMinute int) *Handler {
	t.Helper()
	h, err := New(Deps{
		Provisioners: []Provisioner{{Name: "workers", AttemptsPerMinute: perMinute}},
		Mint: func(provisioner.TokenClaims) (provisioner.Token, error) {
			return provisioner.Token{}, errors.New("not in this test")
		},
		SpendJTI:  func(context.Context, string, string, time.Time) error { return nil },
		Disabled:  func(context.Context, string, string) (bool, error) { return false, nil },
		Directory: func(*http.Request, string) string { return "" },
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestRequestRefusals: every malformed request is a problem document with
// the right status, and a token that parses is refused by issuer when no
// attestor trusts it.
func TestRequestRefusals(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, 100)
	for _, tc := range []struct {
		name, method, path, ct, body string
		status                       int
		typ, check                   string
	}{
		{"unknown provisioner", http.MethodPost, "/attest/nope", "application/json", `{"jwt":"x"}`, 404, "malformed", ""},
		{"sub-path", http.MethodPost, "/attest/workers/x", "application/json", `{"jwt":"x"}`, 404, "malformed", ""},
		{"GET", http.MethodGet, "/attest/workers", "", "", 405, "malformed", ""},
		{"wrong content type", http.MethodPost, "/attest/workers", "text/plain", `{"jwt":"x"}`, 415, "malformed", ""},
		{"too large", http.MethodPost, "/attest/workers", "application/json", `{"jwt":"` + strings.Repeat("a", maxBody) + `"}`, 413, "malformed", ""},
		{"unknown field", http.MethodPost, "/attest/workers", "application/json", `{"jwt":"x","y":1}`, 400, "malformed", ""},
		{"two objects", http.MethodPost, "/attest/workers", "application/json", `{"jwt":"x"}{}`, 400, "malformed", ""},
		{"not a JWT", http.MethodPost, "/attest/workers", "application/json", `{"jwt":"x"}`, 401, "unauthorized", "format"},
		{"untrusted issuer", http.MethodPost, "/attest/workers", "application/json",
			`{"jwt":"eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJodHRwczovL3gifQ.AAAA"}`, 401, "unauthorized", "issuer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := httptest.NewRequestWithContext(t.Context(), tc.method, tc.path, strings.NewReader(tc.body))
			if tc.ct != "" {
				req.Header.Set("Content-Type", tc.ct)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			var p problem
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
				t.Fatalf("not a problem document: %s", rec.Body)
			}
			if rec.Code != tc.status || p.Type != problemPrefix+tc.typ || p.Check != tc.check || p.Status != tc.status {
				t.Errorf("%d %s check %q, want %d %s %q", rec.Code, p.Type, p.Check, tc.status, tc.typ, tc.check)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("Content-Type %q", ct)
			}
		})
	}
}

func TestRateLimited(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, 2)
	var last *httptest.ResponseRecorder
	for range 3 {
		req := httptest.NewRequestWithContext(t.Context(), http.MethodPost, "/attest/workers", strings.NewReader(`{"jwt":"x"}`))
		req.Header.Set("Content-Type", "application/json")
		req.RemoteAddr = "192.0.2.1:1234"
		last = httptest.NewRecorder()
		h.ServeHTTP(last, req)
	}
	if last.Code != http.StatusTooManyRequests || last.Header().Get("Retry-After") == "" {
		t.Fatalf("3rd attempt with 2 per minute: %d Retry-After %q", last.Code, last.Header().Get("Retry-After"))
	}
}

func TestServerFaultsHideTheirCause(t *testing.T) {
	t.Parallel()
	p := toProblem(errors.New("pq: connection to host db.internal user crank refused"))
	if p.Status != http.StatusServiceUnavailable || strings.Contains(p.Detail, "db.internal") {
		t.Errorf("%+v", p)
	}
}
