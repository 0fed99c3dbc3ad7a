// Package adminclient is the operator's side of crank-ca's admin API
// (internal/admin): an HTTPS client that authenticates with an operator
// certificate (mutual TLS), trusts only the CA's own root, and mirrors
// admin.Operator method for method.
//
// Errors come in three kinds. A problem document from the server becomes a
// *ProblemError carrying the HTTP status and the admin.Problem; its Error is
// the problem's detail, worded for people. A failure to reach the server at
// all (connection refused, unknown host, dial timeout) wraps ErrUnreachable,
// so callers can fall back to doing something locally. Everything else (a
// TLS failure, say, because the operator certificate expired or the server's
// certificate is not from this CA) is returned as is: the server was
// reached, and it or the network refused.
package adminclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/crank-platform/crank-ca/internal/admin"
)

// DefaultTimeout bounds a whole request when Config.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// maxResponseBytes bounds what is read of a response; certificate lists of
// a large fleet are the biggest answers.
const maxResponseBytes = 64 << 20

// ErrUnreachable is wrapped by errors of requests that never reached the
// server: the TCP connection could not be established.
var ErrUnreachable = errors.New("admin API unreachable")

// Config configures New.
type Config struct {
	// URL is the server's base URL, "https://host:port"; the admin routes
	// live under admin.Prefix below it. Required.
	URL string
	// RootCert is the PEM file of the CA root; the server's certificate
	// must chain to it and nothing else is trusted. Required.
	RootCert string
	// CertFile and KeyFile are the operator's client certificate (PEM,
	// leaf first, intermediates after it) and its private key. Required.
	CertFile string
	KeyFile  string
	// Timeout bounds each request, connection included. Zero means
	// DefaultTimeout.
	Timeout time.Duration
}

// Client calls the admin API. It is safe for concurrent use.
type Client struct {
	base *url.URL
	hc   *http.Client
	tr   *http.Transport
}

// Client has exactly the operations of the API.
var _ admin.Operator = (*Client)(nil)

// ProblemError is an error response of the API: a problem document (RFC
// 7807), or one synthesised from a response that carried none.
type ProblemError struct {
	// Status is the HTTP status of the response.
	Status  int
	Problem admin.Problem
}

// Error returns the problem's detail, falling back to its title and then
// the HTTP status text.
func (e *ProblemError) Error() string {
	switch {
	case e.Problem.Detail != "":
		return e.Problem.Detail
	case e.Problem.Title != "":
		return e.Problem.Title
	default:
		return fmt.Sprintf("HTTP %d %s", e.Status, http.StatusText(e.Status))
	}
}

