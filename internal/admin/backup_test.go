package admin_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/pki"
	"github.com/crank-platform/crank-ca/internal/testpki"
)

// backupOperator is a fakeOperator that can also back up: it answers with
// data, or with err.
type backupOperator struct {
	*fakeOperator
	data []byte
	err  error
}

func (b *backupOperator) Backup(ctx context.Context) (admin.Backup, error) {
	if err := b.record(ctx, "Backup"); err != nil {
		return admin.Backup{}, err
	}
	if b.err != nil {
		return admin.Backup{}, b.err
	}
	return admin.Backup{Size: int64(len(b.data)), Body: io.NopCloser(bytes.NewReader(b.data))}, nil
}

// newBackupEnv is newEnvWith for any Operator, with a controller.
func newBackupEnv(t *testing.T, op admin.Operator) *env {
	t.Helper()
	e := &env{ca: newTestCA(t), log: &syncBuffer{}, audit: &syncBuffer{}}
	e.roots = x509.NewCertPool()
	e.roots.AddCert(e.ca.Root)
	api, err := admin.New(admin.Config{
		Operator: op,
		Admins:   []spiffeid.ID{spiffeid.RequireFromString(adminID)},
		Controllers: []admin.Controller{{
			ID:          spiffeid.RequireFromString("spiffe://crank.internal/controller/crank"),
			Provisioner: "workers", WorkerPattern: "w[0-9]+", MaxTTL: time.Hour,
		}},
		Logger: slog.New(slog.NewJSONHandler(e.log, nil)),
		Audit:  slog.New(slog.NewJSONHandler(e.audit, nil)),
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

func TestBackupRoute(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("bbolt page "), 50_000) // larger than any JSON answer's buffer
	op := &backupOperator{fakeOperator: &fakeOperator{}, data: data}
	e := newBackupEnv(t, op)
	url := e.url + admin.BackupPath

	r := mustDo(t, e.adminClient(t), http.MethodGet, url, "", nil)
	if r.status != http.StatusOK || !bytes.Equal(r.body, data) {
		t.Fatalf("GET backup: status %d, %d bytes, want 200 and the %d bytes of the copy", r.status, len(r.body), len(data))
	}
	for k, want := range map[string]string{
		"Content-Type":   "application/octet-stream",
		"Content-Length": "550000",
		"Cache-Control":  "no-store",
	} {
		if got := r.header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if !strings.Contains(e.audit.String(), `"path":"/admin/v1/backup","status":200,"outcome":"ok"`) ||
		!strings.Contains(e.audit.String(), `"bytes":550000`) {
		t.Errorf("audit record of the backup missing or incomplete:\n%s", e.audit)
	}
	if strings.Contains(e.log.String(), "write timeout stays") {
		t.Errorf("the backup could not lift the write deadline:\n%s", e.log)
	}
	if strings.Contains(e.audit.String(), "bbolt page") || strings.Contains(e.log.String(), "bbolt page") {
		t.Error("the backup's content reached a log")
	}

	head := mustDo(t, e.adminClient(t), http.MethodHead, url, "", nil)
	if head.status != http.StatusOK || head.header.Get("Content-Length") != "550000" || len(head.body) != 0 {
		t.Errorf("HEAD backup: status %d, Content-Length %q, %d bytes", head.status, head.header.Get("Content-Length"), len(head.body))
	}

	post := mustDo(t, e.adminClient(t), http.MethodPost, url, "{}", nil)
	checkProblem(t, post, http.StatusMethodNotAllowed, admin.ProblemMethodNotAllowed)
	if allow := post.header.Get("Allow"); allow != "GET, HEAD" {
		t.Errorf("Allow %q", allow)
	}
	checkProblem(t, mustDo(t, e.adminClient(t), http.MethodGet, url+"?compress=1", "", nil), http.StatusBadRequest, admin.ProblemInvalid)

	calls := len(op.Calls())
	refusals := []struct {
		name       string
		cert       *tls.Certificate
		wantStatus int
		wantType   string
	}{
		{"no certificate", nil, http.StatusUnauthorized, admin.ProblemUnauthorized},
		{"worker", clientCert(t, e.ca, workerID, time.Hour, time.Now()), http.StatusForbidden, admin.ProblemForbidden},
		{"controller", clientCert(t, e.ca, "spiffe://crank.internal/controller/crank", time.Hour, time.Now()), http.StatusForbidden, admin.ProblemForbidden},
	}
	for _, tc := range refusals {
		r := mustDo(t, e.client(t, tc.cert), http.MethodGet, url, "", nil)
		checkProblem(t, r, tc.wantStatus, tc.wantType)
		if bytes.Contains(r.body, data[:20]) {
			t.Errorf("%s: the refusal carries the backup", tc.name)
		}
	}
	if n := len(op.Calls()); n != calls {
		t.Errorf("refused requests reached the Operator (%d calls, want %d)", n, calls)
	}
}

func TestBackupRouteErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		op         admin.Operator
		wantStatus int
		wantType   string
		wantDetail string
	}{
		{
			name:       "operator without backups",
			op:         &fakeOperator{},
			wantStatus: http.StatusNotFound, wantType: admin.ProblemNotFound, wantDetail: "cannot make backups",
		},
		{
			name:       "store that cannot be copied",
			op:         &backupOperator{fakeOperator: &fakeOperator{}, err: admin.Errorf(admin.ErrConflict, "the store is PostgreSQL: use pg_dump")},
			wantStatus: http.StatusConflict, wantType: admin.ProblemConflict, wantDetail: "use pg_dump",
		},
		{
			name:       "failure",
			op:         &backupOperator{fakeOperator: &fakeOperator{}, err: io.ErrShortWrite},
			wantStatus: http.StatusInternalServerError, wantType: admin.ProblemInternal, wantDetail: "has been logged",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newBackupEnv(t, tc.op)
			r := mustDo(t, e.adminClient(t), http.MethodGet, e.url+admin.BackupPath, "", nil)
			if p := checkProblem(t, r, tc.wantStatus, tc.wantType); !strings.Contains(p.Detail, tc.wantDetail) {
				t.Errorf("detail %q, want it to contain %q", p.Detail, tc.wantDetail)
			}
		})
	}
}
