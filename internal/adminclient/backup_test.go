package adminclient_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/adminclient"
)

// backupOperator is a fakeOperator whose backups are body, announced as
// size bytes; a nil body is err.
type backupOperator struct {
	*fakeOperator
	size int64
	body func(ctx context.Context) io.ReadCloser
	err  error
}

func (b *backupOperator) Backup(ctx context.Context) (admin.Backup, error) {
	if err := b.record(ctx, "Backup"); err != nil {
		return admin.Backup{}, err
	}
	if b.err != nil {
		return admin.Backup{}, b.err
	}
	return admin.Backup{Size: b.size, Body: b.body(ctx)}, nil
}

// stallingBody delivers data, then blocks until ctx is done.
type stallingBody struct {
	ctx  context.Context
	data *bytes.Reader
}

func (s *stallingBody) Read(p []byte) (int, error) {
	if s.data.Len() > 0 {
		return s.data.Read(p)
	}
	<-s.ctx.Done()
	return 0, s.ctx.Err()
}

func (s *stallingBody) Close() error { return nil }

// backupClient serves op's admin API and returns an operator's client with
// the given timeout.
func backupClient(t *testing.T, op admin.Operator, timeout time.Duration) *adminclient.Client {
	t.Helper()
	e := &env{dir: t.TempDir()}
	e.ca, e.files = newCA(t, e.dir)
	e.url = serve(t, e.ca, op, nil)
	cert, key := writeClientCert(t, e.ca, adminID, time.Hour, time.Now())
	c, err := adminclient.New(adminclient.Config{URL: e.url, RootCert: e.files.RootCert, CertFile: cert, KeyFile: key, Timeout: timeout})
	if err != nil {
		t.Fatalf("adminclient.New: %v", err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func TestBackup(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	tests := []struct {
		name    string
		op      *backupOperator
		timeout time.Duration
		// wantErr is "" for a complete download; else the download's error
		// (from Backup, or from reading Body) contains it.
		wantErr    string
		wantStatus int // of a *ProblemError
	}{
		{
			name: "complete",
			op: &backupOperator{size: int64(len(data)), body: func(context.Context) io.ReadCloser {
				return io.NopCloser(bytes.NewReader(data))
			}},
			timeout: 10 * time.Second,
		},
		{
			name:    "PostgreSQL",
			op:      &backupOperator{err: admin.Errorf(admin.ErrConflict, "the store is PostgreSQL: back up the database with pg_dump")},
			timeout: 10 * time.Second, wantErr: "pg_dump", wantStatus: http.StatusConflict,
		},
		{
			name: "cut short",
			op: &backupOperator{size: int64(len(data)) + 4096, body: func(context.Context) io.ReadCloser {
				return io.NopCloser(bytes.NewReader(data))
			}},
			timeout: 10 * time.Second, wantErr: "unexpected EOF",
		},
		{
			name: "stalled",
			op: &backupOperator{size: int64(len(data)), body: func(ctx context.Context) io.ReadCloser {
				return &stallingBody{ctx: ctx, data: bytes.NewReader(data[:len(data)/2])}
			}},
			timeout: 300 * time.Millisecond, wantErr: "stalled",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.op.fakeOperator = &fakeOperator{}
			c := backupClient(t, tc.op, tc.timeout)
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			bk, err := c.Backup(ctx)
			var got []byte
			if err == nil {
				got, err = io.ReadAll(bk.Body)
				_ = bk.Body.Close()
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("download: %v", err)
				}
				if bk.Size != int64(len(data)) || !bytes.Equal(got, data) {
					t.Errorf("downloaded %d bytes (Size %d), want the %d bytes served", len(got), bk.Size, len(data))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("download error %v, want one containing %q", err, tc.wantErr)
			}
			var pe *adminclient.ProblemError
			if (tc.wantStatus != 0) != errors.As(err, &pe) || (pe != nil && pe.Status != tc.wantStatus) {
				t.Errorf("error %#v: want a problem with status %d", err, tc.wantStatus)
			}
		})
	}
}
