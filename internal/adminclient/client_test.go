package adminclient_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/adminclient"
	"github.com/crank-platform/crank-ca/internal/pki"
	"github.com/crank-platform/crank-ca/internal/testpki"
)

const (
	adminID  = "spiffe://crank.internal/admin/operator"
	workerID = "spiffe://crank.internal/worker/w1"
)

func fixed() time.Time { return time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC) }

type call struct {
	Method string
	Args   []any
	Admin  string
}

// fakeOperator records calls and answers with canned values or err.
type fakeOperator struct {
	mu    sync.Mutex
	err   error
	calls []call
}

func (f *fakeOperator) record(ctx context.Context, method string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	id, _ := admin.AdminID(ctx)
	f.calls = append(f.calls, call{method, args, id.String()})
	return f.err
}

func (f *fakeOperator) Calls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

func (f *fakeOperator) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func (f *fakeOperator) MintToken(ctx context.Context, req admin.TokenRequest) (admin.TokenResponse, error) {
	if err := f.record(ctx, "MintToken", req); err != nil {
		return admin.TokenResponse{}, err
	}
	return admin.TokenResponse{KID: "kid-1", HMACKey: "hmac", Token: "kid-1.tok", ExpiresAt: fixed()}, nil
}

func (f *fakeOperator) Workers(ctx context.Context) ([]admin.Worker, error) {
	if err := f.record(ctx, "Workers"); err != nil {
		return nil, err
	}
	return []admin.Worker{{Provisioner: "workers", Name: "w1", Disabled: true, DisabledAt: fixed(), Accounts: 1, LiveCertificates: 2}}, nil
}

func (f *fakeOperator) Accounts(ctx context.Context) ([]admin.Account, error) {
	if err := f.record(ctx, "Accounts"); err != nil {
		return nil, err
	}
	return nil, nil // encodes as []
}

func (f *fakeOperator) Certificates(ctx context.Context, filter admin.CertFilter) ([]admin.Certificate, error) {
	if err := f.record(ctx, "Certificates", filter); err != nil {
		return nil, err
	}
	return []admin.Certificate{{
		Serial: "123", Provisioner: "workers", Worker: filter.Worker, SPIFFEID: workerID,
		DNSNames: []string{"w1.workers.crank.internal"}, NotBefore: fixed(), NotAfter: fixed().Add(time.Hour),
	}}, nil
}

func (f *fakeOperator) Revoke(ctx context.Context, req admin.RevokeRequest) (admin.RevokeResult, error) {
	if err := f.record(ctx, "Revoke", req); err != nil {
		return admin.RevokeResult{}, err
	}
	return admin.RevokeResult{Revoked: []string{"123"}}, nil
}

func (f *fakeOperator) Rotate(ctx context.Context, req admin.RotateRequest) (admin.RotateResult, error) {
	if err := f.record(ctx, "Rotate", req); err != nil {
		return admin.RotateResult{}, err
	}
	return admin.RotateResult{}, nil
}

func (f *fakeOperator) SetWorkerDisabled(ctx context.Context, prov, worker string, disabled bool) (admin.Worker, error) {
	if err := f.record(ctx, "SetWorkerDisabled", prov, worker, disabled); err != nil {
		return admin.Worker{}, err
	}
	return admin.Worker{Provisioner: prov, Name: worker, Disabled: disabled}, nil
}

// env is a CA on disk and an mTLS server with the real admin handler in
// front of a fake Operator.
type env struct {
	dir   string
	ca    *pki.CA
	files pki.Files
	op    *fakeOperator
	url   string
}

func newCA(t *testing.T, dir string) (*pki.CA, pki.Files) {
	t.Helper()
	files := pki.DefaultFiles(dir)
	ca, err := pki.Create(files, pki.CreateOptions{Name: "Test"})
	if err != nil {
		t.Fatalf("pki.Create: %v", err)
	}
	return ca, files
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{dir: t.TempDir(), op: &fakeOperator{}}
	e.ca, e.files = newCA(t, e.dir)
	e.url = serve(t, e.ca, e.op, nil)
	return e
}

