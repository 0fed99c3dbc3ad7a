package store

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// lockHolder returns the PID of the process holding a flock on the file at
// path according to /proc/locks, or 0 when it cannot tell (another OS, no
// /proc, the lock already gone). It only improves an error message: bbolt
// takes an exclusive flock on its file, and "locked by process 4711" points
// the operator at the other server at once.
func lockHolder(path string) int {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer f.Close()
	return parseLockHolder(bufio.NewScanner(f), st.Ino)
}

// parseLockHolder scans /proc/locks lines such as
//
//	1: FLOCK  ADVISORY  WRITE 4711 08:01:1234567 0 EOF
//
// for a FLOCK on inode ino and returns its PID (0 if none). Lines of
// waiting locks ("1: -> FLOCK ...") are skipped.
func parseLockHolder(sc *bufio.Scanner, ino uint64) int {
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[1] != "FLOCK" {
			continue
		}
		dev := strings.Split(f[5], ":")
		if len(dev) != 3 {
			continue
		}
		n, err := strconv.ParseUint(dev[2], 10, 64)
		if err != nil || n != ino {
			continue
		}
		if pid, err := strconv.Atoi(f[4]); err == nil && pid > 0 {
			return pid
		}
	}
	return 0
}
