package stepca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	testToken   = "TOK"
	testKeyAuth = testToken + ".thumbprint"
)

// lockedBuffer collects a client's log lines for assertions.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testClient builds a validation client whose logs land in the returned
// buffer.
func testClient(t *testing.T, p Provisioner, listen string) (*validationClient, *lockedBuffer) {
	t.Helper()
	buf := &lockedBuffer{}
	p.Name, p.Kind = "test", KindACME
	return newValidationClient(p, listen, slog.New(slog.NewTextHandler(buf, nil))), buf
}

func prefixes(t *testing.T, s ...string) []netip.Prefix {
	t.Helper()
	out := make([]netip.Prefix, 0, len(s))
	for _, v := range s {
		out = append(out, netip.MustParsePrefix(v))
	}
	return out
}

// countingServer is an HTTP server on loopback that counts the requests it
// gets and answers them with h (nil: 200 "counted").
func countingServer(t *testing.T, h http.HandlerFunc) (srv *httptest.Server, port int, hits *atomic.Int64) {
	t.Helper()
	hits = &atomic.Int64{}
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if h == nil {
			_, _ = io.WriteString(w, "counted")
			return
		}
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, srv.Listener.Addr().(*net.TCPAddr).Port, hits
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

func challengeURL(host string) string {
	return "http://" + host + "/.well-known/acme-challenge/" + testToken
}

func TestClientEgressDenyList(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr   string
		denied bool
	}{
		// loopback
		{"127.0.0.1", true}, {"127.255.255.254", true}, {"::1", true}, {"::ffff:127.0.0.1", true},
		// link-local, cloud metadata
		{"169.254.169.254", true}, {"169.254.0.1", true}, {"::ffff:169.254.169.254", true},
		{"fe80::1", true}, {"fe80::1%eth0", true}, {"febf:ffff::1", true},
		// private
		{"10.0.0.1", true}, {"10.255.255.255", true}, {"::ffff:10.0.0.1", true},
		{"172.16.0.1", true}, {"172.31.255.255", true}, {"::ffff:172.20.0.1", true},
		{"192.168.0.1", true}, {"192.168.255.255", true}, {"::ffff:192.168.1.1", true},
		// carrier-grade NAT
		{"100.64.0.1", true}, {"100.127.255.255", true}, {"::ffff:100.64.0.1", true},
		// unique-local
		{"fc00::1", true}, {"fd12:3456:789a::1", true},
		// unspecified
		{"0.0.0.0", true}, {"0.1.2.3", true}, {"::", true}, {"::ffff:0.0.0.0", true},
		// multicast, broadcast
		{"224.0.0.1", true}, {"239.255.255.250", true}, {"ff02::1", true}, {"ff05::1:3", true}, {"::ffff:224.0.0.1", true},
		{"255.255.255.255", true}, {"::ffff:255.255.255.255", true},
		// NAT64 of denied addresses
		{"64:ff9b::7f00:1", true}, {"64:ff9b::a9fe:a9fe", true}, {"64:ff9b::a00:1", true},
		// public addresses, also next to the denied ranges
		{"8.8.8.8", false}, {"1.1.1.1", false}, {"11.0.0.1", false}, {"172.32.0.1", false}, {"172.15.255.255", false},
		{"100.128.0.1", false}, {"100.63.255.255", false}, {"192.169.0.1", false}, {"169.255.0.1", false},
		{"::ffff:8.8.8.8", false}, {"2606:4700:4700::1111", false}, {"2001:4860:4860::8888", false},
		{"64:ff9b::808:808", false},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			t.Parallel()
			e := &egressPolicy{}
			ap := netip.AddrPortFrom(netip.MustParseAddr(tc.addr), 80)
			err := e.check(ap)
			if got := err != nil; got != tc.denied {
				t.Fatalf("check(%s) = %v, want denied=%v", ap, err, tc.denied)
			}
			if err != nil && !errors.Is(err, errEgressDenied) {
				t.Fatalf("check(%s) = %v, not errEgressDenied", ap, err)
			}
		})
	}
}

