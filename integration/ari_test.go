package integration

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certificate"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/admin"
)

type ariWindow struct {
	Start, End time.Time
	RetryAfter string
}

// getARI fetches renewalInfo for a certID without authentication.
func (c *ca) getARI(t *testing.T, prov, certID string) (int, ariWindow, []byte) {
	t.Helper()
	resp, err := c.httpClient().Get(c.url + "/acme/" + prov + "/renewal-info/" + certID)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var w struct {
		SuggestedWindow struct{ Start, End time.Time } `json:"suggestedWindow"`
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &w); err != nil {
			t.Fatalf("renewalInfo body %q: %v", body, err)
		}
	}
	return resp.StatusCode, ariWindow{Start: w.SuggestedWindow.Start, End: w.SuggestedWindow.End, RetryAfter: resp.Header.Get("Retry-After")}, body
}

func TestARI(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()

	resp, err := c.httpClient().Get(c.directory("workers"))
	if err != nil {
		t.Fatal(err)
	}
	var dir map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&dir)
	resp.Body.Close()
	if ri, _ := dir["renewalInfo"].(string); !strings.HasSuffix(ri, "/acme/workers/renewal-info") {
		t.Fatalf("directory renewalInfo = %q", dir["renewalInfo"])
	}

	cl, u := c.newLego("workers", nil)
	if err := c.register(cl, u, c.token("api")); err != nil {
		t.Fatal(err)
	}
	res, err := obtain(t, c, cl.Certificate, "api.workers.crank.internal")
	if err != nil {
		t.Fatal(err)
	}
	leaf := parseChain(t, res.Certificate)[0]
	certID, err := certificate.MakeARICertID(leaf)
	if err != nil {
		t.Fatal(err)
	}
	status, w, body := c.getARI(t, "workers", certID)
	if status != http.StatusOK || w.RetryAfter == "" {
		t.Fatalf("renewalInfo: %d %s (Retry-After %q)", status, body, w.RetryAfter)
	}
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if lo, hi := leaf.NotBefore.Add(life/2-time.Second), leaf.NotBefore.Add(life*8/10+time.Second); w.Start.Before(lo) || w.End.After(hi) {
		t.Errorf("window %s..%s outside the band %s..%s", w.Start, w.End, lo, hi)
	}
	// lego's own ARI call agrees.
	info, err := cl.Certificate.GetRenewalInfo(certificate.RenewalInfoRequest{Cert: leaf})
	if err != nil || !info.SuggestedWindow.Start.Equal(w.Start) || info.RetryAfter <= 0 {
		t.Errorf("lego GetRenewalInfo: %+v %v", info, err)
	}

	for _, bad := range []string{"nodot", "AAAA.!!", "AAAA.gA", strings.Repeat("A", 600)} {
		if status, _, body := c.getARI(t, "workers", bad); status != http.StatusBadRequest || !strings.Contains(string(body), "malformed") {
			t.Errorf("certID %q: %d %s, want 400 malformed", bad, status, body)
		}
	}
	unknown := strings.Split(certID, ".")[0] + ".AQIDBAUGBwg"
	if status, _, _ := c.getARI(t, "workers", unknown); status != http.StatusNotFound {
		t.Errorf("unknown certID: %d, want 404", status)
	}

	// Renewal through ARI with replaces; a second order replacing the same
	// certificate is refused with alreadyReplaced (lego then retries without).
	key := newKey(t)
	renewed, err := cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: csrFor(t, key, "", []string{"api.workers.crank.internal"}, nil), PrivateKey: key, ReplacesCertID: certID})
	if err != nil {
		t.Fatalf("renew with replaces: %v\n%s", err, c.logs)
	}
	if !strings.Contains(c.logs.String(), "certificate replacement ordered") {
		t.Error("replaces was not recorded")
	}
	key2 := newKey(t)
	if _, err := cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: csrFor(t, key2, "", []string{"api.workers.crank.internal"}, nil), PrivateKey: key2, ReplacesCertID: certID}); err != nil {
		t.Fatalf("lego retries without replaces after alreadyReplaced: %v", err)
	}
	if !strings.Contains(c.logs.String(), "alreadyReplaced") {
		t.Error("second replacement was not refused with alreadyReplaced")
	}

	// Revocation (ACME revokeCert) moves the window to now and lands in the CRL.
	if err := cl.Certificate.Revoke(renewed.Certificate); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	rleaf := parseChain(t, renewed.Certificate)[0]
	rid, _ := certificate.MakeARICertID(rleaf)
	if _, w, _ := c.getARI(t, "workers", rid); time.Until(w.Start) > time.Second {
		t.Errorf("revoked certificate's window starts %s, want now", w.Start)
	}
	crl := c.fetchCRL(t)
	if !crlHas(crl, rleaf.SerialNumber) {
		t.Errorf("revoked serial %s not in the CRL", rleaf.SerialNumber)
	}
	if !strings.Contains(c.logs.String(), `msg="certificate revoked"`) || !strings.Contains(c.logs.String(), "acme revokeCert") {
		t.Error("the ACME revocation is not in the audit stream")
	}
	var live []admin.Certificate
	c.admin(t, http.MethodGet, "/certificates?worker=api", nil, &live)
	for _, lc := range live {
		if lc.Serial == rleaf.SerialNumber.String() {
			t.Error("a certificate revoked through ACME is still listed as live")
		}
	}
}

