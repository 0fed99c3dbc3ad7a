package stepca

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/smallstep/certificates/acme"
)

// Bounds for validation requests, which reach hosts the client chose.
const (
	validationTimeout   = 10 * time.Second
	validationMaxBody   = 16 << 10
	validationRedirects = 3
)

// validationClient is the acme.Client smallstep dials challenges with. It
// replaces smallstep's process-wide InsecurePort globals with per-provisioner
// ports, and bounds time, redirects and response size.
type validationClient struct {
	http01Port    int
	tlsALPN01Port int
	http          *http.Client
	dialer        *net.Dialer
}

func validationClients(provs []Provisioner) map[string]acme.Client {
	m := make(map[string]acme.Client, len(provs))
	for _, p := range provs {
		if p.Kind != KindACME {
			continue
		}
		m[p.Name] = newValidationClient(p.HTTP01Port, p.TLSALPN01Port)
	}
	return m
}

func newValidationClient(http01Port, tlsALPN01Port int) *validationClient {
	c := &validationClient{
		http01Port:    http01Port,
		tlsALPN01Port: tlsALPN01Port,
		dialer:        &net.Dialer{Timeout: validationTimeout},
	}
	c.http = &http.Client{
		Timeout: validationTimeout,
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           c.dialer.DialContext,
			TLSClientConfig:       &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // http-01 may redirect to https with any certificate (RFC 8555 8.3)
			ResponseHeaderTimeout: validationTimeout,
			DisableKeepAlives:     true,
		},
		CheckRedirect: func(_ *http.Request, via []*http.Request) error {
			if len(via) >= validationRedirects {
				return errors.New("too many redirects")
			}
			return nil
		},
	}
	return c
}

// Get fetches an http-01 key authorization. smallstep builds the URL without
// a port; a configured port replaces the default 80.
func (c *validationClient) Get(rawURL string) (*http.Response, error) {
	if c.http01Port != 0 {
		if u, err := url.Parse(rawURL); err == nil && u.Port() == "" {
			u.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(c.http01Port))
			rawURL = u.String()
		}
	}
	resp, err := c.http.Get(rawURL) //nolint:noctx // acme.Client has no context
	if err != nil {
		return nil, err
	}
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.LimitReader(resp.Body, validationMaxBody), resp.Body}
	return resp, nil
}

func (c *validationClient) LookupTxt(name string) ([]string, error) {
	return net.LookupTXT(name)
}

// TLSDial dials a tls-alpn-01 validation; smallstep always passes port 443.
func (c *validationClient) TLSDial(network, addr string, cfg *tls.Config) (*tls.Conn, error) {
	if c.tlsALPN01Port != 0 {
		if host, port, err := net.SplitHostPort(addr); err == nil && port == "443" {
			addr = net.JoinHostPort(host, strconv.Itoa(c.tlsALPN01Port))
		}
	}
	return tls.DialWithDialer(c.dialer, network, addr, cfg)
}
