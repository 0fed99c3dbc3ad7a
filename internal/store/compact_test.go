package store

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestBoltCompactsSparseFile: after most data is deleted, the next open
// rewrites the file smaller and keeps every remaining record; a file that is
// mostly data is left alone.
func TestBoltCompactsSparseFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "db")
	cfg := BoltConfig{Path: path, CompactMinSize: 1 << 20}
	b, err := OpenBolt(cfg)
	if err != nil {
		t.Fatal(err)
	}
	table := []byte("t")
	if err := b.CreateTable(table); err != nil {
		t.Fatal(err)
	}
	val := bytes.Repeat([]byte("x"), 4096)
	const n = 2000
	for i := range n {
		if err := b.Set(table, fmt.Appendf(nil, "k%05d", i), val); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if i%20 == 0 {
			continue
		}
		if err := b.Del(table, fmt.Appendf(nil, "k%05d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	before := fileSize(t, path)

	b, err = OpenBolt(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	after := fileSize(t, path)
	if after*2 > before {
		t.Errorf("file %d bytes after reopening, %d before: not compacted", after, before)
	}
	es, err := b.List(table)
	if err != nil || len(es) != n/20 {
		t.Fatalf("after compaction: %d records (err %v), want %d", len(es), err, n/20)
	}
	for _, e := range es {
		if !bytes.Equal(e.Value, val) {
			t.Fatalf("record %s changed", e.Key)
		}
	}
	if _, err := os.Stat(path + ".compact"); !os.IsNotExist(err) {
		t.Errorf("the compaction copy was left behind: %v", err)
	}
	// Mostly data now: a further open keeps the file as it is.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b2, err := OpenBolt(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if got := fileSize(t, path); got != after {
		t.Errorf("a dense file was rewritten: %d bytes, was %d", got, after)
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