// fetchCRL downloads /crl and verifies its signature against the
// intermediate.
func (c *ca) fetchCRL(t *testing.T) *x509.RevocationList {
	t.Helper()
	resp, err := c.httpClient().Get(c.url + "/crl")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	der, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /crl: %d %s", resp.StatusCode, der)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(c.dir, "pki", "intermediate.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(parseChain(t, b)[0]); err != nil {
		t.Fatalf("CRL signature does not verify against the intermediate: %v", err)
	}
	return crl
}

func crlHas(crl *x509.RevocationList, serial *big.Int) bool {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(serial) == 0 {
			return true
		}
	}
	return false
}

// TestARISpread: 200 simulated workers (in-process lego clients) issued at
// once get renewal windows spread across the band: no tenth of the band
// holds more than a quarter of them.
func TestARISpread(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("issues 200 certificates")
	}
	// 200 workers enrol from one address at once: more than the default
	// new-account rate per address allows.
	c := newCA(t, func(cfg *config.Config) {
		p, _ := cfg.Provisioner("workers")
		p.Limits.NewAccountsPerMinute = 1000
	})
	c.start()
	const n = 200
	type issued struct {
		leaf   *x509.Certificate
		certID string
	}
	var (
		mu   sync.Mutex
		out  []issued
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 16)
	)
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			name := fmt.Sprintf("w%03d", i)
			cl, u := c.newLego("workers", nil)
			if err := c.register(cl, u, c.token(name)); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			res, err := obtain(t, c, cl.Certificate, name+".workers.crank.internal")
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			leaf := parseChain(t, res.Certificate)[0]
			id, _ := certificate.MakeARICertID(leaf)
			out = append(out, issued{leaf, id})
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d issuances failed, first: %v", len(errs), errs[0])
	}
	issuing := time.Since(start)
	var buckets [10]int
	for _, is := range out {
		_, w, _ := c.getARI(t, "workers", is.certID)
		life := is.leaf.NotAfter.Sub(is.leaf.NotBefore)
		frac := float64(w.Start.Sub(is.leaf.NotBefore)) / float64(life)
		b := int((frac - 0.5) / 0.3 * 10)
		buckets[min(max(b, 0), 9)]++
	}
	t.Logf("%d certificates issued in %s; window starts per tenth of the 50%%-80%% band: %v", n, issuing.Round(time.Millisecond), buckets)
	for i, k := range buckets {
		if k > n/4 {
			t.Errorf("tenth %d of the band holds %d of %d windows", i, k, n)
		}
	}
}