func TestClientEgressAllowedRanges(t *testing.T) {
	t.Parallel()
	allowed := prefixes(t, "127.0.0.0/8", "10.0.0.0/8", "fd00::/8", "169.254.10.0/24")
	for _, tc := range []struct {
		addr   string
		denied bool
	}{
		{"127.0.0.1", false}, {"::ffff:127.0.0.1", false}, {"10.9.9.9", false}, {"::ffff:10.1.1.1", false},
		{"fd00::1", false}, {"fd00::1%eth0", false}, {"169.254.10.1", false},
		{"::1", true}, {"192.168.1.1", true}, {"169.254.169.254", true}, {"fc00::1", true}, {"100.64.0.1", true},
		{"8.8.8.8", false},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			t.Parallel()
			c, _ := testClient(t, Provisioner{EgressAllowed: allowed}, "")
			ap := netip.AddrPortFrom(netip.MustParseAddr(tc.addr), 80)
			if err := c.egress.check(ap); (err != nil) != tc.denied {
				t.Fatalf("check(%s) = %v, want denied=%v", ap, err, tc.denied)
			}
		})
	}
}

func TestClientOwnAddressAlwaysRefused(t *testing.T) {
	t.Parallel()
	everything := []string{"0.0.0.0/0", "::/0"}
	var localAddr string // a non-loopback address of this host, if any
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() {
				localAddr = net.JoinHostPort(n.IP.String(), "9090")
				break
			}
		}
	}
	type tc struct {
		name, listen string
		allowed      []string
		addr         string
		denied       bool
	}
	cases := []tc{
		{"exact address", "127.0.0.1:9090", everything, "127.0.0.1:9090", true},
		{"mapped form", "127.0.0.1:9090", everything, "[::ffff:127.0.0.1]:9090", true},
		{"unspecified reaches it", "127.0.0.1:9090", everything, "0.0.0.0:9090", true},
		{"other port", "127.0.0.1:9090", everything, "127.0.0.1:9091", false},
		{"other loopback address", "127.0.0.1:9090", everything, "127.0.0.2:9090", false},
		{"IPv6 listener", "[::1]:9090", everything, "[::1]:9090", true},
		{"IPv6 listener, other family", "[::1]:9090", everything, "127.0.0.1:9090", false},
		{"specific public listener", "203.0.113.7:443", everything, "203.0.113.7:443", true},
		{"0.0.0.0: loopback", "0.0.0.0:9090", everything, "127.0.0.5:9090", true},
		{"0.0.0.0: IPv6 loopback", "0.0.0.0:9090", everything, "[::1]:9090", true},
		{"0.0.0.0: foreign address", "0.0.0.0:9090", everything, "8.8.8.8:9090", false},
		{"0.0.0.0: other port", "0.0.0.0:9090", everything, "127.0.0.1:80", false},
		{"[::]: loopback", "[::]:9090", everything, "127.0.0.1:9090", true},
		{"empty host", ":9090", everything, "127.0.0.1:9090", true},
		{"host name listener", "localhost:9090", everything, "127.0.0.1:9090", true},
		{"no listen address", "", everything, "127.0.0.1:9090", false},
		{"refused without allowed ranges too", "127.0.0.1:9090", nil, "127.0.0.1:9090", true},
	}
	if localAddr != "" {
		cases = append(cases, tc{"0.0.0.0: interface address", "0.0.0.0:9090", everything, localAddr, true})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, _ := testClient(t, Provisioner{EgressAllowed: prefixes(t, tc.allowed...)}, tc.listen)
			err := c.egress.check(netip.MustParseAddrPort(tc.addr))
			if (err != nil) != tc.denied {
				t.Fatalf("listen %q: check(%s) = %v, want denied=%v", tc.listen, tc.addr, err, tc.denied)
			}
		})
	}
}