// New loads the credentials of cfg and returns a client. Nothing is sent
// until the first call.
func New(cfg Config) (*Client, error) {
	var errs []error
	base, err := parseBase(cfg.URL)
	if err != nil {
		errs = append(errs, err)
	}
	roots, err := loadRoots(cfg.RootCert)
	if err != nil {
		errs = append(errs, err)
	}
	cert, err := loadClientCert(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		errs = append(errs, err)
	}
	if cfg.Timeout < 0 {
		errs = append(errs, fmt.Errorf("adminclient: timeout %s must not be negative", cfg.Timeout))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	tlsCfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    roots,
		// Always present the operator certificate, whatever CAs the
		// server says it accepts: if it is refused, the server's answer
		// says why, which beats a silent 401.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil },
	}
	dialer := &net.Dialer{Timeout: min(timeout, 10*time.Second), KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: min(timeout, 10*time.Second),
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        4,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Client{
		base: base,
		tr:   tr,
		hc: &http.Client{
			Transport: tr,
			Timeout:   timeout,
			// The API never redirects; following one could send the
			// request somewhere the operator did not intend.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// CloseIdleConnections closes the client's idle connections.
func (c *Client) CloseIdleConnections() { c.tr.CloseIdleConnections() }

func parseBase(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("adminclient: URL is required")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("adminclient: URL %q: %w", raw, err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("adminclient: URL %q must be https://host[:port]", raw)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("adminclient: URL %q must not carry credentials, a query or a fragment", raw)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

func loadRoots(path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, errors.New("adminclient: RootCert is required")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("adminclient: CA root: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("adminclient: CA root %s holds no PEM certificate", path)
	}
	return pool, nil
}

func loadClientCert(certFile, keyFile string) (*tls.Certificate, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("adminclient: CertFile and KeyFile are required")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("adminclient: admin certificate %s / key %s: %w", certFile, keyFile, err)
	}
	// Refuse a certificate the server would refuse in the handshake, with
	// a message that says what to do rather than a TLS alert.
	if leaf := cert.Leaf; leaf != nil {
		now := time.Now()
		if now.After(leaf.NotAfter) {
			return nil, fmt.Errorf("adminclient: admin certificate %s expired at %s; issue a new one with `crank-ca admin cert`",
				certFile, leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		if now.Before(leaf.NotBefore) {
			return nil, fmt.Errorf("adminclient: admin certificate %s is not valid before %s",
				certFile, leaf.NotBefore.UTC().Format(time.RFC3339))
		}
	}
	return &cert, nil
}

// MintToken mints a join token or EAB credentials (POST /tokens).
func (c *Client) MintToken(ctx context.Context, req admin.TokenRequest) (admin.TokenResponse, error) {
	var out admin.TokenResponse
	err := c.do(ctx, http.MethodPost, "/tokens", nil, req, &out)
	return out, err
}

// Workers lists the worker identities (GET /workers).
func (c *Client) Workers(ctx context.Context) ([]admin.Worker, error) {
	var out []admin.Worker
	err := c.do(ctx, http.MethodGet, "/workers", nil, nil, &out)
	return nonNil(out), err
}

// Accounts lists the ACME accounts bound to identities (GET /accounts).
func (c *Client) Accounts(ctx context.Context) ([]admin.Account, error) {
	var out []admin.Account
	err := c.do(ctx, http.MethodGet, "/accounts", nil, nil, &out)
	return nonNil(out), err
}

// Certificates lists issued certificates (GET /certificates).
func (c *Client) Certificates(ctx context.Context, f admin.CertFilter) ([]admin.Certificate, error) {
	q := url.Values{}
	if f.Worker != "" {
		q.Set("worker", f.Worker)
	}
	if f.All {
		q.Set("all", "true")
	}
	var out []admin.Certificate
	err := c.do(ctx, http.MethodGet, "/certificates", q, nil, &out)
	return nonNil(out), err
}

// Revoke revokes one certificate or all live ones of a worker (POST
// /revoke).
func (c *Client) Revoke(ctx context.Context, req admin.RevokeRequest) (admin.RevokeResult, error) {
	var out admin.RevokeResult
	err := c.do(ctx, http.MethodPost, "/revoke", nil, req, &out)
	out.Revoked = nonNil(out.Revoked)
	return out, err
}

// Rotate forces renewal of matching live certificates (POST /rotate).
func (c *Client) Rotate(ctx context.Context, req admin.RotateRequest) (admin.RotateResult, error) {
	var out admin.RotateResult
	err := c.do(ctx, http.MethodPost, "/rotate", nil, req, &out)
	out.Rotated = nonNil(out.Rotated)
	return out, err
}

// SetWorkerDisabled disables or re-enables a worker (POST
// /workers/{provisioner}/{name}/disable or /enable).
func (c *Client) SetWorkerDisabled(ctx context.Context, provisioner, worker string, disabled bool) (admin.Worker, error) {
	if provisioner == "" || worker == "" {
		return admin.Worker{}, errors.New("adminclient: provisioner and worker are required")
	}
	action := "enable"
	if disabled {
		action = "disable"
	}
	var out admin.Worker
	p := "/workers/" + url.PathEscape(provisioner) + "/" + url.PathEscape(worker) + "/" + action
	err := c.do(ctx, http.MethodPost, p, nil, struct{}{}, &out)
	return out, err
}

// do sends one request to admin.Prefix+path and decodes a 2xx JSON answer
// into out. body, if not nil, is sent as JSON.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body, out any) error {
	target := c.base.String() + admin.Prefix + path
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("adminclient: encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return fmt.Errorf("adminclient: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json, application/problem+json")
	req.Header.Set("User-Agent", "crank-ca-adminclient")
	resp, err := c.hc.Do(req)
	if err != nil {
		return classify(method, target, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return fmt.Errorf("%s %s: reading the response: %w", method, target, err)
	}
	if len(data) > maxResponseBytes {
		return fmt.Errorf("%s %s: response exceeds %d bytes", method, target, maxResponseBytes)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return problemFrom(resp, data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: undecodable response (HTTP %d): %w", method, target, resp.StatusCode, err)
	}
	return nil
}

// classify wraps a transport error, marking failures to connect with
// ErrUnreachable. A context error is returned as such: the caller gave up.
func classify(method, target string, err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	if isDial(err) && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("%w: %s: %w", ErrUnreachable, target, err)
	}
	return fmt.Errorf("%s %s: %w", method, target, err)
}

// isDial reports whether err happened establishing the TCP connection
// (including name resolution), before anything was sent.
func isDial(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var dns *net.DNSError
	return errors.As(err, &dns)
}

// problemFrom turns an error response into a *ProblemError, synthesising a
// problem when the body is not one (a proxy, or a server without the admin
// API).
func problemFrom(resp *http.Response, data []byte) error {
	pe := &ProblemError{Status: resp.StatusCode}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt == "application/problem+json" || mt == "application/json" {
		if err := json.Unmarshal(data, &pe.Problem); err == nil && (pe.Problem.Detail != "" || pe.Problem.Title != "") {
			if pe.Problem.Status == 0 {
				pe.Problem.Status = resp.StatusCode
			}
			return pe
		}
	}
	snippet := strings.TrimSpace(string(data))
	if len(snippet) > 200 {
		snippet = snippet[:200] + "..."
	}
	detail := "the server answered " + strconv.Itoa(resp.StatusCode) + " " + http.StatusText(resp.StatusCode) +
		" without a problem document (is it a crank-ca with the admin API?)"
	if snippet != "" {
		detail += ": " + snippet
	}
	pe.Problem = admin.Problem{Title: http.StatusText(resp.StatusCode), Status: resp.StatusCode, Detail: detail}
	return pe
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
