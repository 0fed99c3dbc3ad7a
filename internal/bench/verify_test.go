package bench

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// ariServer answers renewalInfo like crank-ca: 200 for known certIDs, 404
// for others, 500 for "broken"; its directory advertises renewalInfo
// unless noARI.
func ariServer(t *testing.T, known []string, noARI bool) *httptest.Server {
	t.Helper()
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/acme/p/directory":
			dir := map[string]string{"newAccount": srv.URL + "/acme/p/new-account"}
			if !noARI {
				dir["renewalInfo"] = srv.URL + "/acme/p/renewal-info"
			}
			_ = json.NewEncoder(w).Encode(dir)
		case strings.HasPrefix(r.URL.Path, "/acme/p/renewal-info/"):
			id := strings.TrimPrefix(r.URL.Path, "/acme/p/renewal-info/")
			switch {
			case id == "broken":
				http.Error(w, "oops", http.StatusInternalServerError)
			case strings.Contains(strings.Join(known, " "), id):
				_, _ = w.Write([]byte(`{"suggestedWindow":{}}`))
			default:
				http.NotFound(w, r)
			}
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestBenchVerify(t *testing.T) {
	t.Parallel()
	known := []string{"aaa.111", "bbb.222", "ccc.333"}
	for _, tc := range []struct {
		name      string
		ids       []string
		noARI     bool
		extraDead bool // a dead second replica: retries reach the live one
		cancelled bool
		want      VerifyReport
	}{
		{name: "all known", ids: known, want: VerifyReport{Checked: 3, Found: 3}},
		{name: "one missing", ids: []string{"aaa.111", "zzz.999"}, want: VerifyReport{Checked: 2, Found: 1, Missing: 1}},
		{name: "an error is not missing", ids: []string{"broken", "bbb.222"}, want: VerifyReport{Checked: 2, Found: 1, Unverified: 1}},
		{name: "through a dead replica", ids: known, extraDead: true, want: VerifyReport{Checked: 3, Found: 3}},
		{name: "no ARI", ids: known, noARI: true, want: VerifyReport{Skipped: "advertises no renewalInfo"}},
		{name: "deadline before the check", ids: known, cancelled: true, want: VerifyReport{Checked: 3, Unverified: 3, Skipped: "directory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := ariServer(t, known, tc.noARI)
			urls := []string{srv.URL}
			if tc.extraDead {
				urls = append(urls, deadURL(t))
			}
			r := &runner{cfg: Config{URL: srv.URL, Provisioner: "p", Concurrency: 2}}
			r.transport = newTestTransport(t, urls, 0, 0)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if tc.cancelled {
				cancel()
			}
			got := r.verify(ctx, tc.ids)
			if got.Checked != tc.want.Checked || got.Found != tc.want.Found || got.Missing != tc.want.Missing ||
				got.Unverified != tc.want.Unverified || (tc.want.Skipped != "") != (got.Skipped != "") {
				t.Errorf("verify = %+v, want %+v", *got, tc.want)
			}
			if !strings.Contains(got.Skipped, tc.want.Skipped) {
				t.Errorf("skipped %q, want it to say %q", got.Skipped, tc.want.Skipped)
			}
			if got.Skipped == "" && got.Missing+got.Unverified > 0 && len(got.Samples) == 0 {
				t.Error("no samples of what was not found")
			}
		})
	}
}

func TestBenchCheckCertsBoundedByDeadline(t *testing.T) {
	t.Parallel()
	// A server that never answers: the check ends with its deadline, the
	// certificates counted as unverified, none as missing.
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(block) })
	ids := make([]string, 50)
	for i := range ids {
		ids[i] = "id"
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	got := checkCerts(ctx, srv.Client(), srv.URL+"/renewal-info", ids, 4)
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("check took %v after a 200ms deadline", d)
	}
	if got.Checked != 50 || got.Found != 0 || got.Missing != 0 || got.Unverified != 50 {
		t.Errorf("check = %+v, want 50 unverified", *got)
	}
}

func TestBenchScheduleKill(t *testing.T) {
	t.Parallel()
	pid := os.Getpid() // its /proc files are read; the fake does not kill
	for _, tc := range []struct {
		name      string
		after     time.Duration
		killErr   error
		wantSent  bool
		wantError string
	}{
		{name: "sent", after: 0, wantSent: true},
		{name: "signal fails", after: 0, killErr: errors.New("no such process"), wantError: "no such process"},
		{name: "run ends first", after: time.Hour, wantError: "ended before the kill"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			var killedPIDs []int
			called := make(chan struct{})
			r := &runner{
				cfg: Config{KillPID: pid, KillAfter: tc.after},
				ctx: t.Context(),
				deps: Deps{Kill: func(p int) error {
					mu.Lock()
					killedPIDs = append(killedPIDs, p)
					mu.Unlock()
					close(called)
					return tc.killErr
				}},
			}
			m := &measure{start: time.Now()}
			stop := r.scheduleKill(m)
			if tc.after == 0 {
				select {
				case <-called:
				case <-time.After(10 * time.Second):
					t.Fatal("kill not sent")
				}
			}
			stop()
			if m.kill.Sent != tc.wantSent || !strings.Contains(m.kill.Error, tc.wantError) {
				t.Errorf("kill = %+v, want sent %v, error containing %q", *m.kill, tc.wantSent, tc.wantError)
			}
			mu.Lock()
			defer mu.Unlock()
			if tc.after == 0 && (len(killedPIDs) != 1 || killedPIDs[0] != pid) {
				t.Errorf("killed %v, want [%d]", killedPIDs, pid)
			}
			if tc.after == 0 && (m.killed == nil || !m.killed.cpuOK || !m.killed.rssOK) {
				t.Errorf("counters not read before the kill: %+v", m.killed)
			}
		})
	}
}

func TestBenchServerPIDs(t *testing.T) {
	t.Parallel()
	c := Config{ServerPID: 7, ServerPIDs: []int{8, 7, 0, 9, 8}}
	got := c.serverPIDs()
	if want := []int{7, 8, 9}; !slices.Equal(got, want) {
		t.Errorf("serverPIDs = %v, want %v", got, want)
	}
}
