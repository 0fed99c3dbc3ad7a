package integration

import (
	"crypto/x509"
	"testing"
)

// TestRestart stops and restarts serve on the same directory: the bound
// account orders again, the spent token stays spent and earlier certificates
// still verify against the roots served after the restart.
func TestRestart(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("restarts a server")
	}
	c := newCA(t, nil)
	c.start()
	tok := c.token("api")
	cl, u := c.newLego("workers", nil)
	if err := c.register(cl, u, tok); err != nil {
		t.Fatal(err)
	}
	first, err := obtain(t, c, cl.Certificate, "api.workers.crank.internal")
	if err != nil {
		t.Fatal(err)
	}

	c.stop()
	c.start()

	again, err := obtain(t, c, cl.Certificate, "api.workers.crank.internal")
	if err != nil {
		t.Fatalf("bound account after restart: %v\n%s", err, c.logs)
	}
	cl2, u2 := c.newLego("workers", nil)
	wantProblem(t, c.register(cl2, u2, tok), "unauthorized", 401)

	roots := c.fetchRoots()
	for _, res := range [][]byte{first.Certificate, again.Certificate} {
		chain := parseChain(t, res)
		inter := x509.NewCertPool()
		for _, ic := range chain[1:] {
			inter.AddCert(ic)
		}
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("certificate %s does not verify after restart: %v", chain[0].SerialNumber, err)
		}
	}
}
