package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/setup"
)

// writeConfig writes cfg over the configuration file of its directory.
func writeConfig(t *testing.T, cfg *config.Config) string {
	t.Helper()
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(cfg.Dir, setup.ConfigFile)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// newReloadServer builds (without serving) a server on a fresh CA.
func newReloadServer(t *testing.T) (*Server, *config.Config) {
	t.Helper()
	cfg := initCA(t)
	s, err := New(t.Context(), Deps{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, cfg
}

func status(t *testing.T, h http.Handler, path string) int {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "https://localhost"+path, nil))
	return rec.Code
}

func TestReloadApplies(t *testing.T) {
	t.Parallel()
	s, cfg := newReloadServer(t)
	if got := status(t, s.Handler(), "/acme/extra/directory"); got != http.StatusNotFound {
		t.Fatalf("extra directory before: %d", got)
	}
	next, _ := config.Load(filepath.Join(cfg.Dir, setup.ConfigFile))
	adhoc, _ := next.Provisioner("adhoc")
	extra := *adhoc
	extra.Name = "extra"
	extra.Policy = &config.NamePolicy{AllowedDNSSuffixes: []string{"extra.test"}}
	next.Provisioners = append(next.Provisioners, extra)
	next.Listen = "127.0.0.1:1"
	next.Admin.SPIFFEIDs = append(next.Admin.SPIFFEIDs, "spiffe://crank.internal/admin/second")
	path := writeConfig(t, next)

	res, err := s.Reload(t.Context(), path)
	if err != nil {
		t.Fatalf("Reload: %v", err)
	}
	want := Reloaded{Changed: []string{"admin", "provisioners"}, NeedsRestart: []string{"listen"}}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Errorf("Reloaded (-want +got):\n%s", diff)
	}
	if got := status(t, s.Handler(), "/acme/extra/directory"); got != http.StatusOK {
		t.Errorf("extra directory after the reload: %d", got)
	}
	if cur := s.current(); cur.cfg.Listen != cfg.Listen || len(cur.cfg.Provisioners) != 3 {
		t.Errorf("current configuration: listen %q, %d provisioners", cur.cfg.Listen, len(cur.cfg.Provisioners))
	}
}

func TestReloadRefusals(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		edit   func(t *testing.T, path string, cfg *config.Config)
		wantIn []string // every problem is reported
	}{
		{"invalid values", func(t *testing.T, path string, cfg *config.Config) {
			cfg.TrustDomain = "Not A Domain"
			cfg.ARI.WindowPercent = 500
			writeConfig(t, cfg)
		}, []string{"trustDomain", "ari.windowPercent"}},
		{"unknown field", func(t *testing.T, path string, _ *config.Config) {
			if err := os.WriteFile(path, []byte(`{"trustDomian": "x"}`), 0o600); err != nil {
				t.Fatal(err)
			}
		}, []string{"trustDomian"}},
		{"missing intermediate and token key", func(t *testing.T, path string, cfg *config.Config) {
			cfg.PKI.IntermediateKey = "pki/absent.key"
			cfg.TokenKeyFile = "secrets/absent.key"
			writeConfig(t, cfg)
		}, []string{"absent.key", "token key"}},
		{"unreadable file", func(t *testing.T, path string, _ *config.Config) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}, []string{"no such file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, cfg := newReloadServer(t)
			before := s.current()
			path := filepath.Join(cfg.Dir, setup.ConfigFile)
			next, _ := config.Load(path)
			tt.edit(t, path, next)
			_, err := s.Reload(t.Context(), path)
			if err == nil {
				t.Fatal("Reload succeeded")
			}
			for _, w := range tt.wantIn {
				if !slices.ContainsFunc(reloadProblems(err), func(p string) bool { return strings.Contains(p, w) }) {
					t.Errorf("no problem mentions %q: %q", w, reloadProblems(err))
				}
			}
			if s.current() != before {
				t.Error("a refused reload changed the running generation")
			}
			if got := status(t, s.Handler(), "/acme/workers/directory"); got != http.StatusOK {
				t.Errorf("directory after a refused reload: %d", got)
			}
		})
	}
}

// An old generation is retired only once the requests using it are done,
// and Close still releases the store afterwards.
func TestReloadRetiresAfterDrain(t *testing.T) {
	t.Parallel()
	s, cfg := newReloadServer(t)
	path := filepath.Join(cfg.Dir, setup.ConfigFile)
	old := s.live.acquire() // a request in flight
	if _, err := s.Reload(t.Context(), path); err != nil {
		t.Fatal(err)
	}
	if s.live.cur.Load() == old {
		t.Fatal("Reload did not swap the generation")
	}
	select {
	case <-old.drained:
		t.Fatal("the old generation drained while a request still used it")
	default:
	}
	old.release()
	<-old.drained
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := s.Reload(t.Context(), path); !errors.Is(err, ErrReloadClosed) {
		t.Errorf("Reload after Close: %v", err)
	}
	// The store was released: a new server opens it.
	again, err := New(t.Context(), Deps{Config: cfg})
	if err != nil {
		t.Fatalf("New after Close: %v", err)
	}
	_ = again.Close()
}
