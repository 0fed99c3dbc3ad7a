package admin_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/pki"
	"github.com/crank-platform/crank-ca/internal/testpki"
)

const (
	adminID      = "spiffe://crank.internal/admin/operator"
	workerID     = "spiffe://crank.internal/worker/w1"
	foreignAdmin = "spiffe://other.internal/admin/operator"

	// Secrets the fake Operator mints; they must never reach a log.
	hmacSecret  = "hmac-SECRET-do-not-log"
	tokenSecret = "token-SECRET-do-not-log"
)

// fixed is the time in every canned response.
func fixed() time.Time { return time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC) }

// call is one recorded Operator call.
type call struct {
	Method string
	Args   []any
}

// fakeOperator records calls and returns canned values, or err, or panics.
type fakeOperator struct {
	err   error
	panic bool

	mu     sync.Mutex
	calls  []call
	admins []string // AdminID of each call's context
}

func (f *fakeOperator) record(ctx context.Context, method string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call{method, args})
	id, _ := admin.AdminID(ctx)
	f.admins = append(f.admins, id.String())
	if f.panic {
		panic("operator exploded")
	}
	return f.err
}

func (f *fakeOperator) Calls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

func (f *fakeOperator) Admins() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.admins...)
}

func tokenResponse() admin.TokenResponse {
	return admin.TokenResponse{KID: "kid-1", HMACKey: hmacSecret, Token: tokenSecret, ExpiresAt: fixed()}
}

func (f *fakeOperator) MintToken(ctx context.Context, req admin.TokenRequest) (admin.TokenResponse, error) {
	if err := f.record(ctx, "MintToken", req); err != nil {
		return admin.TokenResponse{}, err
	}
	return tokenResponse(), nil
}

func workerList() []admin.Worker {
	return []admin.Worker{{Provisioner: "acme", Name: "w1", Accounts: 1, LiveCertificates: 2}}
}

func (f *fakeOperator) Workers(ctx context.Context) ([]admin.Worker, error) {
	if err := f.record(ctx, "Workers"); err != nil {
		return nil, err
	}
	return workerList(), nil
}

func accountList() []admin.Account {
	return []admin.Account{{ID: "acct-1", Provisioner: "acme", Worker: "w1", BoundAt: fixed(), Usable: true}}
}

func (f *fakeOperator) Accounts(ctx context.Context) ([]admin.Account, error) {
	if err := f.record(ctx, "Accounts"); err != nil {
		return nil, err
	}
	return accountList(), nil
}

func certList(worker string) []admin.Certificate {
	return []admin.Certificate{{
		Serial: "0a1b", Provisioner: "acme", Worker: worker, SPIFFEID: workerID,
		NotBefore: fixed(), NotAfter: fixed().Add(time.Hour),
	}}
}

func (f *fakeOperator) Certificates(ctx context.Context, filter admin.CertFilter) ([]admin.Certificate, error) {
	if err := f.record(ctx, "Certificates", filter); err != nil {
		return nil, err
	}
	return certList(filter.Worker), nil
}

func (f *fakeOperator) Revoke(ctx context.Context, req admin.RevokeRequest) (admin.RevokeResult, error) {
	if err := f.record(ctx, "Revoke", req); err != nil {
		return admin.RevokeResult{}, err
	}
	return admin.RevokeResult{Revoked: []string{"0a1b"}}, nil
}

func (f *fakeOperator) Rotate(ctx context.Context, req admin.RotateRequest) (admin.RotateResult, error) {
	if err := f.record(ctx, "Rotate", req); err != nil {
		return admin.RotateResult{}, err
	}
	return admin.RotateResult{}, nil // nil list: must still encode as []
}

func (f *fakeOperator) SetWorkerDisabled(ctx context.Context, provisioner, worker string, disabled bool) (admin.Worker, error) {
	if err := f.record(ctx, "SetWorkerDisabled", provisioner, worker, disabled); err != nil {
		return admin.Worker{}, err
	}
	w := admin.Worker{Provisioner: provisioner, Name: worker, Disabled: disabled}
	if disabled {
		w.DisabledAt = fixed()
	}
	return w, nil
}

var _ admin.Operator = (*fakeOperator)(nil)

// syncBuffer is a log sink written from server goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// env is a CA, an admin API served over mutual TLS on loopback exactly as
// crank-ca serves it, and its logs.
type env struct {
	url   string
	ca    *pki.CA
	roots *x509.CertPool
	op    *fakeOperator
	log   *syncBuffer
	audit *syncBuffer
}

func newTestCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, err := pki.Create(pki.DefaultFiles(t.TempDir()), pki.CreateOptions{Name: "Test"})
	if err != nil {
		t.Fatalf("pki.Create: %v", err)
	}
	return ca
}

func newEnv(t *testing.T, op *fakeOperator) *env {
	t.Helper()
	return newEnvWith(t, op, nil)
}

