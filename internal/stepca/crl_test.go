package stepca

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"math/big"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	stepdb "github.com/smallstep/certificates/db"

	"github.com/crank-platform/crank-ca/internal/testpki"
)

type crlClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *crlClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *crlClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type crlLogs struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *crlLogs) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *crlLogs) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// newCRLTestCA is an embedded CA on a bbolt file with a one-hour CRL.
func newCRLTestCA(t *testing.T) (*CA, *crlClock, *testpki.CA, *crlLogs) {
	t.Helper()
	root := testpki.New(t, "CRL Test Root")
	inter := root.Intermediate(t, "CRL Test Intermediate")
	clk := &crlClock{t: time.Now()}
	logs := &crlLogs{}
	c, err := New(t.Context(), Config{
		Root: root.Cert, Intermediate: inter.Cert, Signer: inter.Key,
		Storage: Storage{Type: "bbolt", DataSource: filepath.Join(t.TempDir(), "ca.db")},
		Provisioners: []Provisioner{{
			Name: "adhoc", Kind: KindACME, Challenges: []string{"http-01"},
			MinDuration: 5 * time.Minute, DefaultDuration: time.Hour, MaxDuration: 24 * time.Hour,
			Limits: Limits{MaxIdentifiersPerOrder: 1, MaxPendingOrdersPerAccount: 1, NewAccountsPerMinute: 1, NewOrdersPerMinute: 1},
		}},
		Logger:      slog.New(slog.NewTextHandler(logs, nil)),
		Now:         clk.Now,
		CRLInterval: time.Hour,
		CRLURL:      "https://ca.crank.internal/crl",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, clk, inter, logs
}

// revoke records a revocation the way smallstep does, at whatever replica.
func revoke(t *testing.T, c *CA, serial int64, expires time.Time) {
	t.Helper()
	err := c.auth.GetDatabase().Revoke(&stepdb.RevokedCertificateInfo{
		Serial: big.NewInt(serial).String(), ReasonCode: 1, RevokedAt: c.now(), ExpiresAt: expires,
	})
	if err != nil {
		t.Fatal(err)
	}
}

// served fetches the CRL as /crl does and checks it is signed by the
// intermediate and names the distribution point.
func served(t *testing.T, c *CA, issuer *x509.Certificate) *x509.RevocationList {
	t.Helper()
	der, err := c.CRL(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(issuer); err != nil {
		t.Errorf("CRL signature: %v", err)
	}
	idp := false
	for _, e := range crl.Extensions {
		idp = idp || e.Id.Equal(oidIssuingDistributionPoint) && e.Critical && bytes.Contains(e.Value, []byte("https://ca.crank.internal/crl"))
	}
	if !idp {
		t.Error("the CRL has no critical issuing distribution point naming the configured URL")
	}
	return crl
}

func listed(crl *x509.RevocationList, serial int64) bool {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(big.NewInt(serial)) == 0 {
			return true
		}
	}
	return false
}

// TestRefreshCRL walks one CA through the reasons to regenerate, in order.
func TestRefreshCRL(t *testing.T) {
	t.Parallel()
	c, clk, inter, _ := newCRLTestCA(t)
	steps := []struct {
		name       string
		before     func()
		wantReason string
		wantNumber int64
		wantListed []int64
	}{
		{"first", nil, CRLReasonNone, 0, nil},
		{"still good", nil, "", 0, nil},
		{"revocation", func() { revoke(t, c, 1001, clk.Now().Add(time.Hour)) }, CRLReasonRevocation, 1, []int64{1001}},
		{"not yet due at 39m", func() { clk.Advance(39 * time.Minute) }, "", 1, []int64{1001}},
		{"due at 2/3", func() { clk.Advance(2 * time.Minute) }, CRLReasonDue, 2, []int64{1001}},
		{"expired", func() { clk.Advance(61 * time.Minute) }, CRLReasonExpired, 3, nil},
		{"long-expired certificate", func() { revoke(t, c, 1002, clk.Now().Add(-2*time.Hour)) }, "", 3, nil},
	}
	for _, st := range steps {
		if st.before != nil {
			st.before()
		}
		r, err := c.RefreshCRL(t.Context())
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if r.Reason != st.wantReason {
			t.Errorf("%s: reason %q, want %q", st.name, r.Reason, st.wantReason)
		}
		crl := served(t, c, inter.Cert)
		if crl.Number.Int64() != st.wantNumber {
			t.Errorf("%s: served CRL %d, want %d", st.name, crl.Number, st.wantNumber)
		}
		for _, s := range st.wantListed {
			if !listed(crl, s) {
				t.Errorf("%s: serial %d not listed", st.name, s)
			}
		}
		if listed(crl, 1002) {
			t.Errorf("%s: a certificate expired two hours ago is listed", st.name)
		}
	}
}

// TestCRLCompareAndSwap: a generator working from a CRL that is no longer
// the stored one stores nothing, so no number is used twice.
func TestCRLCompareAndSwap(t *testing.T) {
	t.Parallel()
	c, clk, inter, _ := newCRLTestCA(t)
	if _, err := c.RefreshCRL(t.Context()); err != nil {
		t.Fatal(err)
	}
	stale, err := c.readStoredCRL()
	if err != nil {
		t.Fatal(err)
	}
	revoke(t, c, 2001, clk.Now().Add(time.Hour))
	if r, err := c.RefreshCRL(t.Context()); err != nil || r.Number != 1 {
		t.Fatalf("refresh: %+v %v", r, err)
	}
	validity, idp := c.crlSettings()
	_, err = c.generateCRL(stale, nil, clk.Now(), validity, idp)
	if !errors.Is(err, ErrCRLRaced) {
		t.Fatalf("generating from a replaced CRL: %v, want ErrCRLRaced", err)
	}
	if crl := served(t, c, inter.Cert); crl.Number.Int64() != 1 || !listed(crl, 2001) {
		t.Errorf("stored CRL %d (listing 2001: %v), want 1 listing it", crl.Number, listed(crl, 2001))
	}
}

// TestServeCRLWaitsForRevocation: a CRL request that finds a revocation
// missing waits for the holder's next refresh, and after crlServeWait
// serves the stored CRL anyway.
func TestServeCRLWaitsForRevocation(t *testing.T) {
	t.Parallel()
	c, clk, inter, logs := newCRLTestCA(t)
	if _, err := c.RefreshCRL(t.Context()); err != nil {
		t.Fatal(err)
	}

	revoke(t, c, 3001, clk.Now().Add(time.Hour))
	got := make(chan *x509.RevocationList, 1)
	go func() {
		der, err := c.CRL(t.Context())
		if err != nil {
			t.Error(err)
		}
		crl, _ := x509.ParseRevocationList(der)
		got <- crl
	}()
	select {
	case <-got:
		t.Fatal("served a CRL missing a revocation without waiting")
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := c.RefreshCRL(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case crl := <-got:
		if crl == nil || !listed(crl, 3001) {
			t.Error("the CRL served after the refresh does not list the revocation")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("still waiting after the refresh")
	}

	revoke(t, c, 3002, clk.Now().Add(time.Hour))
	start := time.Now()
	crl := served(t, c, inter.Cert)
	if waited := time.Since(start); waited < crlServeWait || waited > crlServeWait+2*time.Second {
		t.Errorf("with no refresh it waited %s, want about %s", waited, crlServeWait)
	}
	if listed(crl, 3002) || crl.Number.Int64() != 1 {
		t.Errorf("served CRL %d, want the stored one (1)", crl.Number)
	}
	if !strings.Contains(logs.String(), "serving a CRL that misses a revocation") {
		t.Errorf("the stale answer is not logged:\n%s", logs)
	}
}

// TestServeCRLNoneYet: before the first refresh a request waits, bounded by
// its context.
func TestServeCRLNoneYet(t *testing.T) {
	t.Parallel()
	c, _, _, _ := newCRLTestCA(t)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.CRL(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("no CRL yet: %v, want the context's deadline", err)
	}
}
