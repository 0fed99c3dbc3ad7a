package provisioner_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/provisioner"
	"github.com/google/go-cmp/cmp"
)

func TestJoinTokenAttestor(t *testing.T) {
	t.Parallel()
	k := mustKey(t)
	now := time.Now()
	cfg := defaultConfig()
	cfg.Pattern = "api|web-[0-9]+"
	ids := mustIdentities(t, cfg)
	a, err := provisioner.NewJoinTokenAttestor(provisioner.JoinTokenConfig{
		Provisioner: "workers", Key: k, Identities: ids,
		Now: func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	mint := func(p, w string, ttl time.Duration) provisioner.Token {
		t.Helper()
		tok, err := k.Mint(provisioner.TokenClaims{Provisioner: p, Worker: w, ExpiresAt: now.Add(ttl)})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	good := mint("workers", "api", time.Hour)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name    string
		ctx     context.Context
		kid     string
		want    error
		wantMsg string
	}{
		{name: "ok", kid: good.KID},
		{name: "other provisioner", kid: mint("acme", "api", time.Hour).KID, want: provisioner.ErrTokenForged, wantMsg: `token minted for provisioner "acme"`},
		{name: "plain EAB token", kid: mint("workers", "", time.Hour).KID, want: provisioner.ErrUnknownWorker},
		{name: "pattern worker", kid: mint("workers", "web-7", time.Hour).KID},
		{name: "unknown worker", kid: mint("workers", "db", time.Hour).KID, want: provisioner.ErrUnknownWorker, wantMsg: `"db"`},
		{name: "forged", kid: flip(good.KID, len(good.KID)-5), want: provisioner.ErrTokenForged},
		{name: "malformed", kid: "hello", want: provisioner.ErrTokenMalformed},
		{name: "cancelled", ctx: cancelled, kid: good.KID, want: context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			id, c, err := a.Attest(ctx, tt.kid)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Attest() error = %v, want %v", err, tt.want)
			}
			if tt.wantMsg != "" && !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q lacks %q", err, tt.wantMsg)
			}
			if err != nil {
				return
			}
			if id.SPIFFEID.IsZero() || c.Worker != id.Worker || c.Provisioner != "workers" {
				t.Errorf("Attest() = %+v, %+v", id, c)
			}
			key, err := a.HMACKey(tt.kid)
			if err != nil {
				t.Fatalf("HMACKey: %v", err)
			}
			if !bytes.Equal(key, good.HMACKey) && tt.kid == good.KID {
				t.Errorf("HMACKey = %x, want %x", key, good.HMACKey)
			}
		})
	}

	// The expiry is judged by the injected clock.
	later, err := provisioner.NewJoinTokenAttestor(provisioner.JoinTokenConfig{
		Provisioner: "workers", Key: k, Identities: ids,
		Now: func() time.Time { return now.Add(2 * time.Hour) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := later.Attest(context.Background(), good.KID); !errors.Is(err, provisioner.ErrTokenExpired) {
		t.Errorf("Attest() after expiry = %v, want ErrTokenExpired", err)
	}
	if _, err := later.HMACKey(good.KID); !errors.Is(err, provisioner.ErrTokenExpired) {
		t.Errorf("HMACKey() after expiry = %v, want ErrTokenExpired", err)
	}
	if _, err := a.HMACKey(mint("acme", "api", time.Hour).KID); !errors.Is(err, provisioner.ErrTokenForged) {
		t.Errorf("HMACKey() for other provisioner = %v, want ErrTokenForged", err)
	}
}

func TestAttestIdentity(t *testing.T) {
	t.Parallel()
	k := mustKey(t)
	a, err := provisioner.NewJoinTokenAttestor(provisioner.JoinTokenConfig{Provisioner: "workers", Key: k, Identities: mustIdentities(t, defaultConfig())})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := k.Mint(provisioner.TokenClaims{Provisioner: "workers", Worker: "api", ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	id, c, err := a.Attest(context.Background(), tok.KID)
	if err != nil {
		t.Fatal(err)
	}
	want := provisioner.Identity{Worker: "api", SPIFFEID: mustID(t, "spiffe://crank.internal/worker/api"), DNSNames: []string{"api.workers.crank.internal"}}
	if diff := cmp.Diff(want, id, cmpOpts); diff != "" {
		t.Errorf("identity mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(tok.Claims, c); diff != "" {
		t.Errorf("claims mismatch (-want +got):\n%s", diff)
	}
}

func TestNewJoinTokenAttestorErrors(t *testing.T) {
	t.Parallel()
	ids := mustIdentities(t, defaultConfig())
	tests := []struct {
		name  string
		cfg   provisioner.JoinTokenConfig
		wants []string
	}{
		{name: "empty", cfg: provisioner.JoinTokenConfig{}, wants: []string{"provisioner:", "key: missing", "identities: missing"}},
		{name: "no key", cfg: provisioner.JoinTokenConfig{Provisioner: "p", Identities: ids}, wants: []string{"key: missing"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := provisioner.NewJoinTokenAttestor(tt.cfg)
			if !errors.Is(err, provisioner.ErrInvalidConfig) {
				t.Fatalf("error = %v, want ErrInvalidConfig", err)
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