func TestClientRedirectRules(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		http01    int
		tlsALPN01 int
		url       string
		via       int
		ok        bool
	}{
		{"http default port", 0, 0, "http://example.com/x", 1, true},
		{"https default port", 0, 0, "https://example.com/x", 1, true},
		{"explicit 80", 0, 0, "http://example.com:80/x", 1, true},
		{"https on 80", 0, 0, "https://example.com:80/x", 1, true},
		{"other port", 0, 0, "http://example.com:8080/x", 1, false},
		{"ssh port", 0, 0, "http://example.com:22/", 1, false},
		{"moved http-01 port", 5002, 0, "http://example.com:5002/x", 1, true},
		{"moved port replaces 80", 5002, 0, "http://example.com/x", 1, false},
		{"moved tls-alpn-01 port", 5002, 5001, "https://example.com:5001/x", 1, true},
		{"moved port replaces 443", 5002, 5001, "https://example.com/x", 1, false},
		{"file scheme", 0, 0, "file:///etc/passwd", 1, false},
		{"ftp scheme", 0, 0, "ftp://example.com/x", 1, false},
		{"gopher scheme", 0, 0, "gopher://example.com:80/x", 1, false},
		{"userinfo", 0, 0, "http://user:secret@example.com/x", 1, false},
		{"username only", 0, 0, "http://user@example.com/x", 1, false},
		{"no host", 0, 0, "http:///x", 1, false},
		{"third redirect", 0, 0, "http://example.com/x", 3, true},
		{"fourth redirect", 0, 0, "http://example.com/x", 4, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, _ := testClient(t, Provisioner{HTTP01Port: tc.http01, TLSALPN01Port: tc.tlsALPN01}, "")
			u, err := url.Parse(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			err = c.checkRedirect(&http.Request{URL: u}, make([]*http.Request, tc.via))
			if (err == nil) != tc.ok {
				t.Fatalf("checkRedirect(%s, %d) = %v, want ok=%v", tc.url, tc.via, err, tc.ok)
			}
		})
	}
}

// TestClientRedirectsFollowed drives Get through real redirects on loopback
// (allowed for this provisioner) and checks that refused ones never reach
// their target.
func TestClientRedirectsFollowed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// location returns where the responder redirects; target is the
		// counting server's port, self the responder's.
		location func(self, target int) string
		// redirects the responder answers before the key authorization.
		chain int
		ok    bool
		// targetHits is how often the counting server may be reached.
		targetHits int64
		// logged is the reason a refusal is logged with.
		logged string
	}{
		{name: "no redirect", ok: true},
		{name: "three redirects", chain: 3, ok: true},
		{name: "four redirects", chain: 4, logged: "more than 3 redirects"},
		{name: "to the validation port by name", ok: true, location: func(self, _ int) string {
			return "http://localhost:" + strconv.Itoa(self) + "/final"
		}},
		{name: "to another port", logged: "redirect to port", location: func(_, target int) string {
			return "http://127.0.0.1:" + strconv.Itoa(target) + "/latest/meta-data/"
		}},
		{name: "to metadata on the validation port", logged: "egress policy: 169.254.169.254", location: func(self, _ int) string {
			return "http://169.254.169.254:" + strconv.Itoa(self) + "/latest/meta-data/"
		}},
		{name: "to a private address", logged: "egress policy: 10.0.0.1", location: func(self, _ int) string {
			return "http://10.0.0.1:" + strconv.Itoa(self) + "/"
		}},
		{name: "to a file", logged: "scheme \\\"file\\\"", location: func(int, int) string { return "file:///etc/passwd" }},
		{name: "with userinfo", logged: "userinfo", location: func(self, _ int) string {
			return "http://user:pw@127.0.0.1:" + strconv.Itoa(self) + "/final"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, targetPort, targetHits := countingServer(t, nil)
			var self int
			var finals atomic.Int64
			_, self, _ = countingServer(t, func(w http.ResponseWriter, r *http.Request) {
				switch {
				case r.URL.Path == "/final":
					finals.Add(1)
					_, _ = io.WriteString(w, testKeyAuth)
				case strings.HasPrefix(r.URL.Path, "/hop/"):
					n, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/hop/"))
					if n >= tc.chain {
						_, _ = io.WriteString(w, testKeyAuth)
						return
					}
					http.Redirect(w, r, "/hop/"+strconv.Itoa(n+1), http.StatusFound)
				case tc.location != nil:
					http.Redirect(w, r, tc.location(self, targetPort), http.StatusFound)
				case tc.chain > 0:
					http.Redirect(w, r, "/hop/1", http.StatusFound)
				default:
					_, _ = io.WriteString(w, testKeyAuth)
				}
			})
			c, logs := testClient(t, Provisioner{HTTP01Port: self, EgressAllowed: prefixes(t, "127.0.0.0/8")}, "")
			resp, err := c.Get(challengeURL("127.0.0.1"))
			if tc.ok {
				if err != nil {
					t.Fatalf("Get: %v\n%s", err, logs)
				}
				b, err := io.ReadAll(resp.Body)
				if err != nil || string(b) != testKeyAuth {
					t.Fatalf("body %q, %v", b, err)
				}
				_ = resp.Body.Close()
			} else {
				if err != errValidationFailed { //nolint:errorlint // the very value, not a wrapper
					t.Fatalf("Get = %v, want errValidationFailed", err)
				}
				if !strings.Contains(logs.String(), tc.logged) {
					t.Errorf("log does not say %q:\n%s", tc.logged, logs)
				}
			}
			if n := targetHits.Load(); n != tc.targetHits {
				t.Errorf("the redirect target got %d requests, want %d", n, tc.targetHits)
			}
			if strings.Contains(tc.name, "userinfo") && finals.Load() != 0 {
				t.Errorf("a redirect with userinfo was followed")
			}
		})
	}
}

