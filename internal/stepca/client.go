package stepca

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/smallstep/certificates/acme"
)

// Bounds for validation requests, which reach hosts the client chose.
const (
	validationTimeout   = 10 * time.Second
	validationMaxBody   = 16 << 10
	validationMaxHeader = 16 << 10
	// validationRedirects is how many redirects one http-01 fetch follows.
	validationRedirects = 3
)

// errValidationFailed is the only error the validation client hands to
// smallstep. smallstep stores it in the challenge, which the ACME client
// reads: if a refused address, a closed port, an open port answering 404
// and a timeout failed differently, the CA would be a port scanner for
// whoever can order a certificate. The real reason is logged instead.
var errValidationFailed = errors.New("validation request failed")

// errEgressDenied marks connections the egress policy refused (logged at a
// higher level than ordinary validation failures: it is an attack or a
// misconfiguration).
var errEgressDenied = errors.New("address denied by the validation egress policy")

// deniedRanges are addresses validation never connects to unless a
// provisioner allows them: everything that reaches the CA's own host, its
// private networks or cloud metadata rather than a client's public server.
var deniedRanges = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),      // "this network", incl. unspecified 0.0.0.0
	netip.MustParsePrefix("10.0.0.0/8"),     // private
	netip.MustParsePrefix("100.64.0.0/10"),  // carrier-grade NAT
	netip.MustParsePrefix("127.0.0.0/8"),    // loopback
	netip.MustParsePrefix("169.254.0.0/16"), // link-local, cloud metadata 169.254.169.254
	netip.MustParsePrefix("172.16.0.0/12"),  // private
	netip.MustParsePrefix("192.168.0.0/16"), // private
	netip.MustParsePrefix("224.0.0.0/4"),    // multicast
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved, incl. broadcast 255.255.255.255
	netip.MustParsePrefix("::/128"),         // unspecified
	netip.MustParsePrefix("::1/128"),        // loopback
	netip.MustParsePrefix("fc00::/7"),       // unique-local
	netip.MustParsePrefix("fe80::/10"),      // link-local
	netip.MustParsePrefix("fec0::/10"),      // deprecated site-local
	netip.MustParsePrefix("ff00::/8"),       // multicast
}

// nat64Prefix is the well-known NAT64 prefix (RFC 6052): its addresses reach
// the IPv4 address in their last 32 bits, which is checked instead.
var nat64Prefix = netip.MustParsePrefix("64:ff9b::/96")

// egressPolicy decides which addresses challenge validation may connect to.
type egressPolicy struct {
	// allowed ranges override deniedRanges (never the CA's own address).
	allowed []netip.Prefix
	own     ownAddress
}

// ownAddress is the CA's listen address. Validation must never reach the
// CA itself: a redirect to its own API would make it act on the attacker's
// behalf from a trusted source address.
type ownAddress struct {
	port uint16 // zero: unknown, nothing to protect
	ip   netip.Addr
	// anyLocal: the CA listens on every local address (0.0.0.0, ::, a
	// host name), so every local address with this port is the CA.
	anyLocal bool
}

func parseOwnAddress(listen string) ownAddress {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return ownAddress{}
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return ownAddress{}
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.IsUnspecified() {
		// A host name may resolve to any local address; fail closed.
		return ownAddress{port: uint16(p), anyLocal: true}
	}
	return ownAddress{port: uint16(p), ip: ip.WithZone("").Unmap()}
}

// is reports whether ip:port reaches the CA's own listener. ip is unmapped
// and zone-less.
func (o ownAddress) is(ip netip.Addr, port uint16) bool {
	if o.port == 0 || port != o.port {
		return false
	}
	// Connecting to 0.0.0.0 or :: reaches the local host.
	if ip.IsUnspecified() || ip == o.ip {
		return true
	}
	if !o.anyLocal {
		return false
	}
	return ip.IsLoopback() || isLocalInterfaceAddr(ip)
}

// isLocalInterfaceAddr reports whether ip is assigned to an interface of
// this host. Interfaces change (DHCP, containers), so it is asked at dial
// time; when they cannot be listed, every address counts as local.
func isLocalInterfaceAddr(ip netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true
	}
	for _, a := range addrs {
		var candidate net.IP
		switch v := a.(type) {
		case *net.IPNet:
			candidate = v.IP
		case *net.IPAddr:
			candidate = v.IP
		}
		if c, ok := netip.AddrFromSlice(candidate); ok && c.Unmap() == ip {
			return true
		}
	}
	return false
}