// newEnvWith is newEnv with controllers besides the admin.
func newEnvWith(t *testing.T, op *fakeOperator, controllers []admin.Controller) *env {
	t.Helper()
	e := &env{ca: newTestCA(t), op: op, log: &syncBuffer{}, audit: &syncBuffer{}}
	e.roots = x509.NewCertPool()
	e.roots.AddCert(e.ca.Root)

	api, err := admin.New(admin.Config{
		Operator:    op,
		Admins:      []spiffeid.ID{spiffeid.RequireFromString(adminID)},
		Controllers: controllers,
		Logger:      slog.New(slog.NewJSONHandler(e.log, nil)),
		Audit:       slog.New(slog.NewJSONHandler(e.audit, nil)),
	})
	if err != nil {
		t.Fatalf("admin.New: %v", err)
	}
	sc, err := pki.NewServerCerts(pki.ServerCertsConfig{CA: e.ca, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatalf("pki.NewServerCerts: %v", err)
	}
	mux := http.NewServeMux()
	mux.Handle(admin.Prefix+"/", api.Handler())
	e.url = testpki.Serve(t, mux, &tls.Config{
		MinVersion:     tls.VersionTLS12,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      e.roots,
		GetCertificate: sc.GetCertificate,
	})
	return e
}

// cert issues a client certificate for id from ca, valid for lifetime from now.
func clientCert(t *testing.T, ca *pki.CA, id string, lifetime time.Duration, now time.Time) *tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := pki.IssueClientCert(ca, spiffeid.RequireFromString(id), lifetime, now)
	if err != nil {
		t.Fatalf("IssueClientCert: %v", err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("X509KeyPair: %v", err)
	}
	return &c
}

// workerShapedCert is a certificate from ca's intermediate with id as its
// URI SAN and the worker profile's serverAuth+clientAuth usage: what a
// worker would hold if its SPIFFE ID were configured to equal an admin ID.
func workerShapedCert(t *testing.T, ca *pki.CA, id string) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Intermediate, key.Public(), ca.IntermediateKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der, ca.Intermediate.Raw}, PrivateKey: key}
}

