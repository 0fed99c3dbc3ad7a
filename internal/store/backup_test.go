package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smallstep/nosql"
	bolt "go.etcd.io/bbolt"
)

// newBackupStore opens a Bolt store at path with crank-ca's tables.
func newBackupStore(t *testing.T, path string) (*Bolt, *Store) {
	t.Helper()
	b := openTestBolt(t, path)
	s, err := New(Config{DB: b})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.CreateTable(x509CertsTable); err != nil {
		t.Fatal(err)
	}
	return b, s
}

// writeBackup backs s up into a new 0600 file and returns its path.
func writeBackup(t *testing.T, s *Store) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "backup.db")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.Backup(t.Context(), f)
	if err != nil {
		t.Fatalf("Backup: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != n {
		t.Fatalf("backup file: %v, size %d, Backup reported %d", err, fi.Size(), n)
	}
	return path
}

// keysOf returns the keys of table in the bbolt file at path.
func keysOf(t *testing.T, path string, table []byte) map[string]bool {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	keys := map[string]bool{}
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(table)
		if b == nil {
			return fmt.Errorf("no table %s", table)
		}
		return b.ForEach(func(k, _ []byte) error { keys[string(k)] = true; return nil })
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestBackupWhileWriting backs up a store while 8 writers commit records
// through the group commit: the copy passes CheckFile, holds every record
// acknowledged before the backup started, and every record in it is whole
// (a write is in the copy entirely or not at all).
func TestBackupWhileWriting(t *testing.T) {
	t.Parallel()
	b, s := newBackupStore(t, filepath.Join(t.TempDir(), "ca.db"))
	const writers, perWriter = 8, 150
	var acked sync.Map // keys whose Set returned before the backup started
	var backupStarted atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	start := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			<-start
			for i := range perWriter {
				k := fmt.Sprintf("w%d-%04d", w, i)
				before := !backupStarted.Load()
				if err := b.Set(x509CertsTable, []byte(k), bytes.Repeat([]byte(k), 20)); err != nil {
					errs <- err
					return
				}
				if before && !backupStarted.Load() {
					acked.Store(k, true)
				}
			}
		})
	}
	close(start)
	// Let the writers get going, then back up in the middle of them.
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := 0
		acked.Range(func(any, any) bool { n++; return true })
		if n >= writers*perWriter/4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	backupStarted.Store(true)
	path := writeBackup(t, s)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("writer: %v", err)
	}

	rep, err := CheckFile(path, time.Second)
	if err != nil {
		t.Fatalf("CheckFile: %v", err)
	}
	keys := keysOf(t, path, x509CertsTable)
	if rep.Certificates != len(keys) {
		t.Errorf("report says %d certificates, the copy has %d", rep.Certificates, len(keys))
	}
	missing := 0
	acked.Range(func(k, _ any) bool {
		if !keys[k.(string)] {
			missing++
		}
		return true
	})
	if missing > 0 {
		t.Errorf("%d records acknowledged before the backup are not in it", missing)
	}
	if len(keys) == 0 || len(keys) == writers*perWriter {
		t.Logf("the backup has %d of %d records: it did not overlap the writes", len(keys), writers*perWriter)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(x509CertsTable).ForEach(func(k, v []byte) error {
			if !bytes.Equal(v, bytes.Repeat(k, 20)) {
				t.Errorf("record %s is not whole in the copy", k)
			}
			return nil
		})
	})
}

