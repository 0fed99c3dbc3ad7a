package server

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/crank-platform/crank-ca/config"
)

// TestRouteOf: the route label is a pattern from a fixed set, whatever
// the path holds.
func TestRouteOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern, path, want string
	}{
		{"/acme/", "/acme/workers/directory", "/acme/{provisioner}/directory"},
		{"/acme/", "/acme/workers/new-nonce", "/acme/{provisioner}/new-nonce"},
		{"/acme/", "/acme/adhoc/new-account", "/acme/{provisioner}/new-account"},
		{"/acme/", "/acme/adhoc/new-order", "/acme/{provisioner}/new-order"},
		{"/acme/", "/acme/adhoc/account/Xy12", "/acme/{provisioner}/account/{accID}"},
		{"/acme/", "/acme/adhoc/account/Xy12/orders", "/acme/{provisioner}/account/{accID}/orders"},
		{"/acme/", "/acme/adhoc/order/o1", "/acme/{provisioner}/order/{ordID}"},
		{"/acme/", "/acme/adhoc/order/o1/finalize", "/acme/{provisioner}/order/{ordID}/finalize"},
		{"/acme/", "/acme/adhoc/authz/a1", "/acme/{provisioner}/authz/{authzID}"},
		{"/acme/", "/acme/adhoc/challenge/a1/c1", "/acme/{provisioner}/challenge/{authzID}/{chID}"},
		{"/acme/", "/acme/adhoc/certificate/c1", "/acme/{provisioner}/certificate/{certID}"},
		{"/acme/", "/acme/adhoc/renewal-info/aki.serial", "/acme/{provisioner}/renewal-info/{certID}"},
		{"/acme/", "/acme/adhoc/revoke-cert", "/acme/{provisioner}/revoke-cert"},
		{"/acme/", "/acme/adhoc/order/o1/evil", "/acme/other"},
		{"/acme/", "/acme/adhoc/order/", "/acme/other"},
		{"/acme/", "/acme/adhoc/account/a/b", "/acme/other"},
		{"/acme/", "/acme/adhoc", "/acme/other"},
		{"/acme/", "/acme/some-random-" + strings.Repeat("x", 100) + "/directory", "/acme/{provisioner}/directory"},
		{"GET /roots.pem", "/roots.pem", "GET /roots.pem"},
		{"", "/no/such/thing", "other"},
	}
	for _, tc := range tests {
		r := httptest.NewRequest(http.MethodGet, tc.path, nil)
		r.Pattern = tc.pattern
		if got := routeOf(r); got != tc.want {
			t.Errorf("routeOf(%q, %q) = %q, want %q", tc.pattern, tc.path, got, tc.want)
		}
	}
}

// TestMetricsListenBusy: a metrics port in use fails New with an error
// naming metrics.listen, and leaves the store released (a second New on the
// same directory opens it).
func TestMetricsListenBusy(t *testing.T) {
	t.Parallel()
	cfg := initCA(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = busy.Close() })
	cfg.Metrics.Listen = busy.Addr().String()
	if _, err := New(t.Context(), Deps{Config: cfg}); err == nil || !strings.Contains(err.Error(), "metrics.listen") {
		t.Fatalf("New on a busy metrics port: %v, want an error naming metrics.listen", err)
	}
	cfg.Metrics.Listen = "127.0.0.1:0"
	srv, err := New(t.Context(), Deps{Config: cfg})
	if err != nil {
		t.Fatalf("New after the failed one: %v", err)
	}
	addr := srv.MetricsAddr()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	// Closed without serving: the metrics port is free again.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("metrics port %s still held after Close: %v", addr, err)
	}
	_ = ln.Close()

	cfg.Metrics.Listen = ""
	srv, err = New(t.Context(), Deps{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	if a := srv.MetricsAddr(); a != "" {
		t.Errorf("metrics off: MetricsAddr %q", a)
	}
}

// TestMetricsReconfigure: after a reload's configuration is taken, events
// of a provisioner it added are counted under its name.
func TestMetricsReconfigure(t *testing.T) {
	t.Parallel()
	cfg := initCA(t)
	cfg.Metrics.Listen = "127.0.0.1:9091" // not bound: newServerMetrics opens nothing
	sm, err := newServerMetrics(cfg, nil, nil)
	if err != nil || sm == nil {
		t.Fatalf("newServerMetrics: %v %v", sm, err)
	}
	audit := sm.audit(nil)
	count := func(prov string) float64 {
		t.Helper()
		fams, err := sm.m.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			if f.GetName() != "crank_ca_certificates_issued_total" {
				continue
			}
			for _, m := range f.GetMetric() {
				if m.GetLabel()[0].GetValue() == prov {
					return m.GetCounter().GetValue()
				}
			}
		}
		return -1
	}
	audit.Info("certificate issued", "provisioner", "batch")
	if got := count("other"); got != 1 {
		t.Fatalf("before reconfigure: other = %v, want 1", got)
	}
	next := *cfg
	next.Provisioners = append(append([]config.Provisioner(nil), cfg.Provisioners...), config.Provisioner{Name: "batch"})
	sm.reconfigure(&next)
	audit.Info("certificate issued", "provisioner", "batch")
	if got := count("batch"); got != 1 {
		t.Errorf("after reconfigure: batch = %v, want 1", got)
	}
	var off *serverMetrics
	off.reconfigure(&next) // metrics off: a no-op
	if l := off.audit(nil); l != nil {
		t.Errorf("metrics off: audit(nil) = %v, want nil unchanged", l)
	}
}