// check refuses ap unless it may be dialed. IPv4-mapped addresses are
// unmapped and zones dropped first: netip.Prefix.Contains never matches
// either form, which would let "::ffff:127.0.0.1" or "fe80::1%eth0" pass.
func (e *egressPolicy) check(ap netip.AddrPort) error {
	ip := ap.Addr().WithZone("").Unmap()
	if e.own.is(ip, ap.Port()) {
		return fmt.Errorf("%w: %s is the CA's own listen address", errEgressDenied, ap)
	}
	if !isDenied(ip) {
		return nil
	}
	for _, p := range e.allowed {
		if p.Contains(ip) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s", errEgressDenied, ap)
}

// isDenied reports whether ip (unmapped, zone-less) is in the deny list.
func isDenied(ip netip.Addr) bool {
	if !ip.IsValid() {
		return true
	}
	for _, p := range deniedRanges {
		if p.Contains(ip) {
			return true
		}
	}
	if nat64Prefix.Contains(ip) {
		b := ip.As16()
		return isDenied(netip.AddrFrom4([4]byte(b[12:])))
	}
	return false
}

// control runs for every connection attempt, after name resolution, with the
// address actually connected to: the first request, every redirect and each
// candidate address of a name. Checking here (not the URL's host) is what
// defeats DNS rebinding and names that resolve to internal addresses.
func (e *egressPolicy) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %q is not an IP address and port", errEgressDenied, address)
	}
	return e.check(ap)
}

// validationClient is the acme.Client smallstep dials challenges with. It
// replaces smallstep's process-wide InsecurePort globals with per-provisioner
// ports, bounds time, redirects and response size, refuses internal
// addresses (SSRF) and fails uniformly.
type validationClient struct {
	http01Port    int
	tlsALPN01Port int
	egress        *egressPolicy
	http          *http.Client
	dialer        *net.Dialer
	log           *slog.Logger
}

// validationClients builds one client per ACME provisioner. listen is the
// CA's own listen address, which validation never connects to.
func validationClients(provs []Provisioner, listen string, log *slog.Logger) map[string]acme.Client {
	m := make(map[string]acme.Client, len(provs))
	for _, p := range provs {
		if p.Kind != KindACME {
			continue
		}
		m[p.Name] = newValidationClient(p, listen, log)
	}
	return m
}

func newValidationClient(p Provisioner, listen string, log *slog.Logger) *validationClient {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &validationClient{
		http01Port:    p.HTTP01Port,
		tlsALPN01Port: p.TLSALPN01Port,
		egress:        &egressPolicy{allowed: slices.Clone(p.EgressAllowed), own: parseOwnAddress(listen)},
		log:           log.With("provisioner", p.Name),
	}
	c.dialer = &net.Dialer{Timeout: validationTimeout, Control: c.egress.control}
	c.http = &http.Client{
		Timeout: validationTimeout,
		Transport: &http.Transport{
			Proxy:                  nil,
			DialContext:            c.dialer.DialContext,
			TLSClientConfig:        &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // http-01 may redirect to https with any certificate (RFC 8555 8.3)
			TLSHandshakeTimeout:    validationTimeout,
			ResponseHeaderTimeout:  validationTimeout,
			MaxResponseHeaderBytes: validationMaxHeader,
			DisableKeepAlives:      true,
		},
		CheckRedirect: c.checkRedirect,
	}
	return c
}

// redirectPorts are the ports a redirect may name: the validation ports
// (80 and 443 unless moved for tests). Anything else would let a client
// point the CA at arbitrary services.
func (c *validationClient) redirectPorts() []string {
	h, t := 80, 443
	if c.http01Port != 0 {
		h = c.http01Port
	}
	if c.tlsALPN01Port != 0 {
		t = c.tlsALPN01Port
	}
	return []string{strconv.Itoa(h), strconv.Itoa(t)}
}