// client returns an HTTPS client trusting e's root and presenting cert, if
// not nil.
func (e *env) client(t *testing.T, cert *tls.Certificate) *http.Client {
	t.Helper()
	cfg := &tls.Config{RootCAs: e.roots, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	tr := &http.Transport{TLSClientConfig: cfg}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func (e *env) adminClient(t *testing.T) *http.Client {
	t.Helper()
	return e.client(t, clientCert(t, e.ca, adminID, time.Hour, time.Now()))
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func do(t *testing.T, c *http.Client, method, url, body string, header http.Header) (response, error) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, rd)
	if err != nil {
		t.Fatalf("NewRequest: %v", err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return response{resp.StatusCode, resp.Header, b}, nil
}

func mustDo(t *testing.T, c *http.Client, method, url, body string, header http.Header) response {
	t.Helper()
	r, err := do(t, c, method, url, body, header)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

// asJSON normalises v (a typed value or raw JSON) to generic JSON for cmp.
func asJSON(t *testing.T, v any) any {
	t.Helper()
	raw, ok := v.([]byte)
	if !ok {
		var err error
		if raw, err = json.Marshal(v); err != nil {
			t.Fatalf("marshal: %v", err)
		}
	}
	var out any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("response is not JSON: %v\n%s", err, raw)
	}
	return out
}

// checkProblem asserts r is a problem document of the given type and
// status and returns it.
func checkProblem(t *testing.T, r response, wantStatus int, wantType string) admin.Problem {
	t.Helper()
	if r.status != wantStatus {
		t.Errorf("status %d, want %d; body %s", r.status, wantStatus, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("Content-Type %q, want application/problem+json", ct)
	}
	var p admin.Problem
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("problem document: %v\n%s", err, r.body)
	}
	if p.Type != wantType || p.Status != wantStatus || p.Title == "" || p.Detail == "" {
		t.Errorf("problem %+v, want type %s, status %d, a title and a detail", p, wantType, wantStatus)
	}
	return p
}

func TestRoutes(t *testing.T) {
	t.Parallel()
	issued := fixed()
	tests := []struct {
		name       string
		method     string
		path       string
		body       string
		wantStatus int
		wantCall   call
		wantBody   any
	}{
		{
			name: "mint token", method: "POST", path: "/tokens",
			body:       `{"provisioner":"acme","worker":"w1","ttl":"1h"}`,
			wantStatus: http.StatusCreated,
			wantCall:   call{"MintToken", []any{admin.TokenRequest{Provisioner: "acme", Worker: "w1", TTL: "1h"}}},
			wantBody:   tokenResponse(),
		},
		{
			name: "mint EAB with defaults", method: "POST", path: "/tokens", body: `{}`,
			wantStatus: http.StatusCreated,
			wantCall:   call{"MintToken", []any{admin.TokenRequest{}}},
			wantBody:   tokenResponse(),
		},
		{
			name: "list workers", method: "GET", path: "/workers",
			wantStatus: http.StatusOK, wantCall: call{Method: "Workers"}, wantBody: workerList(),
		},
		{
			name: "disable worker", method: "POST", path: "/workers/acme/w1/disable",
			wantStatus: http.StatusOK,
			wantCall:   call{"SetWorkerDisabled", []any{"acme", "w1", true}},
			wantBody:   admin.Worker{Provisioner: "acme", Name: "w1", Disabled: true, DisabledAt: fixed()},
		},
		{
			name: "enable worker with escaped name", method: "POST", path: "/workers/acme/w%2D2/enable",
			wantStatus: http.StatusOK,
			wantCall:   call{"SetWorkerDisabled", []any{"acme", "w-2", false}},
			wantBody:   admin.Worker{Provisioner: "acme", Name: "w-2"},
		},
		{
			name: "list accounts", method: "GET", path: "/accounts",
			wantStatus: http.StatusOK, wantCall: call{Method: "Accounts"}, wantBody: accountList(),
		},
		{
			name: "list live certificates", method: "GET", path: "/certificates",
			wantStatus: http.StatusOK,
			wantCall:   call{"Certificates", []any{admin.CertFilter{}}},
			wantBody:   certList(""),
		},
		{
			name: "list all certificates of a worker", method: "GET", path: "/certificates?worker=w1&all=true",
			wantStatus: http.StatusOK,
			wantCall:   call{"Certificates", []any{admin.CertFilter{Worker: "w1", All: true}}},
			wantBody:   certList("w1"),
		},
		{
			name: "revoke", method: "POST", path: "/revoke",
			body:       `{"serial":"0a1b","reason":"keyCompromise"}`,
			wantStatus: http.StatusOK,
			wantCall:   call{"Revoke", []any{admin.RevokeRequest{Serial: "0a1b", Reason: "keyCompromise"}}},
			wantBody:   map[string]any{"revoked": []string{"0a1b"}},
		},
		{
			name: "rotate", method: "POST", path: "/rotate",
			body:       `{"all":true,"issuedBefore":"2030-01-02T03:04:05Z"}`,
			wantStatus: http.StatusOK,
			wantCall:   call{"Rotate", []any{admin.RotateRequest{All: true, IssuedBefore: &issued}}},
			wantBody:   map[string]any{"rotated": []string{}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, &fakeOperator{})
			r := mustDo(t, e.adminClient(t), tt.method, e.url+admin.Prefix+tt.path, tt.body, nil)
			if r.status != tt.wantStatus {
				t.Fatalf("status %d, want %d; body %s", r.status, tt.wantStatus, r.body)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			if cc := r.header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control %q, want no-store", cc)
			}
			if diff := cmp.Diff(asJSON(t, tt.wantBody), asJSON(t, r.body)); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]call{tt.wantCall}, e.op.Calls()); diff != "" {
				t.Errorf("Operator calls (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{adminID}, e.op.Admins()); diff != "" {
				t.Errorf("AdminID seen by the Operator (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// cert returns the client certificate to present; nil for none.
		cert func(t *testing.T, e *env) *tls.Certificate
		path string
		// wantStatus is the expected status; 0 means the handshake or the
		// request must fail.
		wantStatus int
		wantType   string
		wantAudit  []string // substrings of the audit log
	}{
		{
			name:       "no client certificate",
			cert:       func(*testing.T, *env) *tls.Certificate { return nil },
			path:       "/workers",
			wantStatus: http.StatusUnauthorized, wantType: admin.ProblemUnauthorized,
			wantAudit: []string{`"outcome":"denied"`, `"status":401`},
		},
		{
			name:       "no client certificate on an unknown route",
			cert:       func(*testing.T, *env) *tls.Certificate { return nil },
			path:       "/no-such-route",
			wantStatus: http.StatusUnauthorized, wantType: admin.ProblemUnauthorized,
		},
		{
			name: "worker certificate",
			cert: func(t *testing.T, e *env) *tls.Certificate {
				return clientCert(t, e.ca, workerID, time.Hour, time.Now())
			},
			path:       "/workers",
			wantStatus: http.StatusForbidden, wantType: admin.ProblemForbidden,
			wantAudit: []string{`"client":"` + workerID + `"`, `"outcome":"denied"`, `"status":403`},
		},
		{
			name: "admin ID on a worker-shaped (serverAuth) certificate",
			cert: func(t *testing.T, e *env) *tls.Certificate {
				return workerShapedCert(t, e.ca, adminID)
			},
			path:       "/workers",
			wantStatus: http.StatusForbidden, wantType: admin.ProblemForbidden,
		},
		{
			name: "admin path in another trust domain",
			cert: func(t *testing.T, e *env) *tls.Certificate {
				return clientCert(t, e.ca, foreignAdmin, time.Hour, time.Now())
			},
			path:       "/tokens",
			wantStatus: http.StatusForbidden, wantType: admin.ProblemForbidden,
		},
		{
			name: "expired admin certificate",
			cert: func(t *testing.T, e *env) *tls.Certificate {
				return clientCert(t, e.ca, adminID, time.Hour, time.Now().Add(-3*time.Hour))
			},
			path: "/workers",
		},
		{
			name: "admin certificate from another CA",
			cert: func(t *testing.T, _ *env) *tls.Certificate {
				return clientCert(t, newTestCA(t), adminID, time.Hour, time.Now())
			},
			path: "/workers",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, &fakeOperator{})
			c := e.client(t, tt.cert(t, e))
			r, err := do(t, c, http.MethodGet, e.url+admin.Prefix+tt.path, "", nil)
			if tt.wantStatus == 0 {
				if err == nil && r.status < 300 {
					t.Fatalf("request succeeded with status %d; want a failed handshake or an error status", r.status)
				}
			} else {
				if err != nil {
					t.Fatalf("request: %v", err)
				}
				checkProblem(t, r, tt.wantStatus, tt.wantType)
			}
			if calls := e.op.Calls(); len(calls) != 0 {
				t.Errorf("Operator was called: %v", calls)
			}
			audit := e.audit.String()
			for _, want := range tt.wantAudit {
				if !strings.Contains(audit, want) {
					t.Errorf("audit log lacks %s:\n%s", want, audit)
				}
			}
			if strings.Contains(audit, `"admin":`) {
				t.Errorf("audit log records a refused client as admin:\n%s", audit)
			}
		})
	}
}

func TestRequestErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		method     string
		path       string
		body       string
		header     http.Header
		wantStatus int
		wantType   string
		wantDetail string // substring
		wantAllow  string
	}{
		{
			name: "unknown JSON field", method: "POST", path: "/tokens",
			body:       `{"worker":"w1","secret":"x"}`,
			wantStatus: http.StatusBadRequest, wantType: admin.ProblemInvalid, wantDetail: `unknown field "secret"`,
		},
		{
			name: "two JSON values", method: "POST", path: "/revoke",
			body:       `{"serial":"1"}{"serial":"2"}`,
			wantStatus: http.StatusBadRequest, wantType: admin.ProblemInvalid, wantDetail: "exactly one JSON value",
		},
		{
			name: "trailing garbage", method: "POST", path: "/revoke",
			body:       `{"serial":"1"} x`,
			wantStatus: http.StatusBadRequest, wantType: admin.ProblemInvalid, wantDetail: "not valid JSON",
		},
		{
			name: "empty body", method: "POST", path: "/rotate",
			wantStatus: http.StatusBadRequest, wantType: admin.ProblemInvalid, wantDetail: "must be a JSON object",
		},
		{
			name: "not JSON", method: "POST", path: "/tokens", body: `worker=w1`,
			wantStatus: http.StatusBadRequest, wantType: admin.ProblemInvalid, wantDetail: "not valid JSON",
		},
		{
			name: "truncated JSON", method: "POST", path: "/tokens", body: `{"worker":`,
			wantStatus: http.StatusBadRequest, wantType: admin.ProblemInvalid, wantDetail: "truncated",
		},
		{
			name: "wrong field type", method: "POST", path: "/rotate", body: `{"all":"yes"}`,
			wantStatus: http.StatusBadRequest, wantType: admin.ProblemInvalid, wantDetail: `"all"`,
		},
		{
			name: "body too large", method: "POST", path: "/tokens",
			body:       `{"worker":"` + strings.Repeat("a", admin.MaxBodyBytes) + `"}`,
			wantStatus: http.StatusBadRequest, wantType: admin.ProblemInvalid, wantDetail: "exceeds 65536 bytes",
		},
		{
			name: "unknown query parameter", method: "GET", path: "/certificates?wroker=w1",
			wantStatus: http.StatusBadRequest, wantType: admin.ProblemInvalid, wantDetail: `"wroker"`,
		},
		{
			name: "repeated query parameter", method: "GET", path: "/certificates?worker=a&worker=b",
			wantStatus: http.StatusBadRequest, wantType: admin.ProblemInvalid, wantDetail: "2 times",
		},
		{
			name: "bad boolean", method: "GET", path: "/certificates?all=maybe",
			wantStatus: http.StatusBadRequest, wantType: admin.ProblemInvalid, wantDetail: "true or false",
		},
		{
			name: "unknown route", method: "GET", path: "/nope",
			wantStatus: http.StatusNotFound, wantType: admin.ProblemNotFound, wantDetail: "/admin/v1/nope",
		},
		{
			name: "API root", method: "GET", path: "/",
			wantStatus: http.StatusNotFound, wantType: admin.ProblemNotFound,
		},
		{
			name: "unknown worker action", method: "POST", path: "/workers/acme/w1/delete",
			wantStatus: http.StatusNotFound, wantType: admin.ProblemNotFound,
		},
		{
			name: "GET on a POST route", method: "GET", path: "/tokens",
			wantStatus: http.StatusMethodNotAllowed, wantType: admin.ProblemMethodNotAllowed, wantAllow: "POST",
		},
		{
			name: "DELETE on a GET route", method: "DELETE", path: "/workers",
			wantStatus: http.StatusMethodNotAllowed, wantType: admin.ProblemMethodNotAllowed, wantAllow: "GET, HEAD",
		},
		{
			name: "GET on a worker action", method: "GET", path: "/workers/acme/w1/disable",
			wantStatus: http.StatusMethodNotAllowed, wantType: admin.ProblemMethodNotAllowed, wantAllow: "POST",
		},
		{
			name: "cross-origin browser request", method: "POST", path: "/workers/acme/w1/disable",
			header:     http.Header{"Sec-Fetch-Site": {"cross-site"}, "Origin": {"https://evil.example"}},
			wantStatus: http.StatusForbidden, wantType: admin.ProblemForbidden, wantDetail: "cross-origin",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, &fakeOperator{})
			r := mustDo(t, e.adminClient(t), tt.method, e.url+admin.Prefix+tt.path, tt.body, tt.header)
			p := checkProblem(t, r, tt.wantStatus, tt.wantType)
			if !strings.Contains(p.Detail, tt.wantDetail) {
				t.Errorf("detail %q, want it to contain %q", p.Detail, tt.wantDetail)
			}
			if got := r.header.Get("Allow"); got != tt.wantAllow {
				t.Errorf("Allow %q, want %q", got, tt.wantAllow)
			}
			if calls := e.op.Calls(); len(calls) != 0 {
				t.Errorf("Operator was called: %v", calls)
			}
			if !strings.Contains(e.audit.String(), `"admin":"`+adminID+`"`) {
				t.Errorf("audit log lacks the admin:\n%s", e.audit.String())
			}
		})
	}
}

