package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports (the kernel fixes it for
// user space), and reading it with sysconf would need cgo.
const clockTicks = 100

// ProcCPU returns the user plus system CPU time a process has used, from
// /proc/PID/stat. It measures the server from outside without its help.
func ProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(b)
}

// parseStatCPU reads fields 14 (utime) and 15 (stime) of a /proc/PID/stat
// line.
func parseStatCPU(b []byte) (time.Duration, error) {
	st, err := parseStat(b)
	return st.cpu, err
}

// procStat is what is read of a /proc/PID/stat line: the parent, the
// process's own CPU time (utime+stime) and that of its children it has
// waited for (cutime+cstime).
type procStat struct {
	ppid           int
	cpu, reapedCPU time.Duration
}

// parseStat reads fields 4 (ppid), 14-15 (utime, stime) and 16-17
// (cutime, cstime) of a /proc/PID/stat line. The command name (field 2) is
// in parentheses and may hold spaces or parentheses itself, so fields are
// counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("proc stat: no command name in %q", truncate(string(b), 80))
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field k is f[k-3].
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("proc stat: %d fields after the command name, want at least 15", len(f))
	}
	var v [5]int64
	for j, k := range []int{4, 14, 15, 16, 17} {
		n, err := strconv.ParseInt(f[k-3], 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("proc stat: field %d %q: %v", k, f[k-3], err)
		}
		v[j] = n
	}
	tick := func(n int64) time.Duration { return time.Duration(n) * time.Second / clockTicks }
	return procStat{ppid: int(v[0]), cpu: tick(v[1] + v[2]), reapedCPU: tick(v[3] + v[4])}, nil
}

// TreeCPU returns the CPU time of a process and all its descendants, live
// or exited and waited for: for each process of the tree its utime, stime,
// cutime and cstime. A server that forks a process per connection, as
// PostgreSQL's postmaster does, is measured whole this way; a descendant
// that exits between two readings is counted by its parent's cutime only
// once waited for (PostgreSQL's postmaster waits at once).
func TreeCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	root, err := parseStat(b)
	if err != nil {
		return 0, err
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	all := map[int]procStat{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil || p == pid {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue // exited since the listing
		}
		if st, err := parseStat(b); err == nil {
			all[p] = st
		}
	}
	return treeCPU(pid, root, all), nil
}

// treeCPU sums the CPU of root (process pid) and of its descendants in all.
func treeCPU(pid int, root procStat, all map[int]procStat) time.Duration {
	children := map[int][]int{}
	for p, st := range all {
		children[st.ppid] = append(children[st.ppid], p)
	}
	total := root.cpu + root.reapedCPU
	queue := slices.Clone(children[pid])
	seen := map[int]bool{pid: true}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		total += all[p].cpu + all[p].reapedCPU
		queue = append(queue, children[p]...)
	}
	return total
}

// PeakRSS returns a process's peak resident set size (VmHWM) in bytes, from
// /proc/PID/status.
func PeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseStatusKB(b, "VmHWM")
}

// parseStatusKB returns the "Key:   N kB" line of a /proc/PID/status file
// in bytes.
func parseStatusKB(b []byte, key string) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != key {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("proc status: %s: unexpected %q", key, rest)
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("proc status: %s: %v", key, err)
		}
		return v * 1024, nil
	}
	return 0, fmt.Errorf("proc status: no %s line", key)
}

// MachineCPU returns the CPU time all cores of the machine have spent
// busy (user, nice, system, irq, softirq, steal) since boot, from the
// first line of /proc/stat: with the run's own processes subtracted, what
// other processes took from a run on a shared machine.
func MachineCPU() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseMachineCPU(b)
}

// parseMachineCPU reads the "cpu" line of /proc/stat: user nice system
// idle iowait irq softirq steal ..., in ticks.
func parseMachineCPU(b []byte) (time.Duration, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("proc stat: unexpected first line %q", truncate(string(line), 80))
	}
	var ticks int64
	for _, k := range []int{1, 2, 3, 6, 7, 8} {
		v, err := strconv.ParseInt(f[k], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("proc stat: cpu field %d %q: %v", k, f[k], err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// SelfCPU returns the user plus system CPU time of this process (all its
// threads), so the client's cost per issuance can be set beside the
// server's.
func SelfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// PathSize returns the size of a file, or the total size of the regular
// files under a directory: the store's footprint on disk.
func PathSize(path string) (int64, error) {
	var n int64
	err := filepath.WalkDir(path, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += info.Size()
		return nil
	})
	return n, err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
