package integration

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/agent"
	"github.com/crank-platform/crank-ca/internal/worker"
)

// TestRevokedPeerRefused: an operator revokes alpha's certificate; it shows
// in the CRL, and beta's runtime (fetching the CRL every second) refuses a
// client presenting it, while alpha, told by ARI, renews and is served again.
func TestRevokedPeerRefused(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()
	var logs syncBuffer
	alpha, beta := c.runWorker(t, "alpha", &logs), c.runWorker(t, "beta", &logs)
	old := alpha.Agent().Current()
	url := "https://" + beta.Addr().String() + "/"

	var res admin.RevokeResult
	if st := c.admin(t, http.MethodPost, "/revoke", admin.RevokeRequest{Serial: old.Serial(), Reason: "keyCompromise"}, &res); st != http.StatusOK || len(res.Revoked) != 1 {
		t.Fatalf("revoke: %d %+v", st, res)
	}
	if !crlHas(c.fetchCRL(t), old.Leaf().SerialNumber) {
		t.Fatal("revoked serial missing from the CRL")
	}
	for deadline := time.Now().Add(10 * time.Second); !beta.Agent().Revoked(old.Leaf().SerialNumber); {
		if time.Now().After(deadline) {
			t.Fatalf("beta never learnt of the revocation\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	stale := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs:            old.RootPool(),
		InsecureSkipVerify: true, //nolint:gosec // this client only tests beta's refusal
		Certificates:       []tls.Certificate{*old.TLSCertificate()},
	}}}
	if resp, err := stale.Get(url); err == nil {
		resp.Body.Close()
		t.Fatal("beta served a peer presenting a revoked certificate")
	}
}

// TestRevokedPeerOnOpenConnection: a kept-alive connection does not outlive
// a revocation: once beta's CRL lists alpha's certificate, beta refuses
// alpha's next request on the old connection, and alpha, told by ARI to
// renew, reconnects with its new certificate.
func TestRevokedPeerOnOpenConnection(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()
	var logs syncBuffer
	alpha, beta := c.runWorker(t, "alpha", &logs), c.runWorker(t, "beta", &logs)
	client := alpha.Client(nil)
	url := "https://" + beta.Addr().String() + "/"
	get := func() (int, error) {
		resp, err := client.Get(url)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var g worker.Greeting
		_ = json.NewDecoder(resp.Body).Decode(&g)
		return resp.StatusCode, nil
	}
	if st, err := get(); err != nil || st != http.StatusOK {
		t.Fatalf("first call: %d %v", st, err)
	}
	old := alpha.Agent().Current()
	if st := c.admin(t, http.MethodPost, "/revoke", admin.RevokeRequest{Serial: old.Serial()}, nil); st != http.StatusOK {
		t.Fatalf("revoke: %d", st)
	}
	for deadline := time.Now().Add(10 * time.Second); !beta.Agent().Revoked(old.Leaf().SerialNumber); {
		if time.Now().After(deadline) {
			t.Fatal("beta never learnt of the revocation")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Until alpha has rotated, every answer over a connection made with the
	// revoked certificate is a refusal, never a greeting.
	for deadline := time.Now().Add(30 * time.Second); alpha.Agent().Current() == old; {
		if st, err := get(); err == nil && st == http.StatusOK && alpha.Agent().Current() == old {
			t.Fatal("beta greeted a peer whose certificate it knows is revoked")
		}
		if time.Now().After(deadline) {
			t.Fatalf("alpha never renewed after its revocation\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		st, err := get()
		if err == nil && st == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alpha's renewed certificate is not accepted: %d %v", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDisabledWorker: disabling a worker revokes its certificates (they are
// in the CRL) and its agent can no longer renew; enabling it needs a new
// token, with which it enrols again.
func TestDisabledWorker(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()
	state := t.TempDir()
	var logs syncBuffer
	a := c.newAgent(t, "api", c.token("api").Encode(), state, &logs)
	if err := a.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	id := a.Current()

	var w admin.Worker
	if st := c.admin(t, http.MethodPost, "/workers/workers/api/disable", nil, &w); st != http.StatusOK || !w.Disabled {
		t.Fatalf("disable: %d %+v", st, w)
	}
	if !crlHas(c.fetchCRL(t), id.Leaf().SerialNumber) {
		t.Error("the disabled worker's certificate is not in the CRL")
	}
	// Renewal with the bound account is refused.
	b := c.newAgent(t, "api", "", state, &logs)
	if err := b.Start(t.Context()); err != nil { // the certificate in state is revoked but unexpired
		t.Fatal(err)
	}
	if err := forceRenew(t, b); !errors.Is(err, agent.ErrAccountRejected) {
		t.Fatalf("renewal of a disabled worker: %v, want ErrAccountRejected", err)
	}
	// A token for a disabled worker is not even minted.
	if st := c.admin(t, http.MethodPost, "/tokens", admin.TokenRequest{Worker: "api"}, nil); st != http.StatusConflict {
		t.Errorf("token for a disabled worker: %d, want 409", st)
	}
	if st := c.admin(t, http.MethodPost, "/workers/workers/api/enable", nil, &w); st != http.StatusOK || w.Disabled {
		t.Fatalf("enable: %d %+v", st, w)
	}
	// The old account stays unusable; a new token (issued-at has second
	// precision) enrols the worker again.
	if err := forceRenew(t, b); !errors.Is(err, agent.ErrAccountRejected) {
		t.Errorf("old account after enable: %v, want ErrAccountRejected", err)
	}
	time.Sleep(1100 * time.Millisecond)
	var tok admin.TokenResponse
	if st := c.admin(t, http.MethodPost, "/tokens", admin.TokenRequest{Worker: "api"}, &tok); st != http.StatusCreated {
		t.Fatalf("token after enable: %d", st)
	}
	d := c.newAgent(t, "api", tok.Token, state, &logs)
	if err := d.Start(t.Context()); err != nil {
		t.Fatalf("re-enrolment with a new token: %v\n%s", err, logs.String())
	}
	if d.Current().Serial() == id.Serial() || !strings.Contains(logs.String(), "registering a new account") {
		t.Error("the worker did not enrol again")
	}
}

// forceRenew runs one renewal attempt through Run and returns its error.
func forceRenew(t *testing.T, a *agent.Agent) error {
	t.Helper()
	return a.RenewNow(t.Context())
}
