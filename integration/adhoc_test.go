package integration

import (
	"net"
	"strconv"
	"testing"

	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/challenge/http01"
	"github.com/go-acme/lego/v4/challenge/tlsalpn01"

	"github.com/crank-platform/crank-ca/config"
)

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func adhoc(cfg *config.Config) *config.Provisioner {
	p, ok := cfg.Provisioner("adhoc")
	if !ok {
		panic("no adhoc provisioner")
	}
	return p
}

// TestAdhocChallenges drives the lego library through real http-01 and
// tls-alpn-01 validations that the CA dials on loopback.
func TestAdhocChallenges(t *testing.T) {
	t.Parallel()
	httpPort, alpnPort := freePort(t), freePort(t)
	c := newCA(t, func(cfg *config.Config) {
		adhoc(cfg).ValidationPorts = &config.ValidationPorts{HTTP01: httpPort, TLSALPN01: alpnPort}
	})
	c.start()

	for _, tc := range []struct {
		name  string
		setup func(*testing.T, *legoClientUser)
	}{
		{"http-01", func(t *testing.T, l *legoClientUser) {
			if err := l.cl.Challenge.SetHTTP01Provider(http01.NewProviderServer("127.0.0.1", strconv.Itoa(httpPort))); err != nil {
				t.Fatal(err)
			}
		}},
		{"tls-alpn-01", func(t *testing.T, l *legoClientUser) {
			if err := l.cl.Challenge.SetTLSALPN01Provider(tlsalpn01.NewProviderServer("127.0.0.1", strconv.Itoa(alpnPort))); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl, u := c.newLego("adhoc", nil)
			reg, err := cl.Registration.Register(registrationOptions())
			if err != nil {
				t.Fatal(err)
			}
			u.reg = reg
			tc.setup(t, &legoClientUser{cl: cl, u: u})
			res, err := cl.Certificate.Obtain(certificate.ObtainRequest{Domains: []string{"localhost"}, Bundle: true})
			if err != nil {
				t.Fatalf("obtain: %v\n%s", err, c.logs)
			}
			leaf := parseChain(t, res.Certificate)[0]
			if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "localhost" || len(leaf.URIs) != 0 {
				t.Errorf("SANs = %v %v", leaf.DNSNames, leaf.URIs)
			}
		})
	}

	t.Run("policy refuses foreign names", func(t *testing.T) {
		cl, u := c.newLego("adhoc", nil)
		reg, err := cl.Registration.Register(registrationOptions())
		if err != nil {
			t.Fatal(err)
		}
		u.reg = reg
		_, err = obtain(t, c, cl.Certificate, "example.com")
		wantProblem(t, err, "rejectedIdentifier", 400)
	})
}
