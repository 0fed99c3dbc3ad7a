package server

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/setup"
	"github.com/crank-platform/crank-ca/provisioner"
)

func initCA(t *testing.T) *config.Config {
	t.Helper()
	res, err := setup.Init(setup.Options{Dir: filepath.Join(t.TempDir(), "ca")})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(res.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestMintToken(t *testing.T) {
	t.Parallel()
	cfg := initCA(t)
	adhoc, _ := cfg.Provisioner("adhoc")
	now := time.Now()

	tok, err := MintToken(cfg, TokenRequest{Worker: "api", Now: now})
	if err != nil {
		t.Fatal(err)
	}
	key, err := LoadTokenKey(cfg)
	if err != nil {
		t.Fatal(err)
	}
	claims, _, err := key.Verify(tok.KID, now)
	if err != nil || claims.Worker != "api" || claims.Provisioner != "workers" || len(claims.DNSNames) != 1 || claims.DNSNames[0] != "api.workers.crank.internal" {
		t.Fatalf("minted token verifies as %+v, %v", claims, err)
	}
	if d := tok.ExpiresAt.Sub(now); d < 59*time.Minute || d > time.Hour {
		t.Errorf("default TTL %s, want the provisioner's 1h", d)
	}
	if kid, _, err := provisioner.ParseToken(tok.Encode()); err != nil || kid != tok.KID {
		t.Errorf("compact token does not parse back: %v", err)
	}

	for _, tc := range []struct {
		name string
		req  TokenRequest
		want string
	}{
		{"no worker", TokenRequest{}, "worker: required"},
		{"unknown worker", TokenRequest{Worker: "Bad_Name"}, "worker: "},
		{"ttl above max", TokenRequest{Worker: "api", TTL: 25 * time.Hour}, "ttl: "},
		{"negative ttl", TokenRequest{Worker: "api", TTL: -time.Second}, "ttl: "},
		{"unknown provisioner", TokenRequest{Provisioner: "nope"}, "provisioner: "},
		{"acme without EAB", TokenRequest{Provisioner: "adhoc"}, "does not require EAB"},
	} {
		if _, err := MintToken(cfg, tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want it to mention %q", tc.name, err, tc.want)
		}
	}

	adhoc.RequireEAB = true
	if _, err := MintToken(cfg, TokenRequest{Provisioner: "adhoc", Worker: "api"}); err == nil {
		t.Error("worker token for an ACME provisioner accepted")
	}
	eab, err := MintToken(cfg, TokenRequest{Provisioner: "adhoc"})
	if err != nil || eab.Claims.Worker != "" {
		t.Errorf("EAB credentials: %+v %v", eab, err)
	}
}

func TestServerNames(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		listen string
		ips    []string
		dns    []string
	}{
		{"127.0.0.1:9090", []string{"127.0.0.1"}, []string{"localhost"}},
		{"0.0.0.0:9090", []string{"127.0.0.1", "::1"}, []string{"localhost"}},
		{":9090", []string{"127.0.0.1", "::1"}, []string{"localhost"}},
		{"ca.internal:9090", nil, []string{"localhost", "ca.internal"}},
	} {
		cfg := &config.Config{Listen: tc.listen, DNSNames: []string{"localhost"}}
		dns, ips := serverNames(cfg)
		var got []string
		for _, ip := range ips {
			got = append(got, ip.String())
		}
		if strings.Join(got, ",") != strings.Join(tc.ips, ",") || strings.Join(dns, ",") != strings.Join(tc.dns, ",") {
			t.Errorf("%s: dns %v ips %v, want %v %v", tc.listen, dns, got, tc.dns, tc.ips)
		}
	}
}

func TestProvisionersReportsEveryProblem(t *testing.T) {
	t.Parallel()
	cfg := initCA(t)
	cfg.Provisioners[0].Workers.DNSTemplates = []string{"{nope}.x"}
	cfg.Provisioners = append(cfg.Provisioners, config.Provisioner{Name: "broken", Type: config.TypeWorkerAttestation, Identities: []config.WorkerIdentity{{Name: "a", IPs: []string{"300.1.1.1"}}}})
	_, err := Provisioners(cfg)
	if err == nil || !strings.Contains(err.Error(), `"workers"`) || !strings.Contains(err.Error(), `"broken"`) {
		t.Fatalf("err = %v, want problems of both provisioners", err)
	}
}
