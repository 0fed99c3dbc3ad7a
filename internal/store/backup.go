package store

// Online backup and restore of the embedded bbolt store. A backup is the
// bbolt file exactly as one read transaction sees it (Tx.WriteTo), so it is
// consistent however many writers commit meanwhile: every transaction is in
// it entirely or not at all. PostgreSQL is backed up with its own tools.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Errors of backup, CheckFile and RestoreBolt.
var (
	// ErrBackupUnsupported: the store is not the embedded bbolt file (on
	// PostgreSQL, use pg_dump).
	ErrBackupUnsupported = errors.New("store: online backup copies only the embedded bbolt store")
	// ErrStoreInUse: another process (a running `crank-ca serve`) holds the
	// bbolt file's lock.
	ErrStoreInUse = errors.New("store: the store is in use by another process")
	// ErrNotAStore: a file is not a bbolt file, is damaged, or is not a
	// crank-ca store.
	ErrNotAStore = errors.New("store: not a valid crank-ca bbolt store")
)

// Backup writes a consistent copy of the store to w and returns the number
// of bytes written; the copy is a bbolt file that opens as the store. It
// errors with ErrBackupUnsupported on anything but bbolt. Writers carry on
// while it runs; a cancelled ctx stops it at the next write.
func (s *Store) Backup(ctx context.Context, w io.Writer) (int64, error) {
	b, ok := s.db.(*Bolt)
	if !ok {
		return 0, ErrBackupUnsupported
	}
	return b.Backup(ctx, w)
}

// Backup writes the file as one read transaction sees it. The transaction
// is held until the copy is written: bbolt cannot reuse pages freed
// meanwhile, and a commit that must grow the file's memory map waits for
// it, so w should be fast (a local file), not a network peer.
func (b *Bolt) Backup(ctx context.Context, w io.Writer) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("store: backup: %w", err)
	}
	var n int64
	err := b.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(ctxWriter{ctx: ctx, w: w})
		return err
	})
	if err != nil {
		return n, fmt.Errorf("store: backup: %w", err)
	}
	return n, nil
}

// ctxWriter stops a copy once ctx is done.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

// FileReport describes a store file that passed CheckFile.
type FileReport struct {
	// Size is the file's size in bytes.
	Size int64
	// Tables is the number of tables (top-level buckets), Keys the number
	// of records in them.
	Tables, Keys int
	// Certificates is the number of signed certificates the store keeps
	// (the authority's x509_certs table; retention removes expired ones).
	Certificates int
}

// maxCheckErrors bounds the consistency errors CheckFile reports.
const maxCheckErrors = 10

// CheckFile checks that path is a crank-ca bbolt store in good order: its
// meta pages are valid and describe a file no larger than it is, bbolt
// opens it, every table reads, bbolt's own consistency check (Tx.Check)
// finds nothing, and crank-ca's account bindings table is there. It opens
// the file read-only and changes nothing; it waits up to lockWait for a
// process holding the file (ErrStoreInUse). Damage is ErrNotAStore.
func CheckFile(path string, lockWait time.Duration) (FileReport, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return FileReport{}, fmt.Errorf("store: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return FileReport{}, fmt.Errorf("%w: %s is not a regular file", ErrNotAStore, path)
	}
	if err := checkMeta(path, fi.Size()); err != nil {
		return FileReport{}, err
	}
	rep, err := checkBolt(path, lockWait)
	rep.Size = fi.Size()
	return rep, err
}