// TestClientUniformErrors checks that whatever the target does, Get fails
// with the one error, and that the real reason is logged.
func TestClientUniformErrors(t *testing.T) {
	t.Parallel()
	loopback := prefixes(t, "127.0.0.0/8")
	handler := func(h http.HandlerFunc) func(t *testing.T) (Provisioner, string, *atomic.Int64) {
		return func(t *testing.T) (Provisioner, string, *atomic.Int64) {
			_, port, hits := countingServer(t, h)
			return Provisioner{HTTP01Port: port, EgressAllowed: loopback}, "", hits
		}
	}
	for _, tc := range []struct {
		name string
		// setup returns the provisioner, the CA's listen address and the
		// responder's request counter (nil: none).
		setup   func(t *testing.T) (Provisioner, string, *atomic.Int64)
		timeout time.Duration
		logged  string
	}{
		{name: "closed port", logged: "refused", setup: func(t *testing.T) (Provisioner, string, *atomic.Int64) {
			return Provisioner{HTTP01Port: closedPort(t), EgressAllowed: loopback}, "", nil
		}},
		{name: "denied address", logged: "egress policy", setup: func(t *testing.T) (Provisioner, string, *atomic.Int64) {
			_, port, hits := countingServer(t, nil)
			return Provisioner{HTTP01Port: port}, "", hits
		}},
		{name: "the CA's own address", logged: "own listen address", setup: func(t *testing.T) (Provisioner, string, *atomic.Int64) {
			_, port, hits := countingServer(t, nil)
			return Provisioner{HTTP01Port: port, EgressAllowed: loopback}, "127.0.0.1:" + strconv.Itoa(port), hits
		}},
		{name: "404", logged: "status 404", setup: handler(http.NotFound)},
		{name: "500", logged: "status 500", setup: handler(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
		})},
		{name: "204", logged: "status 204", setup: handler(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusNoContent)
		})},
		{name: "302 without Location", logged: "status 302", setup: handler(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusFound)
		})},
		{name: "redirect loop", logged: "redirects", setup: handler(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, r.URL.Path, http.StatusFound)
		})},
		{name: "200 with another body", logged: "not a key authorization", setup: handler(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, "ami-id\ninstance-id\n")
		})},
		{name: "200 with a huge body", logged: "larger than", setup: handler(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, testToken+"."+strings.Repeat("a", 2*validationMaxBody))
		})},
		{name: "timeout", logged: "Timeout", timeout: 200 * time.Millisecond, setup: handler(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		})},
		{name: "not HTTP", logged: "malformed", setup: func(t *testing.T) (Provisioner, string, *atomic.Int64) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = ln.Close() })
			go func() {
				for range 5 {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
					_, _ = conn.Read(make([]byte, 1024))
					_, _ = io.WriteString(conn, "SSH-2.0-OpenSSH_9.6\r\n")
					_ = conn.Close()
				}
			}()
			return Provisioner{HTTP01Port: ln.Addr().(*net.TCPAddr).Port, EgressAllowed: loopback}, "", nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, listen, hits := tc.setup(t)
			c, logs := testClient(t, p, listen)
			if tc.timeout != 0 {
				c.http.Timeout = tc.timeout
			}
			resp, err := c.Get(challengeURL("127.0.0.1"))
			if err != errValidationFailed || resp != nil { //nolint:errorlint // the very value, not a wrapper
				t.Fatalf("Get = %v, %v; want nil, errValidationFailed", resp, err)
			}
			if err.Error() != "validation request failed" {
				t.Fatalf("error text %q", err)
			}
			if !strings.Contains(logs.String(), tc.logged) {
				t.Errorf("log does not say %q:\n%s", tc.logged, logs)
			}
			if refused := strings.Contains(tc.logged, "egress") || strings.Contains(tc.logged, "own"); refused && hits != nil {
				if n := hits.Load(); n != 0 {
					t.Errorf("a refused address got %d requests", n)
				}
			}
		})
	}
}