func TestOperatorErrors(t *testing.T) {
	t.Parallel()
	const internalCause = "database on fire at /var/lib/crank/db"
	tests := []struct {
		name       string
		op         *fakeOperator
		wantStatus int
		wantType   string
		wantDetail string // exact
	}{
		{
			name:       "not found",
			op:         &fakeOperator{err: fmt.Errorf("worker %q: %w", "w9", admin.ErrNotFound)},
			wantStatus: http.StatusNotFound, wantType: admin.ProblemNotFound, wantDetail: `worker "w9": not found`,
		},
		{
			name:       "conflict",
			op:         &fakeOperator{err: fmt.Errorf("worker already disabled: %w", admin.ErrConflict)},
			wantStatus: http.StatusConflict, wantType: admin.ProblemConflict, wantDetail: "worker already disabled: conflict",
		},
		{
			name:       "invalid",
			op:         &fakeOperator{err: fmt.Errorf("%w: unknown provisioner", admin.ErrInvalid)},
			wantStatus: http.StatusBadRequest, wantType: admin.ProblemInvalid, wantDetail: "invalid request: unknown provisioner",
		},
		{
			name:       "internal",
			op:         &fakeOperator{err: errors.New(internalCause)},
			wantStatus: http.StatusInternalServerError, wantType: admin.ProblemInternal,
			wantDetail: "the server could not complete the request; the error has been logged",
		},
		{
			name:       "panic",
			op:         &fakeOperator{panic: true},
			wantStatus: http.StatusInternalServerError, wantType: admin.ProblemInternal,
			wantDetail: "the server could not complete the request; the error has been logged",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, tt.op)
			c := e.adminClient(t)
			for _, rt := range []struct{ method, path, body string }{
				{"POST", "/tokens", `{}`},
				{"GET", "/workers", ""},
				{"POST", "/workers/acme/w9/disable", ""},
				{"GET", "/accounts", ""},
				{"GET", "/certificates", ""},
				{"POST", "/revoke", `{"worker":"w9"}`},
				{"POST", "/rotate", `{"worker":"w9"}`},
			} {
				r := mustDo(t, c, rt.method, e.url+admin.Prefix+rt.path, rt.body, nil)
				p := checkProblem(t, r, tt.wantStatus, tt.wantType)
				if p.Detail != tt.wantDetail {
					t.Errorf("%s %s: detail %q, want %q", rt.method, rt.path, p.Detail, tt.wantDetail)
				}
				if strings.Contains(string(r.body), internalCause) {
					t.Errorf("%s %s: response leaks the internal error: %s", rt.method, rt.path, r.body)
				}
			}
			if tt.wantStatus == http.StatusInternalServerError {
				if logs := e.log.String(); !strings.Contains(logs, "admin: request failed") {
					t.Errorf("log lacks the internal error:\n%s", logs)
				}
			}
			if tt.op.err != nil && tt.wantStatus == http.StatusInternalServerError &&
				!strings.Contains(e.log.String(), internalCause) {
				t.Errorf("log lacks the cause %q:\n%s", internalCause, e.log.String())
			}
			if n := strings.Count(e.audit.String(), `"outcome":"`); n != 7 {
				t.Errorf("%d audit records, want 7:\n%s", n, e.audit.String())
			}
		})
	}
}