// serve starts the admin API for op on 127.0.0.1 with ca's server
// certificate; extra, if not nil, handles everything outside the API.
func serve(t *testing.T, ca *pki.CA, op admin.Operator, extra http.Handler) string {
	t.Helper()
	api, err := admin.New(admin.Config{Operator: op, Admins: []spiffeid.ID{spiffeid.RequireFromString(adminID)}})
	if err != nil {
		t.Fatalf("admin.New: %v", err)
	}
	sc, err := pki.NewServerCerts(pki.ServerCertsConfig{CA: ca, DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatalf("pki.NewServerCerts: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root)
	mux := http.NewServeMux()
	mux.Handle(admin.Prefix+"/", api.Handler())
	if extra != nil {
		mux.Handle("/", extra)
	}
	return testpki.Serve(t, mux, &tls.Config{
		MinVersion:     tls.VersionTLS12,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      roots,
		GetCertificate: sc.GetCertificate,
	})
}

// writeClientCert issues a client certificate for id into dir and returns
// the paths.
func writeClientCert(t *testing.T, ca *pki.CA, id string, lifetime time.Duration, now time.Time) (string, string) {
	t.Helper()
	certPEM, keyPEM, err := pki.IssueClientCert(ca, spiffeid.RequireFromString(id), lifetime, now)
	if err != nil {
		t.Fatalf("IssueClientCert: %v", err)
	}
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key")
	if err := os.WriteFile(cert, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func (e *env) client(t *testing.T, id string) *adminclient.Client {
	t.Helper()
	cert, key := writeClientCert(t, e.ca, id, time.Hour, time.Now())
	c, err := adminclient.New(adminclient.Config{URL: e.url, RootCert: e.files.RootCert, CertFile: cert, KeyFile: key, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("adminclient.New: %v", err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func TestMethodsRoundTrip(t *testing.T) {
	e := newEnv(t)
	c := e.client(t, adminID)
	ctx := t.Context()

	tok, err := c.MintToken(ctx, admin.TokenRequest{Worker: "w1", TTL: "1h"})
	if err != nil {
		t.Fatalf("MintToken: %v", err)
	}
	if want := (admin.TokenResponse{KID: "kid-1", HMACKey: "hmac", Token: "kid-1.tok", ExpiresAt: fixed()}); tok != want {
		t.Errorf("MintToken = %+v, want %+v", tok, want)
	}
	ws, err := c.Workers(ctx)
	if err != nil {
		t.Fatalf("Workers: %v", err)
	}
	if diff := cmp.Diff([]admin.Worker{{Provisioner: "workers", Name: "w1", Disabled: true, DisabledAt: fixed(), Accounts: 1, LiveCertificates: 2}}, ws); diff != "" {
		t.Errorf("Workers (-want +got):\n%s", diff)
	}
	as, err := c.Accounts(ctx)
	if err != nil || as == nil || len(as) != 0 {
		t.Errorf("Accounts = %#v, %v; want empty non-nil", as, err)
	}
	cs, err := c.Certificates(ctx, admin.CertFilter{Worker: "w1", All: true})
	if err != nil {
		t.Fatalf("Certificates: %v", err)
	}
	if len(cs) != 1 || cs[0].Serial != "123" || cs[0].Worker != "w1" || !cs[0].NotAfter.Equal(fixed().Add(time.Hour)) {
		t.Errorf("Certificates = %+v", cs)
	}
	if _, err := c.Certificates(ctx, admin.CertFilter{}); err != nil {
		t.Fatalf("Certificates (no filter): %v", err)
	}
	rv, err := c.Revoke(ctx, admin.RevokeRequest{Serial: "123", Reason: "keyCompromise"})
	if err != nil || len(rv.Revoked) != 1 || rv.Revoked[0] != "123" {
		t.Errorf("Revoke = %+v, %v", rv, err)
	}
	before := fixed()
	rt, err := c.Rotate(ctx, admin.RotateRequest{All: true, IssuedBefore: &before})
	if err != nil || rt.Rotated == nil || len(rt.Rotated) != 0 {
		t.Errorf("Rotate = %#v, %v; want empty non-nil list", rt, err)
	}
	w, err := c.SetWorkerDisabled(ctx, "workers", "w1", true)
	if err != nil || !w.Disabled || w.Name != "w1" {
		t.Errorf("SetWorkerDisabled(true) = %+v, %v", w, err)
	}
	// Path segments are escaped, and arrive intact.
	if _, err := c.SetWorkerDisabled(ctx, "work ers", "a/b", false); err != nil {
		t.Errorf("SetWorkerDisabled(escaped) = %v", err)
	}

	want := []call{
		{"MintToken", []any{admin.TokenRequest{Worker: "w1", TTL: "1h"}}, adminID},
		{"Workers", nil, adminID},
		{"Accounts", nil, adminID},
		{"Certificates", []any{admin.CertFilter{Worker: "w1", All: true}}, adminID},
		{"Certificates", []any{admin.CertFilter{}}, adminID},
		{"Revoke", []any{admin.RevokeRequest{Serial: "123", Reason: "keyCompromise"}}, adminID},
		{"Rotate", []any{admin.RotateRequest{All: true, IssuedBefore: &before}}, adminID},
		{"SetWorkerDisabled", []any{"workers", "w1", true}, adminID},
		{"SetWorkerDisabled", []any{"work ers", "a/b", false}, adminID},
	}
	if diff := cmp.Diff(want, e.op.Calls()); diff != "" {
		t.Errorf("operator calls (-want +got):\n%s", diff)
	}
}

func TestProblemErrors(t *testing.T) {
	e := newEnv(t)
	c := e.client(t, adminID)
	for _, tc := range []struct {
		err    error
		status int
		typ    string
		detail string
	}{
		{fmt.Errorf("%w: worker %q is disabled", admin.ErrConflict, "w1"), 409, admin.ProblemConflict, `conflict: worker "w1" is disabled`},
		{fmt.Errorf("%w: no such certificate", admin.ErrNotFound), 404, admin.ProblemNotFound, "not found: no such certificate"},
		{fmt.Errorf("%w: bad ttl", admin.ErrInvalid), 400, admin.ProblemInvalid, "invalid request: bad ttl"},
		{errors.New("disk on fire"), 500, admin.ProblemInternal, ""},
	} {
		e.op.fail(tc.err)
		_, err := c.MintToken(t.Context(), admin.TokenRequest{Worker: "w1"})
		var pe *adminclient.ProblemError
		if !errors.As(err, &pe) {
			t.Fatalf("%v: got %T %v, want *ProblemError", tc.err, err, err)
		}
		if pe.Status != tc.status || pe.Problem.Status != tc.status || pe.Problem.Type != tc.typ {
			t.Errorf("%v: got %+v", tc.err, pe)
		}
		if tc.detail != "" && err.Error() != tc.detail {
			t.Errorf("%v: Error() = %q, want %q", tc.err, err.Error(), tc.detail)
		}
		if strings.Contains(err.Error(), "disk on fire") {
			t.Errorf("internal error leaked: %q", err)
		}
		if errors.Is(err, adminclient.ErrUnreachable) {
			t.Errorf("%v: problem error marked unreachable", tc.err)
		}
	}
}

func TestNotAnAdmin(t *testing.T) {
	e := newEnv(t)
	c := e.client(t, workerID)
	_, err := c.Workers(t.Context())
	var pe *adminclient.ProblemError
	if !errors.As(err, &pe) || pe.Status != http.StatusForbidden || pe.Problem.Type != admin.ProblemForbidden {
		t.Fatalf("worker certificate: got %v, want 403 problem", err)
	}
	if !strings.Contains(err.Error(), workerID) {
		t.Errorf("detail %q does not name the client", err)
	}
	if len(e.op.Calls()) != 0 {
		t.Error("operator called for a non-admin")
	}
}

func TestUnreachable(t *testing.T) {
	e := newEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cert, key := writeClientCert(t, e.ca, adminID, time.Hour, time.Now())
	c, err := adminclient.New(adminclient.Config{URL: "https://" + addr, RootCert: e.files.RootCert, CertFile: cert, KeyFile: key, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.MintToken(t.Context(), admin.TokenRequest{Worker: "w1"})
	if !errors.Is(err, adminclient.ErrUnreachable) {
		t.Fatalf("closed port: got %v, want ErrUnreachable", err)
	}
	var pe *adminclient.ProblemError
	if errors.As(err, &pe) {
		t.Errorf("unreachable error is also a ProblemError: %v", err)
	}
}

// TestTrustsOnlyTheCARoot: a server whose certificate comes from another
// CA is refused in the handshake; that is not "unreachable".
func TestTrustsOnlyTheCARoot(t *testing.T) {
	e := newEnv(t)
	other, _ := newCA(t, t.TempDir())
	url := serve(t, other, e.op, nil)
	cert, key := writeClientCert(t, e.ca, adminID, time.Hour, time.Now())
	c, err := adminclient.New(adminclient.Config{URL: url, RootCert: e.files.RootCert, CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Workers(t.Context())
	var uerr x509.UnknownAuthorityError
	if !errors.As(err, &uerr) {
		var cverr *tls.CertificateVerificationError
		if !errors.As(err, &cverr) {
			t.Fatalf("foreign server: got %v, want a certificate verification error", err)
		}
	}
	if errors.Is(err, adminclient.ErrUnreachable) {
		t.Errorf("TLS failure marked unreachable: %v", err)
	}
	if len(e.op.Calls()) != 0 {
		t.Error("request reached the operator")
	}
}

// TestNonProblemResponse: an error answer without a problem document (here
// a base URL whose path is not crank-ca's) still becomes a ProblemError.
func TestNonProblemResponse(t *testing.T) {
	e := &env{dir: t.TempDir(), op: &fakeOperator{}}
	e.ca, e.files = newCA(t, e.dir)
	e.url = serve(t, e.ca, e.op, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "404 page not found", http.StatusNotFound)
	})) + "/elsewhere/"
	c := e.client(t, adminID)
	_, err := c.Workers(t.Context())
	var pe *adminclient.ProblemError
	if !errors.As(err, &pe) || pe.Status != 404 || !strings.Contains(err.Error(), "without a problem document") {
		t.Fatalf("got %v, want a synthesised 404 problem", err)
	}
}

func TestNewRefuses(t *testing.T) {
	e := newEnv(t)
	cert, key := writeClientCert(t, e.ca, adminID, time.Hour, time.Now())
	expCert, expKey := writeClientCert(t, e.ca, adminID, time.Hour, time.Now().Add(-48*time.Hour))
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for name, tc := range map[string]struct {
		cfg  adminclient.Config
		want string
	}{
		"http":         {adminclient.Config{URL: "http://127.0.0.1:1", RootCert: e.files.RootCert, CertFile: cert, KeyFile: key}, "https"},
		"no url":       {adminclient.Config{RootCert: e.files.RootCert, CertFile: cert, KeyFile: key}, "URL is required"},
		"no root":      {adminclient.Config{URL: e.url, RootCert: missing, CertFile: cert, KeyFile: key}, "missing.pem"},
		"root not pem": {adminclient.Config{URL: e.url, RootCert: key, CertFile: cert, KeyFile: key}, "no PEM certificate"},
		"no cert":      {adminclient.Config{URL: e.url, RootCert: e.files.RootCert, CertFile: missing, KeyFile: key}, "missing.pem"},
		"key mismatch": {adminclient.Config{URL: e.url, RootCert: e.files.RootCert, CertFile: cert, KeyFile: expKey}, "admin certificate"},
		"expired":      {adminclient.Config{URL: e.url, RootCert: e.files.RootCert, CertFile: expCert, KeyFile: expKey}, "expired"},
		"negative":     {adminclient.Config{URL: e.url, RootCert: e.files.RootCert, CertFile: cert, KeyFile: key, Timeout: -1}, "negative"},
	} {
		if _, err := adminclient.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New error %v, want one containing %q", name, err, tc.want)
		}
	}
}

func TestProblemErrorFallbacks(t *testing.T) {
	for _, tc := range []struct {
		pe   adminclient.ProblemError
		want string
	}{
		{adminclient.ProblemError{Status: 409, Problem: admin.Problem{Title: "Conflict", Detail: "d"}}, "d"},
		{adminclient.ProblemError{Status: 409, Problem: admin.Problem{Title: "Conflict"}}, "Conflict"},
		{adminclient.ProblemError{Status: 502}, "HTTP 502 Bad Gateway"},
	} {
		if got := tc.pe.Error(); got != tc.want {
			t.Errorf("%+v: Error() = %q, want %q", tc.pe, got, tc.want)
		}
	}
}