// tlsServer answers TLS handshakes on loopback with a self-signed
// certificate, offering protos as ALPN (nil: no ALPN).
func tlsServer(t *testing.T, protos []string) int {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, NextProtos: protos}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				_ = conn.(*tls.Conn).Handshake()
				_, _ = io.Copy(io.Discard, conn)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestClientTLSDialUniformErrors(t *testing.T) {
	t.Parallel()
	loopback := prefixes(t, "127.0.0.0/8")
	for _, tc := range []struct {
		name   string
		setup  func(t *testing.T) Provisioner
		ok     bool
		logged string
	}{
		{name: "acme-tls/1 responder", ok: true, setup: func(t *testing.T) Provisioner {
			return Provisioner{TLSALPN01Port: tlsServer(t, []string{"acme-tls/1"}), EgressAllowed: loopback}
		}},
		{name: "closed port", logged: "refused", setup: func(t *testing.T) Provisioner {
			return Provisioner{TLSALPN01Port: closedPort(t), EgressAllowed: loopback}
		}},
		{name: "denied address", logged: "egress policy", setup: func(t *testing.T) Provisioner {
			return Provisioner{TLSALPN01Port: tlsServer(t, []string{"acme-tls/1"})}
		}},
		{name: "other ALPN protocol", logged: "no application protocol", setup: func(t *testing.T) Provisioner {
			return Provisioner{TLSALPN01Port: tlsServer(t, []string{"h2", "http/1.1"}), EgressAllowed: loopback}
		}},
		{name: "no ALPN", logged: "not acme-tls/1", setup: func(t *testing.T) Provisioner {
			return Provisioner{TLSALPN01Port: tlsServer(t, nil), EgressAllowed: loopback}
		}},
		{name: "not TLS", setup: func(t *testing.T) Provisioner {
			_, port, _ := countingServer(t, nil)
			return Provisioner{TLSALPN01Port: port, EgressAllowed: loopback}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, logs := testClient(t, tc.setup(t), "")
			conn, err := c.TLSDial("tcp", "127.0.0.1:443", &tls.Config{
				NextProtos: []string{"acme-tls/1"}, MinVersion: tls.VersionTLS12, ServerName: "localhost",
				InsecureSkipVerify: true, //nolint:gosec // a self-signed test responder
			})
			if tc.ok {
				if err != nil {
					t.Fatalf("TLSDial: %v\n%s", err, logs)
				}
				if p := conn.ConnectionState().NegotiatedProtocol; p != "acme-tls/1" {
					t.Errorf("negotiated %q", p)
				}
				_ = conn.Close()
				return
			}
			if err != errValidationFailed || conn != nil { //nolint:errorlint // the very value, not a wrapper
				t.Fatalf("TLSDial = %v, %v; want nil, errValidationFailed", conn, err)
			}
			if !strings.Contains(logs.String(), tc.logged) {
				t.Errorf("log does not say %q:\n%s", tc.logged, logs)
			}
		})
	}
}