// checkBolt is the part of CheckFile that bbolt does. bbolt trusts its
// file: damage it does not detect up front can fault or panic while pages
// are read, so both are turned into ErrNotAStore here. One case remains
// out of reach: for a file written without a free list (crank-ca's are),
// bbolt rebuilds it in a goroutine of its own that panics on a damaged
// page tree, which ends the process. Restore and backup run this check
// before they change anything, so even then nothing is changed.
func checkBolt(path string, lockWait time.Duration) (rep FileReport, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if v := recover(); v != nil {
			rep, err = FileReport{}, fmt.Errorf("%w: %s is damaged: %v", ErrNotAStore, path, v)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockWait})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return FileReport{}, fmt.Errorf("%w: %s is locked (is `crank-ca serve` running on it?)", ErrStoreInUse, path)
	case err != nil:
		return FileReport{}, fmt.Errorf("%w: %s: %w", ErrNotAStore, path, err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		err := tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			rep.Tables++
			n := 0
			if err := b.ForEach(func(_, _ []byte) error { n++; return nil }); err != nil {
				return err
			}
			rep.Keys += n
			if string(name) == string(x509CertsTable) {
				rep.Certificates = n
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%w: %s: reading its tables: %w", ErrNotAStore, path, err)
		}
		var errs []error
		for err := range tx.Check() {
			if len(errs) < maxCheckErrors {
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("%w: %s fails bbolt's consistency check: %w", ErrNotAStore, path, errors.Join(errs...))
		}
		if tx.Bucket(bindingTable) == nil {
			return fmt.Errorf("%w: %s is a bbolt file without crank-ca's %s table", ErrNotAStore, path, bindingTable)
		}
		return nil
	})
	if err != nil {
		return FileReport{}, err
	}
	return rep, nil
}

// bbolt's file format (go.etcd.io/bbolt/internal/common): a page starts
// with a 16-byte header; pages 0 and 1 hold a meta record each, in the
// byte order of the machine that wrote them.
const (
	boltPageHeader   = 16
	boltMetaSize     = 64 // magic, version, pageSize, flags (4 each), root bucket (16), freelist, pgid, txid, checksum (8 each)
	boltMetaSummed   = 56 // the checksum covers the fields before it
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	boltNoFreelist   = ^uint64(0)
	boltMinPageSize  = 512
	boltMaxPageSize  = 1 << 16
	boltDefaultGuess = 4096
)

// checkMeta checks the meta pages that bbolt will trust: a valid one must
// describe a file no larger than the file is, or bbolt would read past its
// end (a truncated copy faults instead of failing). bbolt opens with
// either valid meta page, so every valid one is checked.
func checkMeta(path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer f.Close()
	read := func(off int64) ([]byte, bool) {
		buf := make([]byte, boltPageHeader+boltMetaSize)
		if _, err := f.ReadAt(buf, off); err != nil {
			return nil, false
		}
		return buf[boltPageHeader:], true
	}
	m0, ok := read(0)
	if !ok {
		return fmt.Errorf("%w: %s is too short (%d bytes) for a bbolt file", ErrNotAStore, path, size)
	}
	second := int64(boltDefaultGuess)
	if ps := int64(binary.NativeEndian.Uint32(m0[8:])); validMeta(m0) && ps >= boltMinPageSize && ps <= boltMaxPageSize {
		second = ps
	}
	m1, ok := read(second)
	if !ok {
		m1 = nil
	}
	valid := 0
	for i, m := range [][]byte{m0, m1} {
		if m == nil || !validMeta(m) {
			continue
		}
		valid++
		pageSize := uint64(binary.NativeEndian.Uint32(m[8:]))
		root := binary.NativeEndian.Uint64(m[16:])
		freelist := binary.NativeEndian.Uint64(m[32:])
		pgid := binary.NativeEndian.Uint64(m[40:])
		switch {
		case pageSize < boltMinPageSize || pageSize > boltMaxPageSize || pageSize&(pageSize-1) != 0:
			return fmt.Errorf("%w: %s: meta page %d has page size %d", ErrNotAStore, path, i, pageSize)
		case pgid < 2 || pgid > uint64(size)/pageSize:
			return fmt.Errorf("%w: %s is truncated or damaged: meta page %d describes %d pages of %d bytes, the file has %d bytes",
				ErrNotAStore, path, i, pgid, pageSize, size)
		case root < 2 || root >= pgid || (freelist != boltNoFreelist && (freelist < 2 || freelist >= pgid)):
			return fmt.Errorf("%w: %s: meta page %d points outside the file", ErrNotAStore, path, i)
		}
	}
	if valid == 0 {
		return fmt.Errorf("%w: %s is not a bbolt file (no valid meta page)", ErrNotAStore, path)
	}
	return nil
}

