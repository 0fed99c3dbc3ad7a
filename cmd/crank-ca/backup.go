package main

// `crank-ca backup` (a client of the admin API: the running server copies
// its own store) and `crank-ca restore` (local: puts a backup in place of
// the store of a stopped server).

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/adminclient"
	"github.com/crank-platform/crank-ca/internal/server"
	"github.com/crank-platform/crank-ca/internal/store"
)

// checkLockWait bounds the wait for a file lock when a store file is
// checked or replaced: a server holds its store for as long as it runs, so
// waiting longer would not help.
const checkLockWait = time.Second

func cmdBackup(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("backup", stderr)
	af := addAPIFlags(fs)
	out := fs.String("out", "", "file to write the backup to (required); written 0600, replaced only by a complete, checked backup")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("%w: --out is required", errUsage)
	}
	if fi, err := os.Stat(*out); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: --out %s exists and is not a regular file", errUsage, *out)
	}
	return af.withClient(func(ctx context.Context, cfg *config.Config, c *adminclient.Client) error {
		if st := server.Storage(cfg); st.Type == "bbolt" && sameFile(*out, st.DataSource) {
			return fmt.Errorf("%w: --out %s is the store itself", errUsage, *out)
		}
		rep, err := downloadBackup(ctx, c, *out)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "backup written to %s: %d bytes, %d tables, %d certificates; bbolt consistency check passed\n",
			*out, rep.Size, rep.Tables, rep.Certificates)
		return nil
	})
}

// downloadBackup writes the server's backup to a temporary file beside out,
// checks that it is complete and that the store in it passes bbolt's
// consistency check, and only then renames it to out. On any failure the
// temporary file is removed and out is untouched.
func downloadBackup(ctx context.Context, c *adminclient.Client, out string) (store.FileReport, error) {
	bk, err := c.Backup(ctx)
	if err != nil {
		return store.FileReport{}, err
	}
	defer bk.Body.Close()
	dir := filepath.Dir(out)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return store.FileReport{}, fmt.Errorf("backup: %w", err)
	}
	done := false
	defer func() {
		if !done {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return store.FileReport{}, fmt.Errorf("backup: %w", err)
	}
	n, err := io.Copy(tmp, bk.Body)
	if err != nil {
		return store.FileReport{}, fmt.Errorf("backup: download interrupted after %d of %d bytes: %w", n, bk.Size, err)
	}
	if n != bk.Size {
		return store.FileReport{}, fmt.Errorf("backup: the server sent %d bytes, announced %d", n, bk.Size)
	}
	if err := tmp.Sync(); err != nil {
		return store.FileReport{}, fmt.Errorf("backup: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return store.FileReport{}, fmt.Errorf("backup: %w", err)
	}
	rep, err := store.CheckFile(tmp.Name(), checkLockWait)
	if err != nil {
		return store.FileReport{}, fmt.Errorf("backup: the downloaded copy is not usable, nothing written: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return store.FileReport{}, fmt.Errorf("backup: %w", err)
	}
	done = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return rep, nil
}

// sameFile reports whether a and b name the same file, or the same path if
// a does not exist yet.
func sameFile(a, b string) bool {
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	if errA == nil && errB == nil {
		return os.SameFile(fa, fb)
	}
	absA, errA := filepath.Abs(a)
	absB, errB := filepath.Abs(b)
	return errA == nil && errB == nil && absA == absB
}

func cmdRestore(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("restore", stderr)
	path := fs.String("config", "", "configuration of the CA to restore into (required); its storage.path is replaced")
	from := fs.String("from", "", "backup file written by `crank-ca backup` (required)")
	crlNumber := fs.Int64("crl-number", 0, "renumber the restored CRL to this (the last crlNumber the CA logged) so that workers accept the next one")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *path == "" || *from == "" {
		return fmt.Errorf("%w: restore needs --config and --from", errUsage)
	}
	if *crlNumber < 0 {
		return fmt.Errorf("%w: --crl-number must not be negative", errUsage)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	st := server.Storage(cfg)
	if st.Type != "bbolt" {
		return fmt.Errorf("restore: storage.type of %s is %s: crank-ca restores only its embedded bbolt store; restore PostgreSQL with pg_restore (docs/operations.md, Backup and restore)", *path, cfg.Storage.Type)
	}
	if sameFile(*from, st.DataSource) {
		return fmt.Errorf("%w: --from %s is the store itself", errUsage, *from)
	}
	res, err := store.RestoreBolt(store.RestoreConfig{From: *from, To: st.DataSource, LockWait: checkLockWait, CRLNumber: *crlNumber})
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	fmt.Fprintf(stdout, "restored %s into %s: %d bytes, %d tables, %d certificates; bbolt consistency check passed\n",
		*from, st.DataSource, res.Report.Size, res.Report.Tables, res.Report.Certificates)
	if *crlNumber > 0 {
		fmt.Fprintf(stdout, "the stored CRL is renumbered %d and expired: the server issues CRL %d when it starts\n", *crlNumber, *crlNumber+1)
	}
	if res.Previous != "" {
		fmt.Fprintf(stdout, "the store it replaced is kept at %s\n", res.Previous)
	}
	fmt.Fprintf(stdout, "start the server: crank-ca serve --config %s\n", *path)
	return nil
}
