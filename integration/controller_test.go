package integration

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/pki"
	"github.com/crank-platform/crank-ca/provisioner"
)

const testControllerID = "spiffe://crank.internal/controller/crank"

// controllerClient is an HTTPS client of c presenting a client-only
// certificate for id, issued from c's intermediate as `crank-ca admin cert
// --spiffe-id` issues it.
func (c *ca) controllerClient(t *testing.T, id string) *http.Client {
	t.Helper()
	authority, err := pki.Load(c.cfg.Resolve(c.cfg.PKI.RootCert), c.cfg.Resolve(c.cfg.PKI.IntermediateCert), c.cfg.Resolve(c.cfg.PKI.IntermediateKey))
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := pki.IssueClientCert(authority, spiffeid.RequireFromString(id), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}

// controllerDo sends one admin API request and returns the status and body.
func controllerDo(t *testing.T, c *ca, hc *http.Client, method, path, body string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, c.url+admin.Prefix+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// TestControllerDelegation runs controller delegation end to end over real
// mutual TLS: a controller mints a join token for a worker inside its
// pattern, the worker enrols with it through lego, and everything outside
// the controller's limits is refused with 403 and audited.
func TestControllerDelegation(t *testing.T) {
	t.Parallel()
	c := newCA(t, func(cfg *config.Config) {
		cfg.Admin.Controllers = []config.Controller{{
			SPIFFEID: testControllerID, Provisioner: "workers", WorkerPattern: "build-[0-9]+", MaxTTL: config.Dur(2 * time.Hour),
		}}
	})
	c.start()
	hc := c.controllerClient(t, testControllerID)

	// Mint for build-7 without provisioner or TTL: the controller's own
	// provisioner, and the provisioner's 1h default (below the 2h bound).
	before := time.Now()
	status, body := controllerDo(t, c, hc, http.MethodPost, "/tokens", `{"worker":"build-7"}`)
	if status != http.StatusCreated {
		t.Fatalf("controller mint for build-7: %d %s\n%s", status, body, c.logs)
	}
	var tr admin.TokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		t.Fatal(err)
	}
	if ttl := tr.ExpiresAt.Sub(before); ttl < 59*time.Minute || ttl > time.Hour+time.Minute {
		t.Errorf("token expires in %v, want the provisioner's default 1h", ttl)
	}
	claims, err := provisioner.ReadClaims(tr.Token)
	if err != nil || claims.Provisioner != "workers" || claims.Worker != "build-7" {
		t.Errorf("token claims %+v, %v; want workers/build-7", claims, err)
	}

	// The worker enrols with it.
	hmacKey, err := base64.RawURLEncoding.DecodeString(tr.HMACKey)
	if err != nil {
		t.Fatal(err)
	}
	cl, u := c.newLego("workers", nil)
	if err := c.register(cl, u, provisioner.Token{KID: tr.KID, HMACKey: hmacKey}); err != nil {
		t.Fatalf("register with the controller's token: %v\n%s", err, c.logs)
	}
	res, err := obtain(t, c, cl.Certificate, "build-7.workers.crank.internal")
	if err != nil {
		t.Fatalf("obtain: %v\n%s", err, c.logs)
	}
	if got := uris(parseChain(t, res.Certificate)[0]); !slices.Equal(got, []string{"spiffe://crank.internal/worker/build-7"}) {
		t.Errorf("URI SANs = %v, want the SPIFFE ID of build-7", got)
	}

	// Outside its limits: 403 with a problem naming them.
	for _, tc := range []struct{ name, method, path, body string }{
		{"worker outside the pattern", http.MethodPost, "/tokens", `{"worker":"web-1"}`},
		{"TTL above its bound", http.MethodPost, "/tokens", `{"worker":"build-8","ttl":"3h"}`},
		{"another provisioner", http.MethodPost, "/tokens", `{"provisioner":"adhoc","worker":"build-8"}`},
		{"list workers", http.MethodGet, "/workers", ""},
		{"disable a worker", http.MethodPost, "/workers/workers/build-7/disable", ""},
		{"revoke", http.MethodPost, "/revoke", `{"worker":"build-7"}`},
	} {
		status, body := controllerDo(t, c, hc, tc.method, tc.path, tc.body)
		var p admin.Problem
		if err := json.Unmarshal(body, &p); err != nil || status != http.StatusForbidden || p.Type != admin.ProblemForbidden ||
			!strings.Contains(p.Detail, "is a controller: it may only mint join tokens") {
			t.Errorf("%s: %d %s; want a 403 problem stating the controller's limits", tc.name, status, body)
		}
	}

	// Nothing was disabled or revoked; the admin still sees build-7.
	var workers []admin.Worker
	if st := c.admin(t, http.MethodGet, "/workers", nil, &workers); st != http.StatusOK {
		t.Fatalf("admin list workers: %d", st)
	}
	if i := slices.IndexFunc(workers, func(w admin.Worker) bool { return w.Name == "build-7" }); i < 0 || workers[i].Disabled || workers[i].LiveCertificates != 1 {
		t.Errorf("workers %+v; want build-7 enabled with one live certificate", workers)
	}

	// Every controller request is audited under its ID.
	var minted, refused int
	for line := range strings.SplitSeq(c.logs.String(), "\n") {
		if !strings.Contains(line, `msg="admin request"`) || !strings.Contains(line, "log=audit") || !strings.Contains(line, "controller="+testControllerID) {
			continue
		}
		switch {
		case strings.Contains(line, "status=201") && strings.Contains(line, "worker=build-7"):
			minted++
		case strings.Contains(line, "status=403") && strings.Contains(line, "outcome=denied") && strings.Contains(line, "detail="):
			refused++
		}
	}
	if minted != 1 || refused != 6 {
		t.Errorf("audit: %d controller mints and %d refusals, want 1 and 6\n%s", minted, refused, c.logs)
	}
	if strings.Contains(c.logs.String(), tr.HMACKey) {
		t.Error("a log contains the token's HMAC key")
	}
}