func TestBackupRefusals(t *testing.T) {
	t.Parallel()
	t.Run("not bbolt", func(t *testing.T) {
		t.Parallel()
		db, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "smallstep.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = db.Close() })
		s, err := New(Config{DB: db})
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := s.Backup(t.Context(), &buf); !errors.Is(err, ErrBackupUnsupported) || buf.Len() != 0 {
			t.Errorf("Backup on a foreign driver: %v, %d bytes written", err, buf.Len())
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		t.Parallel()
		_, s := newBackupStore(t, filepath.Join(t.TempDir(), "ca.db"))
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		var buf bytes.Buffer
		if _, err := s.Backup(ctx, &buf); !errors.Is(err, context.Canceled) || buf.Len() != 0 {
			t.Errorf("Backup with a cancelled context: %v, %d bytes written", err, buf.Len())
		}
	})
}

func TestCheckFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b, s := newBackupStore(t, filepath.Join(dir, "ca.db"))
	for i := range 50 {
		mustSet(t, b, x509CertsTable, fmt.Sprintf("serial-%d", i), "der")
	}
	good := writeBackup(t, s)
	goodBytes, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// A bbolt file that is not a crank-ca store.
	foreign := filepath.Join(dir, "foreign.db")
	fdb, err := bolt.Open(foreign, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := fdb.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err }); err != nil {
		t.Fatal(err)
	}
	_ = fdb.Close()
	// A flipped byte in the meta page breaks its checksum; with both
	// pages broken, nothing is left to trust.
	badMeta := bytes.Clone(goodBytes)
	badMeta[boltPageHeader+20] ^= 0xff
	pageSize := int(binary.NativeEndian.Uint32(goodBytes[boltPageHeader+8:]))
	badMeta[pageSize+boltPageHeader+20] ^= 0xff

	tests := []struct {
		name    string
		path    string
		want    error
		wantSub string
	}{
		{name: "backup", path: good},
		{name: "missing", path: filepath.Join(dir, "nope.db"), want: os.ErrNotExist},
		{name: "directory", path: dir, want: ErrNotAStore, wantSub: "not a regular file"},
		{name: "empty", path: write("empty.db", nil), want: ErrNotAStore, wantSub: "too short"},
		{name: "garbage", path: write("garbage.db", bytes.Repeat([]byte("not a database "), 2000)), want: ErrNotAStore, wantSub: "no valid meta page"},
		{name: "truncated", path: write("truncated.db", goodBytes[:len(goodBytes)/2]), want: ErrNotAStore, wantSub: "truncated"},
		{name: "meta pages damaged", path: write("badmeta.db", badMeta), want: ErrNotAStore, wantSub: "no valid meta page"},
		{name: "not crank-ca", path: foreign, want: ErrNotAStore, wantSub: "crank_account_bindings"},
		{name: "in use", path: filepath.Join(dir, "ca.db"), want: ErrStoreInUse},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rep, err := CheckFile(tc.path, 50*time.Millisecond)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("CheckFile: %v", err)
				}
				if rep.Certificates != 50 || rep.Size != int64(len(goodBytes)) || rep.Tables < 9 {
					t.Errorf("report %+v: want 50 certificates, %d bytes, crank-ca's tables", rep, len(goodBytes))
				}
				return
			}
			if !errors.Is(err, tc.want) || !bytes.Contains([]byte(fmt.Sprint(err)), []byte(tc.wantSub)) {
				t.Errorf("CheckFile = %v, want %v containing %q", err, tc.want, tc.wantSub)
			}
		})
	}
}