func TestAuditNeverLogsSecrets(t *testing.T) {
	t.Parallel()
	e := newEnv(t, &fakeOperator{})
	r := mustDo(t, e.adminClient(t), "POST", e.url+admin.Prefix+"/tokens", `{"provisioner":"acme","worker":"w1","ttl":"1h"}`, nil)
	if r.status != http.StatusCreated {
		t.Fatalf("status %d, want 201; body %s", r.status, r.body)
	}
	// The client does get the secrets.
	if !strings.Contains(string(r.body), tokenSecret) || !strings.Contains(string(r.body), hmacSecret) {
		t.Fatalf("response lacks the credentials: %s", r.body)
	}

	lines := strings.Split(strings.TrimSpace(e.audit.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("%d audit lines, want 1:\n%s", len(lines), e.audit.String())
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatalf("audit line: %v", err)
	}
	for _, k := range []string{"time", "level", "remote", "duration"} {
		if _, ok := got[k]; !ok {
			t.Errorf("audit record lacks %q", k)
		}
		delete(got, k)
	}
	want := map[string]any{
		"msg":         "admin request",
		"admin":       adminID,
		"method":      "POST",
		"path":        "/admin/v1/tokens",
		"status":      float64(201),
		"outcome":     "ok",
		"provisioner": "acme",
		"worker":      "w1",
		"ttl":         "1h",
		"expires_at":  fixed().Format(time.RFC3339),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("audit record (-want +got):\n%s", diff)
	}
	for name, logs := range map[string]string{"audit": e.audit.String(), "log": e.log.String()} {
		for _, secret := range []string{tokenSecret, hmacSecret} {
			if strings.Contains(logs, secret) {
				t.Errorf("%s log contains a secret:\n%s", name, logs)
			}
		}
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	id := spiffeid.RequireFromString(adminID)
	tests := []struct {
		name    string
		cfg     admin.Config
		wantErr []string // substrings; nil means success
	}{
		{name: "minimal", cfg: admin.Config{Operator: &fakeOperator{}, Admins: []spiffeid.ID{id}}},
		{
			name:    "empty",
			cfg:     admin.Config{},
			wantErr: []string{"Operator is required", "at least one SPIFFE ID"},
		},
		{
			name:    "zero admin",
			cfg:     admin.Config{Operator: &fakeOperator{}, Admins: []spiffeid.ID{id, {}}},
			wantErr: []string{"Admins[1] is empty"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			api, err := admin.New(tt.cfg)
			if tt.wantErr == nil {
				if err != nil || api == nil || api.Handler() == nil {
					t.Fatalf("New = %v, %v; want a usable API", api, err)
				}
				return
			}
			if err == nil {
				t.Fatal("New succeeded; want an error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// A request that reaches the handler without TLS at all (a plain-HTTP
// listener by mistake) is unauthenticated.
func TestPlainHTTPIsUnauthenticated(t *testing.T) {
	t.Parallel()
	op := &fakeOperator{}
	api, err := admin.New(admin.Config{Operator: op, Admins: []spiffeid.ID{spiffeid.RequireFromString(adminID)}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := &http.Server{Handler: api.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	r := mustDo(t, &http.Client{Transport: tr}, "GET", "http://"+ln.Addr().String()+admin.Prefix+"/workers", "", nil)
	checkProblem(t, r, http.StatusUnauthorized, admin.ProblemUnauthorized)
	if len(op.Calls()) != 0 {
		t.Error("Operator was called")
	}
}

const controllerID = "spiffe://crank.internal/controller/crank"

// buildController may mint for workers build-N of provisioner workers, for
// at most an hour, half an hour by default.
func buildController() admin.Controller {
	return admin.Controller{
		ID:            spiffeid.RequireFromString(controllerID),
		Provisioner:   "workers",
		WorkerPattern: "build-[0-9]+",
		MaxTTL:        time.Hour,
		DefaultTTL:    30 * time.Minute,
	}
}

// TestController checks what a controller may do (mint inside its limits)
// and that everything else is a 403 naming those limits, while an admin
// beside it keeps every power.
func TestController(t *testing.T) {
	t.Parallel()
	const scope = controllerID + ` is a controller: it may only mint join tokens (POST /admin/v1/tokens) for provisioner "workers" and workers matching ^(?:build-[0-9]+)$, with a ttl of at most 1h0m0s`
	asController := func(t *testing.T, e *env) *tls.Certificate {
		return clientCert(t, e.ca, controllerID, time.Hour, time.Now())
	}
	asAdmin := func(t *testing.T, e *env) *tls.Certificate {
		return clientCert(t, e.ca, adminID, time.Hour, time.Now())
	}
	mint := func(prov, worker, ttl string) []call {
		return []call{{"MintToken", []any{admin.TokenRequest{Provisioner: prov, Worker: worker, TTL: ttl}}}}
	}
	tests := []struct {
		name       string
		cert       func(t *testing.T, e *env) *tls.Certificate // default asController
		method     string
		path       string
		body       string
		wantStatus int
		wantDetail string // exact, for problems
		wantCalls  []call
		wantAudit  []string // substrings of the audit record
	}{
		{
			name: "mint inside the pattern", method: "POST", path: "/tokens",
			body:       `{"provisioner":"workers","worker":"build-7","ttl":"10m"}`,
			wantStatus: http.StatusCreated, wantCalls: mint("workers", "build-7", "10m"),
			wantAudit: []string{`"controller":"` + controllerID + `"`, `"outcome":"ok"`, `"worker":"build-7"`, `"ttl":"10m"`, `"expires_at":`},
		},
		{
			name: "defaults: own provisioner and default TTL", method: "POST", path: "/tokens",
			body:       `{"worker":"build-8"}`,
			wantStatus: http.StatusCreated, wantCalls: mint("workers", "build-8", "30m0s"),
			wantAudit: []string{`"provisioner":"workers"`, `"ttl":"30m0s"`},
		},
		{
			name: "TTL at the maximum", method: "POST", path: "/tokens",
			body:       `{"worker":"build-9","ttl":"60m"}`,
			wantStatus: http.StatusCreated, wantCalls: mint("workers", "build-9", "60m"),
		},
		{
			name: "worker outside the pattern", method: "POST", path: "/tokens",
			body:       `{"worker":"web-1"}`,
			wantStatus: http.StatusForbidden, wantDetail: `worker "web-1" does not match the controller's pattern; ` + scope,
			wantAudit: []string{`"controller":"` + controllerID + `"`, `"outcome":"denied"`, `"worker":"web-1"`, `"detail":"worker \"web-1\" does not match`},
		},
		{
			name: "pattern is anchored at the start", method: "POST", path: "/tokens",
			body:       `{"worker":"evil-build-1"}`,
			wantStatus: http.StatusForbidden, wantDetail: `worker "evil-build-1" does not match the controller's pattern; ` + scope,
		},
		{
			name: "pattern is anchored at the end", method: "POST", path: "/tokens",
			body:       `{"worker":"build-1-x"}`,
			wantStatus: http.StatusForbidden, wantDetail: `worker "build-1-x" does not match the controller's pattern; ` + scope,
		},
		{
			name: "another provisioner", method: "POST", path: "/tokens",
			body:       `{"provisioner":"other","worker":"build-7"}`,
			wantStatus: http.StatusForbidden, wantDetail: `provisioner "other" is not the controller's; ` + scope,
		},
		{
			name: "EAB credentials (no worker)", method: "POST", path: "/tokens",
			body:       `{"provisioner":"workers"}`,
			wantStatus: http.StatusForbidden, wantDetail: "a worker name is required; " + scope,
		},
		{
			name: "TTL above the maximum", method: "POST", path: "/tokens",
			body:       `{"worker":"build-7","ttl":"61m"}`,
			wantStatus: http.StatusForbidden, wantDetail: "ttl 1h1m0s exceeds the controller's maximum; " + scope,
		},
		{
			name: "zero TTL would mean the provisioner's default", method: "POST", path: "/tokens",
			body:       `{"worker":"build-7","ttl":"0s"}`,
			wantStatus: http.StatusBadRequest, wantDetail: "ttl: 0s must be positive",
		},
		{
			name: "TTL not a duration", method: "POST", path: "/tokens",
			body:       `{"worker":"build-7","ttl":"soon"}`,
			wantStatus: http.StatusBadRequest, wantDetail: `ttl: time: invalid duration "soon"`,
		},
		{
			name: "malformed body", method: "POST", path: "/tokens",
			body:       `{"worker":"build-7","secret":"x"}`,
			wantStatus: http.StatusBadRequest, wantDetail: `invalid request: request body: json: unknown field "secret"`,
		},
		{name: "list workers", method: "GET", path: "/workers", wantStatus: http.StatusForbidden, wantDetail: scope},
		{name: "list accounts", method: "GET", path: "/accounts", wantStatus: http.StatusForbidden, wantDetail: scope},
		{name: "list certificates", method: "GET", path: "/certificates?worker=build-7", wantStatus: http.StatusForbidden, wantDetail: scope},
		{name: "revoke", method: "POST", path: "/revoke", body: `{"worker":"build-7"}`, wantStatus: http.StatusForbidden, wantDetail: scope},
		{name: "rotate", method: "POST", path: "/rotate", body: `{"worker":"build-7"}`, wantStatus: http.StatusForbidden, wantDetail: scope},
		{name: "disable", method: "POST", path: "/workers/workers/build-7/disable", wantStatus: http.StatusForbidden, wantDetail: scope},
		{name: "enable", method: "POST", path: "/workers/workers/build-7/enable", wantStatus: http.StatusForbidden, wantDetail: scope},
		{name: "unknown route is not a 404", method: "GET", path: "/admin/cert", wantStatus: http.StatusForbidden, wantDetail: scope},
		{name: "wrong method is not a 405", method: "GET", path: "/tokens", wantStatus: http.StatusForbidden, wantDetail: scope},
		{name: "trailing slash", method: "POST", path: "/tokens/", body: `{"worker":"build-7"}`, wantStatus: http.StatusForbidden, wantDetail: scope},
		{
			name: "controller ID on a worker-shaped (serverAuth) certificate", method: "POST", path: "/tokens",
			cert:       func(t *testing.T, e *env) *tls.Certificate { return workerShapedCert(t, e.ca, controllerID) },
			body:       `{"worker":"build-7"}`,
			wantStatus: http.StatusForbidden,
			wantDetail: controllerID + " presented a server certificate; operator and controller certificates are client-only",
			wantAudit:  []string{`"client":"` + controllerID + `"`},
		},
		{
			name: "admin mints outside every controller's limits", method: "POST", path: "/tokens", cert: asAdmin,
			body:       `{"provisioner":"other","worker":"web-1","ttl":"48h"}`,
			wantStatus: http.StatusCreated, wantCalls: mint("other", "web-1", "48h"),
			wantAudit: []string{`"admin":"` + adminID + `"`},
		},
		{
			name: "admin lists workers", method: "GET", path: "/workers", cert: asAdmin,
			wantStatus: http.StatusOK, wantCalls: []call{{Method: "Workers"}},
		},
		{
			name: "admin disables a worker", method: "POST", path: "/workers/workers/build-7/disable", cert: asAdmin,
			wantStatus: http.StatusOK, wantCalls: []call{{"SetWorkerDisabled", []any{"workers", "build-7", true}}},
		},
		{
			name: "admin revokes", method: "POST", path: "/revoke", cert: asAdmin, body: `{"worker":"build-7"}`,
			wantStatus: http.StatusOK, wantCalls: []call{{"Revoke", []any{admin.RevokeRequest{Worker: "build-7"}}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnvWith(t, &fakeOperator{}, []admin.Controller{buildController()})
			cert := tt.cert
			if cert == nil {
				cert = asController
			}
			r := mustDo(t, e.client(t, cert(t, e)), tt.method, e.url+admin.Prefix+tt.path, tt.body, nil)
			if tt.wantStatus >= 400 {
				wantType := admin.ProblemForbidden
				if tt.wantStatus == http.StatusBadRequest {
					wantType = admin.ProblemInvalid
				}
				if p := checkProblem(t, r, tt.wantStatus, wantType); p.Detail != tt.wantDetail {
					t.Errorf("detail\n %q\nwant\n %q", p.Detail, tt.wantDetail)
				}
			} else if r.status != tt.wantStatus {
				t.Fatalf("status %d, want %d; body %s", r.status, tt.wantStatus, r.body)
			}
			if diff := cmp.Diff(tt.wantCalls, e.op.Calls()); diff != "" {
				t.Errorf("Operator calls (-want +got):\n%s", diff)
			}
			audit := e.audit.String()
			if n := strings.Count(audit, `"msg":"admin request"`); n != 1 {
				t.Errorf("%d audit records, want 1:\n%s", n, audit)
			}
			for _, want := range tt.wantAudit {
				if !strings.Contains(audit, want) {
					t.Errorf("audit record lacks %s:\n%s", want, audit)
				}
			}
			if tt.cert == nil && strings.Contains(audit, `"admin":`) {
				t.Errorf("audit record names the controller an admin:\n%s", audit)
			}
			if strings.Contains(audit, hmacSecret) || strings.Contains(audit, tokenSecret) {
				t.Errorf("audit record contains a secret:\n%s", audit)
			}
		})
	}
}

// A controller is not an admin, so an Operator attributing its records by
// AdminID does not mistake it for one.
func TestControllerIsNotAdminID(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, &fakeOperator{}, []admin.Controller{buildController()})
	c := e.client(t, clientCert(t, e.ca, controllerID, time.Hour, time.Now()))
	if r := mustDo(t, c, "POST", e.url+admin.Prefix+"/tokens", `{"worker":"build-1"}`, nil); r.status != http.StatusCreated {
		t.Fatalf("status %d, want 201; body %s", r.status, r.body)
	}
	if diff := cmp.Diff([]string{""}, e.op.Admins()); diff != "" {
		t.Errorf("AdminID seen by the Operator (-want +got):\n%s", diff)
	}
}

func TestNewControllers(t *testing.T) {
	t.Parallel()
	with := func(mutate func(c *admin.Controller)) admin.Controller {
		c := buildController()
		mutate(&c)
		return c
	}
	tests := []struct {
		name        string
		controllers []admin.Controller
		wantErr     []string // substrings; nil means success
	}{
		{name: "valid", controllers: []admin.Controller{buildController()}},
		{name: "default TTL may be zero", controllers: []admin.Controller{with(func(c *admin.Controller) { c.DefaultTTL = 0 })}},
		{
			name:        "also an admin",
			controllers: []admin.Controller{with(func(c *admin.Controller) { c.ID = spiffeid.RequireFromString(adminID) })},
			wantErr:     []string{"Controllers[0]: " + adminID + " is also an admin"},
		},
		{
			name:        "duplicate",
			controllers: []admin.Controller{buildController(), buildController()},
			wantErr:     []string{"Controllers[1]: duplicate controller " + controllerID},
		},
		{
			name:        "empty",
			controllers: []admin.Controller{{}},
			wantErr:     []string{"Controllers[0]: ID is empty", "Provisioner is required", "WorkerPattern is required", "MaxTTL must be positive"},
		},
		{
			name: "bad pattern and TTLs",
			controllers: []admin.Controller{with(func(c *admin.Controller) {
				c.WorkerPattern, c.DefaultTTL = "build-(", 2*time.Hour
			})},
			wantErr: []string{"Controllers[0]: WorkerPattern: error parsing regexp", "DefaultTTL must be within [0, MaxTTL]"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			api, err := admin.New(admin.Config{
				Operator:    &fakeOperator{},
				Admins:      []spiffeid.ID{spiffeid.RequireFromString(adminID)},
				Controllers: tt.controllers,
			})
			if tt.wantErr == nil {
				if err != nil || api == nil {
					t.Fatalf("New = %v, %v; want a usable API", api, err)
				}
				return
			}
			if err == nil {
				t.Fatal("New succeeded; want an error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
