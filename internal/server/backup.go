package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/store"
)

var _ admin.Backuper = operator{}

// errBackupPostgreSQL is what GET /admin/v1/backup answers on PostgreSQL.
var errBackupPostgreSQL = admin.Errorf(admin.ErrConflict,
	"the store is PostgreSQL: crank-ca's online backup copies only the embedded bbolt store; "+
		"back up the database with pg_dump (docs/operations.md, Backup and restore)")

// Backup copies the bbolt store, in one read transaction, into a file
// beside it, and returns that file for streaming. Spooling to local disk
// first keeps the read transaction (which stops bbolt from reusing freed
// pages and can hold up a commit that grows the file) as short as a local
// copy, however slowly the client downloads. The file is unlinked at once
// where the OS allows it, so a crash leaves nothing behind, and removed on
// Close otherwise.
func (o operator) Backup(ctx context.Context) (admin.Backup, error) {
	st := Storage(o.s.cfg)
	if st.Type != "bbolt" {
		return admin.Backup{}, errBackupPostgreSQL
	}
	f, err := os.CreateTemp(filepath.Dir(st.DataSource), "."+filepath.Base(st.DataSource)+".backup-*")
	if err != nil {
		return admin.Backup{}, fmt.Errorf("backup: %w", err)
	}
	sp := &spool{File: f, removed: os.Remove(f.Name()) == nil}
	n, err := o.s.stepca.Store().Backup(ctx, f)
	if err == nil {
		_, err = f.Seek(0, 0)
	}
	if err != nil {
		_ = sp.Close()
		if errors.Is(err, store.ErrBackupUnsupported) {
			return admin.Backup{}, errBackupPostgreSQL
		}
		return admin.Backup{}, fmt.Errorf("backup: %w", err)
	}
	return admin.Backup{Size: n, Body: sp}, nil
}

// spool is the backup file being streamed.
type spool struct {
	*os.File
	removed bool
}

// Close closes the file and removes it if it was not unlinked already.
func (s *spool) Close() error {
	err := s.File.Close()
	if !s.removed {
		_ = os.Remove(s.File.Name())
	}
	return err
}