// checkRedirect allows at most validationRedirects redirects, to http or
// https on a validation port, without userinfo. The address is checked when
// it is dialed.
func (c *validationClient) checkRedirect(req *http.Request, via []*http.Request) error {
	u := req.URL
	if len(via) > validationRedirects {
		return fmt.Errorf("more than %d redirects", validationRedirects)
	}
	port := u.Port()
	switch u.Scheme {
	case "http":
		if port == "" {
			port = "80"
		}
	case "https":
		if port == "" {
			port = "443"
		}
	default:
		return fmt.Errorf("redirect to scheme %q refused", u.Scheme)
	}
	if u.User != nil {
		return errors.New("redirect with userinfo refused")
	}
	if u.Hostname() == "" {
		return errors.New("redirect without a host refused")
	}
	if !slices.Contains(c.redirectPorts(), port) {
		return fmt.Errorf("redirect to port %s refused", port)
	}
	return nil
}

// Get fetches an http-01 key authorization. smallstep builds the URL without
// a port; a configured port replaces the default 80. Every failure returns
// errValidationFailed; see there.
func (c *validationClient) Get(rawURL string) (*http.Response, error) {
	resp, err := c.get(rawURL)
	if err != nil {
		c.logFailure("http-01", rawURL, err)
		return nil, errValidationFailed
	}
	return resp, nil
}

// get does the fetch and turns every answer that is not a key authorization
// into an error. smallstep answers a status >= 400 with a message naming the
// status and a 2xx/3xx with a wrong body with rejectedIdentifier (and marks
// the challenge invalid), either of which would tell an open port from a
// closed one; only an answer that starts with the challenge's token, which
// only the client's own responder knows, reaches smallstep's comparison.
func (c *validationClient) get(rawURL string) (*http.Response, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parse %q: %w", rawURL, err)
	}
	if c.http01Port != 0 && u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(c.http01Port))
	}
	resp, err := c.http.Get(u.String()) //nolint:noctx // acme.Client has no context; the client has a timeout
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	final := resp.Request.URL
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d", final, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, validationMaxBody+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: read body: %w", final, err)
	}
	if len(body) > validationMaxBody {
		return nil, fmt.Errorf("GET %s: body larger than %d bytes", final, validationMaxBody)
	}
	if token := path.Base(u.Path); !strings.HasPrefix(strings.TrimSpace(string(body)), token+".") {
		return nil, fmt.Errorf("GET %s: body is not a key authorization for token %s", final, token)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, nil
}

func (c *validationClient) LookupTxt(name string) ([]string, error) {
	return net.LookupTXT(name)
}

// TLSDial dials a tls-alpn-01 validation; smallstep always passes port 443.
// Every failure returns errValidationFailed, including a handshake that did
// not negotiate acme-tls/1 (smallstep would answer that one with its own
// problem, telling a TLS server from a closed port).
func (c *validationClient) TLSDial(network, addr string, cfg *tls.Config) (*tls.Conn, error) {
	conn, err := c.tlsDial(network, addr, cfg)
	if err != nil {
		c.logFailure("tls-alpn-01", addr, err)
		return nil, errValidationFailed
	}
	return conn, nil
}

func (c *validationClient) tlsDial(network, addr string, cfg *tls.Config) (*tls.Conn, error) {
	if c.tlsALPN01Port != 0 {
		if host, port, err := net.SplitHostPort(addr); err == nil && port == "443" {
			addr = net.JoinHostPort(host, strconv.Itoa(c.tlsALPN01Port))
		}
	}
	conn, err := tls.DialWithDialer(c.dialer, network, addr, cfg)
	if err != nil {
		return nil, fmt.Errorf("TLS dial %s: %w", addr, err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; slices.Contains(cfg.NextProtos, "acme-tls/1") && p != "acme-tls/1" {
		_ = conn.Close()
		return nil, fmt.Errorf("TLS dial %s: negotiated ALPN protocol %q, not acme-tls/1", addr, p)
	}
	return conn, nil
}

// logFailure records why a validation failed, which the ACME client is not
// told.
func (c *validationClient) logFailure(challenge, target string, err error) {
	level, msg := slog.LevelInfo, "challenge validation failed"
	if errors.Is(err, errEgressDenied) {
		level, msg = slog.LevelWarn, "challenge validation refused by egress policy"
	}
	c.log.Log(context.Background(), level, msg, "challenge", challenge, "target", target, "cause", err.Error())
}
