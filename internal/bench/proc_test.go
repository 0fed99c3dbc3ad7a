package bench

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestBenchParseStat(t *testing.T) {
	t.Parallel()
	// ppid 42; utime 250 + stime 50 = 3s; cutime 100 + cstime 20 = 1.2s.
	line := "1234 (post gres) S 42 1234 1234 0 -1 4194560 100 0 0 0 250 50 100 20 20 0 8 0 555 1000 200\n"
	got, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if want := (procStat{ppid: 42, cpu: 3 * time.Second, reapedCPU: 1200 * time.Millisecond}); got != want {
		t.Errorf("parseStat = %+v, want %+v", got, want)
	}
}

func TestBenchTreeCPUSums(t *testing.T) {
	t.Parallel()
	s := func(ppid int, cpu, reaped time.Duration) procStat {
		return procStat{ppid: ppid, cpu: cpu, reapedCPU: reaped}
	}
	ms := time.Millisecond
	for _, tc := range []struct {
		name string
		root procStat
		all  map[int]procStat
		want time.Duration
	}{
		{"alone", s(1, 10*ms, 5*ms), map[int]procStat{2: s(1, 100*ms, 0)}, 15 * ms},
		{"children and grandchildren", s(1, 10*ms, 5*ms), map[int]procStat{
			11: s(10, 20*ms, 1*ms), 12: s(10, 30*ms, 0), 13: s(11, 40*ms, 0), 99: s(1, 1000*ms, 0),
		}, 106 * ms},
		{"a cycle does not loop", s(1, 1*ms, 0), map[int]procStat{11: s(12, 2*ms, 0), 12: s(11, 3*ms, 0), 13: s(10, 4*ms, 0)}, 5 * ms},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := treeCPU(10, tc.root, tc.all); got != tc.want {
				t.Errorf("treeCPU = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestBenchTreeCPUCountsReapedChildren(t *testing.T) {
	// Not parallel: it measures this process's children.
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	before, err := TreeCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// A child that burns CPU, bounded by a count and by the timeout.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sh, "-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	child := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	after, err := TreeCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// 10 ms ticks on both sides of the comparison.
	if got := after - before; got+20*time.Millisecond < child {
		t.Errorf("tree CPU grew by %v, the reaped child used %v", got, child)
	}
	if _, err := TreeCPU(-1); err == nil {
		t.Error("TreeCPU(-1): no error")
	}
}

func TestBenchParseMachineCPU(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   string
		want time.Duration
		bad  bool
	}{
		// user 100 nice 1 system 20 idle 5000 iowait 7 irq 2 softirq 3 steal 4: busy 130 ticks.
		{name: "busy fields", in: "cpu  100 1 20 5000 7 2 3 4 0 0\ncpu0 50 0 10 2500 3 1 1 2 0 0\n", want: 1300 * time.Millisecond},
		{name: "no cpu line", in: "intr 1 2 3\n", bad: true},
		{name: "short", in: "cpu 1 2 3\n", bad: true},
		{name: "not a number", in: "cpu 1 2 x 4 5 6 7 8\n", bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseMachineCPU([]byte(tc.in))
			if (err != nil) != tc.bad || got != tc.want {
				t.Errorf("parseMachineCPU = %v, %v; want %v, error %v", got, err, tc.want, tc.bad)
			}
		})
	}
	if _, err := MachineCPU(); err != nil {
		t.Errorf("MachineCPU: %v", err)
	}
}
