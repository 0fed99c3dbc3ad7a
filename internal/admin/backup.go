package admin

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// BackupPath is the route of GET /backup: a consistent copy of the CA's
// store, streamed.
const BackupPath = Prefix + "/backup"

// backupWriteTimeout replaces the server's response write timeout for a
// backup, which can be far larger than any other answer. The copy is
// already complete on the server's disk when streaming starts, so a slow
// client holds a file, not the store.
const backupWriteTimeout = 30 * time.Minute

// Backup is a consistent copy of the CA's store, ready to stream.
type Backup struct {
	// Size is the exact length of Body in bytes.
	Size int64
	// Body is the copy: a bbolt file that opens as the store. Whoever
	// receives a Backup closes it.
	Body io.ReadCloser
}

// Backuper is the optional extension of an Operator that can copy its
// store while it serves (internal/server's operator, and the admin client
// on the other side). Against an Operator without it, GET /backup is a 404
// problem.
type Backuper interface {
	// Backup returns a complete copy of the store. A store that cannot be
	// copied this way (PostgreSQL) is an error wrapping ErrConflict whose
	// message says what to use instead.
	Backup(ctx context.Context) (Backup, error)
}

// handleBackup registers GET (and HEAD) /backup on mux, and a 405 problem
// for every other method. It bypasses adapt: the answer is a file, not
// JSON, and it is streamed, not held in memory.
func (a *API) handleBackup(mux *http.ServeMux) {
	mux.HandleFunc(http.MethodGet+" "+BackupPath, a.backup)
	mux.HandleFunc(BackupPath, func(w http.ResponseWriter, r *http.Request) {
		const allow = "GET, HEAD"
		w.Header().Set("Allow", allow)
		a.writeProblem(w, r, fmt.Errorf("%w: %s %s; allowed: %s", errMethodNotAllowed, r.Method, r.URL.Path, allow))
	})
}

// backup serves GET /backup. Content-Length is the copy's exact size, so
// a client can tell a complete copy from one cut short; the audit record
// shows how many bytes were sent.
func (a *API) backup(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if _, err := queryParams(r); err != nil {
		a.writeProblem(w, r, err)
		return
	}
	b, ok := a.op.(Backuper)
	if !ok {
		a.writeProblem(w, r, Errorf(ErrNotFound, "this server cannot make backups"))
		return
	}
	bk, err := b.Backup(ctx)
	if err != nil {
		a.writeProblem(w, r, err)
		return
	}
	defer bk.Body.Close()
	note(ctx, "bytes", bk.Size)
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(bk.Size, 10))
	h.Set("Content-Disposition", `attachment; filename="crank-ca-backup.db"`)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if err := http.NewResponseController(w).SetWriteDeadline(time.Now().Add(backupWriteTimeout)); err != nil {
		a.log.WarnContext(ctx, "admin: backup: the server's write timeout stays in force; a large backup may be cut short", "error", err)
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	n, err := io.Copy(w, bk.Body)
	if err != nil || n != bk.Size {
		note(ctx, "sent", n, "interrupted", true)
		a.log.WarnContext(ctx, "admin: backup download interrupted", "sent", n, "size", bk.Size, "error", err)
	}
}
