package integration

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestRetention issues certificates, moves the clock past their expiry plus
// the retention period and checks one sweep deletes their data, while a
// certificate issued afterwards is kept and the bound account still orders.
func TestRetention(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()
	cl, u := c.newLego("workers", nil)
	if err := c.register(cl, u, c.token("api")); err != nil {
		t.Fatal(err)
	}
	const n = 5
	var certURLs []string
	for range n {
		res, err := obtain(t, c, cl.Certificate, "api.workers.crank.internal")
		if err != nil {
			t.Fatal(err)
		}
		certURLs = append(certURLs, res.CertURL)
	}
	if st, err := c.srv.Sweep(t.Context()); err != nil || st.Certificates != 0 || st.Orders != 0 {
		t.Fatalf("sweep before expiry deleted %+v (err %v)", st, err)
	}

	// 24h lifetime + 24h retention: two days and a bit later it is all gone.
	c.clock.Advance(49 * time.Hour)
	st, err := c.srv.Sweep(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// smallstep keeps the account's latest order in its order index until
	// the account orders again; that one order waits for a later sweep.
	if st.Certificates != n || st.Orders != n-1 || st.Authorizations != n || st.Challenges != n {
		t.Errorf("sweep deleted %+v, want %d certificates, authorizations and challenges and %d orders", st, n, n-1)
	}
	if st.SpentTokens != 1 {
		t.Errorf("sweep forgot %d spent tokens, want the one expired token", st.SpentTokens)
	}

	// The account is untouched and can order again; the swept order is gone.
	if _, err := obtain(t, c, cl.Certificate, "api.workers.crank.internal"); err != nil {
		t.Fatalf("order after sweep: %v\n%s", err, c.logs)
	}
	c.clock.Advance(-49 * time.Hour)
	if st, err := c.srv.Sweep(t.Context()); err != nil || st.Certificates != 0 {
		t.Errorf("sweep at the real time deleted live data: %+v %v", st, err)
	}
	resp, err := c.httpClient().Get(certURLs[0][:strings.Index(certURLs[0], "/acme/")] + "/health")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("health after sweep: %v", err)
	}
	resp.Body.Close()
}