func TestRestoreBolt(t *testing.T) {
	t.Parallel()
	// A store with records a and b, backed up, then c added.
	dir := t.TempDir()
	src, srcStore := newBackupStore(t, filepath.Join(dir, "src.db"))
	mustSet(t, src, x509CertsTable, "a", "1")
	mustSet(t, src, x509CertsTable, "b", "2")
	backup := writeBackup(t, srcStore)
	mustSet(t, src, x509CertsTable, "c", "3")
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, bytes.Repeat([]byte{0xab}, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	now := func() time.Time { return time.Date(2026, 12, 1, 3, 4, 5, 0, time.UTC) }

	t.Run("into a new directory", func(t *testing.T) {
		t.Parallel()
		to := filepath.Join(t.TempDir(), "new", "db", "crank-ca.db")
		res, err := RestoreBolt(RestoreConfig{From: backup, To: to, Now: now})
		if err != nil {
			t.Fatalf("RestoreBolt: %v", err)
		}
		if res.Previous != "" || res.Report.Certificates != 2 {
			t.Errorf("result %+v: want no previous store, 2 certificates", res)
		}
		keys := keysOf(t, to, x509CertsTable)
		if !keys["a"] || !keys["b"] || keys["c"] {
			t.Errorf("restored keys %v, want a and b", keys)
		}
		for _, p := range []string{to, filepath.Dir(to)} {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]os.FileMode{false: 0o600, true: 0o700 | os.ModeDir}[fi.IsDir()]; fi.Mode() != want {
				t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
			}
		}
		// The restored store opens as a store and takes writes.
		b, _ := newBackupStore(t, to)
		mustSet(t, b, x509CertsTable, "d", "4")
		wantValue(t, b, x509CertsTable, "a", "1")
	})

	t.Run("over a stopped store, kept aside", func(t *testing.T) {
		t.Parallel()
		d := t.TempDir()
		to := filepath.Join(d, "crank-ca.db")
		old, _ := newBackupStore(t, to)
		mustSet(t, old, x509CertsTable, "old", "x")
		if err := old.Close(); err != nil {
			t.Fatal(err)
		}
		oldBytes, _ := os.ReadFile(to)
		if err := os.WriteFile(to+".replaced-20261201T030405Z", []byte("an earlier one"), 0o600); err != nil {
			t.Fatal(err)
		}
		res, err := RestoreBolt(RestoreConfig{From: backup, To: to, Now: now})
		if err != nil {
			t.Fatalf("RestoreBolt: %v", err)
		}
		if want := to + ".replaced-20261201T030405Z-1"; res.Previous != want {
			t.Errorf("previous store at %q, want %q", res.Previous, want)
		}
		if kept, _ := os.ReadFile(res.Previous); !bytes.Equal(kept, oldBytes) {
			t.Error("the replaced store was not kept unchanged")
		}
		if keys := keysOf(t, to, x509CertsTable); !keys["a"] || keys["old"] {
			t.Errorf("restored keys %v", keys)
		}
		if left, _ := filepath.Glob(filepath.Join(d, ".crank-ca.db.restore-*")); len(left) > 0 {
			t.Errorf("temporary files left: %v", left)
		}
	})

	t.Run("renumbers the CRL", func(t *testing.T) {
		t.Parallel()
		d := t.TempDir()
		withCRL, st := newBackupStore(t, filepath.Join(d, "src.db"))
		if err := withCRL.CreateTable(crlTable); err != nil {
			t.Fatal(err)
		}
		mustSet(t, withCRL, crlTable, "crl", `{"Number":7,"ExpiresAt":"2030-01-01T00:00:00Z","Duration":3600000000000,"DER":"MAo="}`)
		from := writeBackup(t, st)
		for _, tc := range []struct {
			n       int64
			wantErr string
		}{{n: 6, wantErr: "below the backup's own, 7"}, {n: 1234}} {
			to := filepath.Join(d, fmt.Sprintf("to-%d.db", tc.n))
			_, err := RestoreBolt(RestoreConfig{From: from, To: to, CRLNumber: tc.n, Now: now})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("CRL number %d: %v, want an error containing %q", tc.n, err, tc.wantErr)
				}
				if _, err := os.Stat(to); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("CRL number %d: a store was written: %v", tc.n, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("RestoreBolt: %v", err)
			}
			b := openTestBolt(t, to)
			wantValue(t, b, crlTable, "crl", `{"DER":"MAo=","Duration":3600000000000,"ExpiresAt":"2000-01-01T00:00:00Z","Number":1234}`)
		}
		// A backup without a CRL cannot be renumbered.
		if _, err := RestoreBolt(RestoreConfig{From: backup, To: filepath.Join(d, "none.db"), CRLNumber: 9}); err == nil || !strings.Contains(err.Error(), "no CRL") {
			t.Errorf("renumbering a backup without a CRL: %v", err)
		}
	})

	refusals := []struct {
		name string
		from string
		lock bool
		want error
	}{
		{name: "garbage", from: garbage, want: ErrNotAStore},
		{name: "missing backup", from: filepath.Join(dir, "nope.db"), want: os.ErrNotExist},
		{name: "store in use", from: backup, lock: true, want: ErrStoreInUse},
	}
	for _, tc := range refusals {
		t.Run("refuses "+tc.name, func(t *testing.T) {
			t.Parallel()
			d := t.TempDir()
			to := filepath.Join(d, "crank-ca.db")
			cur, _ := newBackupStore(t, to)
			mustSet(t, cur, x509CertsTable, "current", "x")
			if !tc.lock {
				if err := cur.Close(); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := os.ReadFile(to)
			_, err := RestoreBolt(RestoreConfig{From: tc.from, To: to, LockWait: 50 * time.Millisecond, Now: now})
			if !errors.Is(err, tc.want) {
				t.Fatalf("RestoreBolt = %v, want %v", err, tc.want)
			}
			if after, _ := os.ReadFile(to); !bytes.Equal(before, after) {
				t.Error("the current store changed")
			}
			if entries, _ := os.ReadDir(d); len(entries) != 1 {
				t.Errorf("directory holds %d entries, want only the store", len(entries))
			}
		})
	}
}

// TestCheckFileDamagedPages overwrites each page of a backup in turn: a
// page the store uses is reported as ErrNotAStore (bbolt's panics on it
// are caught), an unused one does not matter, and nothing crashes.
func TestCheckFileDamagedPages(t *testing.T) {
	t.Parallel()
	b, s := newBackupStore(t, filepath.Join(t.TempDir(), "ca.db"))
	for i := range 300 {
		mustSet(t, b, x509CertsTable, fmt.Sprintf("serial-%04d", i), "certificate data")
	}
	good, err := os.ReadFile(writeBackup(t, s))
	if err != nil {
		t.Fatal(err)
	}
	pageSize := int(binary.NativeEndian.Uint32(good[boltPageHeader+8:]))
	dir := t.TempDir()
	damaged := 0
	for pg := 2; (pg+1)*pageSize <= len(good); pg++ {
		d := bytes.Clone(good)
		for i := range pageSize {
			d[pg*pageSize+i] = byte(i * 7)
		}
		p := filepath.Join(dir, fmt.Sprintf("page-%d.db", pg))
		if err := os.WriteFile(p, d, 0o600); err != nil {
			t.Fatal(err)
		}
		switch _, err := CheckFile(p, time.Second); {
		case err == nil:
		case errors.Is(err, ErrNotAStore):
			damaged++
		default:
			t.Errorf("page %d overwritten: %v, want ErrNotAStore or nil", pg, err)
		}
	}
	if damaged < 3 {
		t.Errorf("only %d overwritten pages were noticed", damaged)
	}
}
