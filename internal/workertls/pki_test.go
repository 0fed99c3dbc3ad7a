package workertls

import (
	"crypto/x509"
	"sync/atomic"
	"testing"

	"github.com/crank-platform/crank-ca/internal/agent"
	"github.com/crank-platform/crank-ca/internal/testpki"
)

// testCA is a throw-away root CA standing in for crank-ca.
type testCA struct{ *testpki.CA }

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	return &testCA{testpki.New(t, name)}
}

// issue returns an identity for spiffeID signed by ca, shaped like a
// crank-ca worker certificate: SPIFFE URI SAN, IP SAN 127.0.0.1, serverAuth
// and clientAuth.
func (ca *testCA) issue(t *testing.T, spiffeID string) *agent.Identity {
	t.Helper()
	leaf, key := ca.Leaf(t, spiffeID)
	id, err := agent.NewIdentity([]*x509.Certificate{leaf}, key, []*x509.Certificate{ca.Cert})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// fakeSource is a Source whose identity a test can swap, like a rotation.
type fakeSource struct {
	cur atomic.Pointer[agent.Identity]
}

func newSource(id *agent.Identity) *fakeSource {
	s := &fakeSource{}
	s.cur.Store(id)
	return s
}

func (s *fakeSource) Current() *agent.Identity { return s.cur.Load() }
func (s *fakeSource) set(id *agent.Identity)   { s.cur.Store(id) }

func leafs(c *x509.Certificate) []*x509.Certificate { return []*x509.Certificate{c} }
