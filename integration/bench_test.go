package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/bench"
	"github.com/crank-platform/crank-ca/internal/server"
	"github.com/crank-platform/crank-ca/provisioner"
)

// TestBenchHarness runs crank-bench's library in-process against a test CA
// in each mode with small counts, so that `make bench` keeps working: no
// failures, and figures that are not nonsense. It asserts no speed.
func TestBenchHarness(t *testing.T) {
	httpPort := freePort(t)
	c := newCA(t, func(cfg *config.Config) {
		// One client address making many accounts and orders: the
		// default per-address limits would throttle it.
		for _, name := range []string{"workers", "adhoc"} {
			p, _ := cfg.Provisioner(name)
			p.Limits.NewAccountsPerMinute = 10000
			p.Limits.NewOrdersPerMinute = 10000
		}
		adhoc(cfg).ValidationPorts = &config.ValidationPorts{HTTP01: httpPort, TLSALPN01: freePort(t)}
	})
	c.start()
	mint := func(worker string) (provisioner.Token, error) {
		return server.MintToken(c.cfg, server.TokenRequest{Worker: worker, Now: c.clock.Now()})
	}
	type run struct {
		name   string
		mode   bench.Mode
		http01 bool // the adhoc provisioner, as stock step-ca is driven
	}
	runs := []run{{name: "http01-new-worker", mode: bench.ModeNewWorker, http01: true}}
	for _, m := range bench.Modes() {
		runs = append(runs, run{name: string(m), mode: m})
	}
	for i, tc := range runs {
		mode := tc.mode
		t.Run(tc.name, func(t *testing.T) {
			var progress bytes.Buffer
			cfg := bench.Config{
				URL: c.url, Mode: mode, N: 20, Concurrency: 4, Timeout: 30 * time.Second,
				Window: time.Second, Roots: c.roots,
				// Distinct prefixes: each mode binds its own workers.
				WorkerPrefix: "bench" + string(rune('a'+i)) + "-",
				// Server and client share this process here, so the server
				// CPU figure includes the client's.
				ServerPID: os.Getpid(), StorePath: filepath.Join(c.dir, "db"),
				ProgressEvery: 200 * time.Millisecond,
			}
			if tc.http01 {
				cfg.Provisioner = "adhoc"
				cfg.HTTP01Addr = fmt.Sprintf("127.0.0.1:%d", httpPort)
				cfg.HTTP01Name = "localhost"
			}
			rep, err := bench.Run(t.Context(), cfg, bench.Deps{Mint: mint, Progress: &progress})
			if err != nil {
				t.Fatalf("run: %v\n%s", err, c.logs.String())
			}
			var text bytes.Buffer
			if err := rep.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s", text.String())
			if rep.Succeeded != 20 || rep.Failed != 0 || rep.NotRun != 0 || rep.TimedOut {
				t.Fatalf("want 20 successes and nothing else:\n%s", text.String())
			}
			l := rep.LatencyMS
			if !(l.P50 > 0 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.Max && l.Max < 30000) {
				t.Errorf("latencies not ordered or not plausible: %+v", l)
			}
			if rep.IssuancesPerSecond <= 0 || rep.ElapsedSec <= 0 {
				t.Errorf("rate %.2f/s over %.2fs", rep.IssuancesPerSecond, rep.ElapsedSec)
			}
			if mode == bench.ModeStorm && rep.ElapsedSec < 0.9 {
				t.Errorf("storm over a 1s window ended after %.2fs", rep.ElapsedSec)
			}
			if rep.ServerCPUMSPerIssuance == nil || *rep.ServerCPUMSPerIssuance <= 0 {
				t.Errorf("no server CPU figure: %v", rep.ServerCPUMSPerIssuance)
			}
			if rep.ClientCPUMSPerIssuance <= 0 || rep.ServerPeakRSSBytes <= 0 || rep.StoreBytes <= 0 {
				t.Errorf("client CPU %.2f ms, peak RSS %d, store %d: want all positive",
					rep.ClientCPUMSPerIssuance, rep.ServerPeakRSSBytes, rep.StoreBytes)
			}
			if rep.HTTP01 != tc.http01 {
				t.Errorf("report says http01=%v", rep.HTTP01)
			}
			if len(rep.Warnings) > 0 {
				t.Errorf("warnings: %v", rep.Warnings)
			}
			out := filepath.Join(t.TempDir(), "r.json")
			if err := rep.WriteJSON(out); err != nil {
				t.Fatal(err)
			}
		})
	}
}
