package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/crank-platform/crank-ca/internal/worker"
	"github.com/crank-platform/crank-ca/internal/workertls"
)

// foreignCert makes a certificate for uri from a CA nobody trusts.
func foreignCert(t *testing.T, uri string) tls.Certificate {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rogue"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), URIs: []*url.URL{u}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestWorkerRefusesForeignPeers: a caller with a certificate from another CA
// (even with a plausible SPIFFE ID) and a caller with the wrong SPIFFE ID are
// refused; an authorized caller is greeted by name.
func TestWorkerRefusesForeignPeers(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()
	var logs syncBuffer
	alpha := c.runWorker(t, "alpha", &logs)
	beta := c.runWorker(t, "beta", &logs)
	url := "https://" + alpha.Addr().String() + "/"
	alphaID := alpha.Agent().Current().SPIFFEID

	resp, err := beta.Client(workertls.AuthorizeID(alphaID)).Get(url)
	if err != nil {
		t.Fatalf("authorized peer: %v", err)
	}
	resp.Body.Close()

	rogue := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		InsecureSkipVerify: true, //nolint:gosec // the rogue client does not care who alpha is
		Certificates:       []tls.Certificate{foreignCert(t, "spiffe://crank.internal/worker/beta")},
	}}}
	if resp, err := rogue.Get(url); err == nil {
		resp.Body.Close()
		t.Error("a peer with a certificate from another CA was served")
	}

	// gamma admits only alpha as a caller, so beta is refused.
	gamma := c.runWorker(t, "gamma", &logs, func(cfg *worker.Config) { cfg.Authorizer = workertls.AuthorizeID(alphaID) })
	gammaURL := "https://" + gamma.Addr().String() + "/"
	if resp, err := beta.Client(nil).Get(gammaURL); err == nil {
		resp.Body.Close()
		t.Error("gamma served beta, which is not on its allowlist")
	}
	if resp, err := alpha.Client(nil).Get(gammaURL); err != nil {
		t.Errorf("gamma refused alpha: %v", err)
	} else {
		resp.Body.Close()
	}

	// beta expects gamma, so it refuses alpha as a server.
	if resp, err := beta.Client(workertls.AuthorizeID(spiffeid.RequireFromString("spiffe://crank.internal/worker/gamma"))).Get(url); err == nil {
		resp.Body.Close()
		t.Error("client accepted a server with the wrong SPIFFE ID")
	}
}