// validMeta reports whether a meta record has bbolt's magic, version and a
// matching checksum (FNV-1a 64 over the fields before it).
func validMeta(m []byte) bool {
	if binary.NativeEndian.Uint32(m[0:]) != boltMagic || binary.NativeEndian.Uint32(m[4:]) != boltVersion {
		return false
	}
	h := fnv.New64a()
	_, _ = h.Write(m[:boltMetaSummed])
	return h.Sum64() == binary.NativeEndian.Uint64(m[boltMetaSummed:])
}

// RestoreConfig configures RestoreBolt.
type RestoreConfig struct {
	// From is the backup file; it must pass CheckFile. It is copied, never
	// moved or changed.
	From string
	// To is the store's path (storage.path of the configuration). Its
	// directory is created 0700 if missing.
	To string
	// LockWait bounds the wait for the lock of an existing store at To;
	// zero means one second. A store that stays locked is in use by a
	// running server and is not replaced (ErrStoreInUse).
	LockWait time.Duration
	// Now names the replaced store; nil means time.Now.
	Now func() time.Time
	// CRLNumber, when positive, is written into the restored copy as the
	// number of its stored CRL, which is also marked expired: the server
	// then generates its next CRL as soon as it serves, numbered
	// CRLNumber+1. Workers refuse a CRL numbered below the one they hold,
	// so after restoring an older backup this must be at least the last
	// number the CA issued (the last "CRL generated crlNumber=" logged).
	CRLNumber int64
}

// RestoreResult says what RestoreBolt did.
type RestoreResult struct {
	// Report describes the restored store.
	Report FileReport
	// Previous is where the store that was at To now is; empty if there
	// was none.
	Previous string
}

// RestoreBolt puts a copy of the backup From at To. The backup is checked
// first (CheckFile), then copied beside To and checked again; only then is
// an existing store at To, which must not be locked by a running server,
// renamed to To.replaced-<UTC time> (kept, never deleted) and the copy
// renamed to To. A failure before the final renames leaves To as it was.
func RestoreBolt(cfg RestoreConfig) (RestoreResult, error) {
	if cfg.From == "" || cfg.To == "" {
		return RestoreResult{}, errors.New("store: restore: From and To are required")
	}
	wait := cfg.LockWait
	if wait <= 0 {
		wait = time.Second
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	if _, err := CheckFile(cfg.From, wait); err != nil {
		return RestoreResult{}, fmt.Errorf("backup %s: %w", cfg.From, err)
	}
	dir := filepath.Dir(cfg.To)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return RestoreResult{}, fmt.Errorf("store: restore: %w", err)
	}
	// Refuse a store in use before copying anything, and hold its lock
	// until the new store is in place.
	unlock, exists, err := lockExisting(cfg.To, wait)
	if err != nil {
		return RestoreResult{}, err
	}
	defer unlock()
	tmp, err := copyBeside(cfg.From, cfg.To)
	if err != nil {
		return RestoreResult{}, err
	}
	defer os.Remove(tmp) // a no-op once renamed
	if cfg.CRLNumber > 0 {
		if err := setCRLNumber(tmp, cfg.CRLNumber); err != nil {
			return RestoreResult{}, err
		}
	}
	rep, err := CheckFile(tmp, wait)
	if err != nil {
		return RestoreResult{}, fmt.Errorf("the copy of %s: %w", cfg.From, err)
	}
	var res RestoreResult
	if exists {
		prev, err := keepAside(cfg.To, now())
		if err != nil {
			return RestoreResult{}, err
		}
		res.Previous = prev
	}
	if err := os.Rename(tmp, cfg.To); err != nil {
		if res.Previous != "" {
			_ = os.Rename(res.Previous, cfg.To)
		}
		return RestoreResult{}, fmt.Errorf("store: restore: %w", err)
	}
	syncDir(dir)
	res.Report = rep
	return res, nil
}

// The authority's stored CRL: one record, smallstep's
// CertificateRevocationListInfo as JSON.
var (
	crlTable = []byte("x509_crl")
	crlKey   = []byte("crl")
)

