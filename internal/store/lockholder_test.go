package store

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseLockHolder(t *testing.T) {
	t.Parallel()
	const locks = `1: POSIX  ADVISORY  WRITE 100 08:01:555 0 EOF
2: FLOCK  ADVISORY  WRITE 4711 08:01:1234567 0 EOF
2: -> FLOCK  ADVISORY  WRITE 4712 08:01:1234567 0 EOF
3: FLOCK  ADVISORY  READ 99 00:2a:77 0 EOF
4: FLOCK garbage
`
	tests := []struct {
		name string
		ino  uint64
		want int
	}{
		{name: "holder, not the waiter", ino: 1234567, want: 4711},
		{name: "hex device, decimal inode", ino: 77, want: 99},
		{name: "posix locks are not bbolt's", ino: 555, want: 0},
		{name: "no lock", ino: 1, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := parseLockHolder(bufio.NewScanner(strings.NewReader(locks)), tt.ino); got != tt.want {
				t.Errorf("parseLockHolder(ino %d) = %d, want %d", tt.ino, got, tt.want)
			}
		})
	}
}

// TestOpenBoltInUse opens one file twice: the second open fails within its
// timeout with ErrStoreInUse and names the holder (this process).
func TestOpenBoltInUse(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "ca.db")
	first, err := OpenBolt(BoltConfig{Path: path, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = first.Close() })
	_, err = OpenBolt(BoltConfig{Path: path, Timeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrStoreInUse) {
		t.Fatalf("second open: %v, want ErrStoreInUse", err)
	}
	for _, want := range []string{path, "another `crank-ca serve`"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if _, statErr := os.Stat("/proc/locks"); statErr == nil && !strings.Contains(err.Error(), "by process") {
		t.Errorf("error %q does not name the holder", err)
	}
}
