package stepca

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/smallstep/certificates/acme"

	"github.com/crank-platform/crank-ca/internal/testpki"
)

func reloadProvisioners(def time.Duration, perMinute int) []Provisioner {
	return []Provisioner{{
		Name: "adhoc", Kind: KindACME, Challenges: []string{"http-01"},
		MinDuration: 5 * time.Minute, DefaultDuration: def, MaxDuration: 24 * time.Hour,
		Limits: Limits{MaxIdentifiersPerOrder: 1, MaxPendingOrdersPerAccount: 1, NewAccountsPerMinute: perMinute, NewOrdersPerMinute: perMinute},
	}}
}

// TestRebuild: a CA rebuilt on the open store signs with the new
// intermediate (its CRL is re-signed at once), keeps the nonce replay set
// and the rate buckets unless the rates changed, and leaves the store open
// when the old one is retired.
func TestRebuild(t *testing.T) {
	t.Parallel()
	root := testpki.New(t, "Reload Root")
	inter1, inter2 := root.Intermediate(t, "Reload Intermediate 1"), root.Intermediate(t, "Reload Intermediate 2")
	clk := &crlClock{t: time.Now()}
	old, err := New(t.Context(), Config{
		Root: root.Cert, Intermediate: inter1.Cert, Signer: inter1.Key,
		Storage:      Storage{Type: "bbolt", DataSource: filepath.Join(t.TempDir(), "ca.db")},
		Provisioners: reloadProvisioners(time.Hour, 10),
		Logger:       slog.New(slog.DiscardHandler), Now: clk.Now, CRLInterval: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.RefreshCRL(t.Context()); err != nil {
		t.Fatal(err)
	}
	if r, err := old.RefreshIssuerCRL(t.Context()); err != nil || r.Reason != "" {
		t.Fatalf("RefreshIssuerCRL with an unchanged issuer: %+v, %v", r, err)
	}

	same, err := old.Rebuild(t.Context(), Config{Root: root.Cert, Intermediate: inter1.Cert, Signer: inter1.Key, Provisioners: reloadProvisioners(2*time.Hour, 10), CRLInterval: time.Hour})
	if err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	if same.linker.rates != old.linker.rates || same.db.pending != old.db.pending || same.nonces != old.nonces {
		t.Error("a rebuild with unchanged rates did not keep the buckets, pending counts and nonces")
	}
	if got := same.linker.specs["adhoc"].DefaultDuration; got != 2*time.Hour {
		t.Errorf("rebuilt default duration %s", got)
	}
	if err := old.Retire(); err != nil {
		t.Fatalf("Retire: %v", err)
	}

	next, err := same.Rebuild(t.Context(), Config{Root: root.Cert, Intermediate: inter2.Cert, Signer: inter2.Key, Provisioners: reloadProvisioners(2*time.Hour, 20), CRLInterval: time.Hour})
	if err != nil {
		t.Fatalf("Rebuild with a new intermediate: %v", err)
	}
	t.Cleanup(func() { _ = next.Close() })
	if next.linker.rates == same.linker.rates {
		t.Error("changed rates kept the old buckets")
	}
	if err := next.Ready(t.Context()); err != nil {
		t.Fatalf("the store is not open after Retire: %v", err)
	}

	// A nonce issued before the rebuild is good once, at either CA.
	ctx := withState(context.Background())
	n, err := same.db.CreateNonce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := next.db.DeleteNonce(ctx, n); err != nil {
		t.Errorf("a nonce of the previous CA was refused: %v", err)
	}
	if err := same.db.DeleteNonce(ctx, n); err == nil {
		t.Error("a nonce spent at the rebuilt CA was accepted again at the previous one")
	} else if ae, ok := err.(*acme.Error); !ok || ae.Type != "urn:ietf:params:acme:error:badNonce" {
		t.Errorf("replayed nonce: %v", err)
	}

	r, err := next.RefreshIssuerCRL(t.Context())
	if err != nil || r.Reason != CRLReasonIssuer || r.Number != 1 {
		t.Fatalf("RefreshIssuerCRL after the rotation: %+v, %v", r, err)
	}
	stored, err := next.readStoredCRL()
	if err != nil || stored.crl.CheckSignatureFrom(inter2.Cert) != nil {
		t.Fatalf("the stored CRL is not signed by the new intermediate: %v", err)
	}
	if r, err := next.RefreshIssuerCRL(t.Context()); err != nil || r.Reason != "" {
		t.Errorf("a second RefreshIssuerCRL regenerated: %+v, %v", r, err)
	}
	if err := same.Retire(); err != nil {
		t.Fatalf("Retire: %v", err)
	}
}

func TestRebuildRefusesInvalidConfig(t *testing.T) {
	t.Parallel()
	c, _, inter, _ := newCRLTestCA(t)
	for name, cfg := range map[string]Config{
		"no provisioners": {Root: inter.Cert, Intermediate: inter.Cert, Signer: inter.Key},
		"no signer":       {Provisioners: reloadProvisioners(time.Hour, 1)},
		"bad lifetimes":   {Root: inter.Cert, Intermediate: inter.Cert, Signer: inter.Key, Provisioners: reloadProvisioners(48*time.Hour, 1)},
	} {
		if n, err := c.Rebuild(t.Context(), cfg); err == nil {
			_ = n.Retire()
			t.Errorf("%s: Rebuild succeeded", name)
		}
	}
	if err := c.Ready(t.Context()); err != nil {
		t.Errorf("a refused Rebuild hurt the running CA: %v", err)
	}
}