// crlExpired is the expiry setCRLNumber gives the stored CRL, so that the
// server replaces it at once.
const crlExpired = `"2000-01-01T00:00:00Z"`

// setCRLNumber renumbers the stored CRL of the bbolt file at path and marks
// it expired, changing no other field of the record.
func setCRLNumber(path string, n int64) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	defer db.Close()
	return db.Update(func(tx *bolt.Tx) error {
		var raw []byte
		if b := tx.Bucket(crlTable); b != nil {
			raw = b.Get(crlKey)
		}
		if raw == nil {
			return errors.New("store: restore: the backup holds no CRL to renumber; restore without a CRL number")
		}
		var rec map[string]json.RawMessage
		var cur int64
		if err := json.Unmarshal(raw, &rec); err != nil || json.Unmarshal(rec["Number"], &cur) != nil {
			return fmt.Errorf("store: restore: the backup's stored CRL is not a record crank-ca knows (%v)", err)
		}
		if n < cur {
			return fmt.Errorf("store: restore: CRL number %d is below the backup's own, %d: it must be the last number the CA issued", n, cur)
		}
		rec["Number"] = json.RawMessage(strconv.FormatInt(n, 10))
		rec["ExpiresAt"] = json.RawMessage(crlExpired)
		val, err := json.Marshal(rec)
		if err != nil {
			return fmt.Errorf("store: restore: %w", err)
		}
		return tx.Bucket(crlTable).Put(crlKey, val)
	})
}

// lockExisting takes a shared lock on the store at path, if there is one,
// and returns how to release it. A server holds the file exclusively, so a
// lock that cannot be had within wait means a server is running on it. A
// file that bbolt cannot open at all is not locked by anyone: a damaged
// store can still be replaced.
func lockExisting(path string, wait time.Duration) (unlock func(), exists bool, err error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return func() {}, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("store: restore: %w", err)
	case !fi.Mode().IsRegular():
		return nil, false, fmt.Errorf("store: restore: %s is not a regular file", path)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: wait})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, true, fmt.Errorf("%w: %s is locked; stop `crank-ca serve` before restoring", ErrStoreInUse, path)
	case err != nil:
		return func() {}, true, nil
	}
	return func() { _ = db.Close() }, true, nil
}

// copyBeside copies from into a new 0600 file in to's directory (so that
// the final rename stays within one file system) and syncs it.
func copyBeside(from, to string) (string, error) {
	src, err := os.Open(from)
	if err != nil {
		return "", fmt.Errorf("store: restore: %w", err)
	}
	defer src.Close()
	dst, err := os.CreateTemp(filepath.Dir(to), "."+filepath.Base(to)+".restore-*")
	if err != nil {
		return "", fmt.Errorf("store: restore: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = dst.Close()
			_ = os.Remove(dst.Name())
		}
	}()
	if err := dst.Chmod(0o600); err != nil {
		return "", fmt.Errorf("store: restore: %w", err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		return "", fmt.Errorf("store: restore: copying %s: %w", from, err)
	}
	if err := dst.Sync(); err != nil {
		return "", fmt.Errorf("store: restore: %w", err)
	}
	if err := dst.Close(); err != nil {
		return "", fmt.Errorf("store: restore: %w", err)
	}
	ok = true
	return dst.Name(), nil
}

// keepAside renames the store at path to path.replaced-<UTC time>, with a
// counter if that exists already, and returns the new name.
func keepAside(path string, now time.Time) (string, error) {
	base := path + ".replaced-" + now.UTC().Format("20060102T150405Z")
	name := base
	for i := 1; ; i++ {
		if _, err := os.Lstat(name); errors.Is(err, os.ErrNotExist) {
			break
		}
		if i > 100 {
			return "", fmt.Errorf("store: restore: too many replaced stores named %s*", base)
		}
		name = base + "-" + strconv.Itoa(i)
	}
	if err := os.Rename(path, name); err != nil {
		return "", fmt.Errorf("store: restore: keeping the current store aside: %w", err)
	}
	return name, nil
}

// syncDir makes renames in dir durable; best effort, as for compaction.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}
