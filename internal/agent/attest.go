package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/crank-platform/crank-ca/internal/paths"
)

// maxJWTSize bounds the JWT file; real tokens are a few KiB.
const maxJWTSize = 32 << 10

// attestation is the CA's answer to a successful POST /attest/<provisioner>:
// one-time EAB credentials (valid for minutes, single use) and the identity
// they bind.
type attestation struct {
	KID       string    `json:"kid"`
	HMACKey   string    `json:"hmacKey"` // unpadded base64url, as lego wants it
	ExpiresAt time.Time `json:"expiresAt"`
	Directory string    `json:"directory"`
	Worker    string    `json:"worker"`
	SPIFFEID  string    `json:"spiffeID"`
	DNSNames  []string  `json:"dnsNames"`
	IPs       []string  `json:"ips"`
}

// AttestationError is the CA's refusal of an attestation, from its problem
// document. errors.Is(err, ErrAttestationRefused) holds for it.
type AttestationError struct {
	// Status is the HTTP status (401 for a refused token, 400, 404, 413,
	// 415 for a request the CA cannot take).
	Status int
	// Type is the problem type, e.g. urn:ietf:params:acme:error:unauthorized.
	Type string
	// Check names the check the token failed: format, algorithm, key,
	// signature, issuer, audience, expiry, not-before, issued-at, max-age,
	// subject, allow-list, token-review, jti or disabled ("" if none).
	Check string
	// Detail is the CA's explanation.
	Detail string
}

func (e *AttestationError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (HTTP %d", ErrAttestationRefused, e.Status)
	if e.Check != "" {
		fmt.Fprintf(&b, ", check %s", e.Check)
	}
	fmt.Fprintf(&b, "): %s", e.Detail)
	return b.String()
}

// Is makes errors.Is(err, ErrAttestationRefused) hold.
func (e *AttestationError) Is(target error) bool { return target == ErrAttestationRefused }

// retryAfterError is an error after which the CA asked to wait (429, 503
// with Retry-After); Run waits at least that long.
type retryAfterError struct {
	err   error
	after time.Duration
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// readJWTFile reads the JWT afresh: the platform replaces the file when it
// rotates the token.
func readJWTFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrJWTFile, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxJWTSize+1))
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrJWTFile, path, err)
	}
	if len(b) > maxJWTSize {
		return "", fmt.Errorf("%w: %s is larger than %d bytes; it does not hold a JWT", ErrJWTFile, path, maxJWTSize)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%w: %s is empty", ErrJWTFile, path)
	}
	return tok, nil
}

// caHTTPClient is an HTTP client that trusts the pinned root and nothing
// else. a.root is set.
func (a *Agent) caHTTPClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(a.root)
	return &http.Client{
		Timeout: a.cfg.HTTPTimeout,
		Transport: &http.Transport{
			Proxy:           http.ProxyFromEnvironment,
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			IdleConnTimeout: 90 * time.Second,
		},
	}
}

// attest exchanges the JWT in the JWT file for one-time EAB credentials at
// POST <CAURL>/attest/<Provisioner>, over TLS that trusts only the pinned
// root. The JWT is never logged. a.root is set.
func (a *Agent) attest(ctx context.Context) (*attestation, error) {
	jwt, err := readJWTFile(a.cfg.JWTFile)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(struct {
		JWT string `json:"jwt"`
	}{jwt})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.HTTPTimeout)
	defer cancel()
	u := a.cfg.CAURL + "/attest/" + url.PathEscape(a.cfg.Provisioner)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, application/problem+json")
	req.Header.Set("User-Agent", "crank-agent")
	client := a.caHTTPClient()
	// A redirect would carry the JWT elsewhere: never follow one.
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCAUnreachable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%w: reading the attestation answer: %v", ErrCAUnreachable, err)
	}
	att, err := parseAttestResponse(resp.StatusCode, resp.Header, b, a.now())
	if err != nil {
		return nil, err
	}
	if a.cfg.Worker != "" && paths.ValidWorker(att.Worker) && att.Worker != a.cfg.Worker {
		// The credentials are not used: they expire unused.
		return nil, fmt.Errorf("the JWT file attests worker %q, not --worker %q", att.Worker, a.cfg.Worker)
	}
	if want := a.cfg.CAURL + "/acme/" + a.cfg.Provisioner + "/directory"; att.Directory != "" && att.Directory != want {
		a.log.Debug("the CA names another directory URL; using the one from --ca-url", "directory", att.Directory, "using", want)
	}
	a.log.Info("attestation accepted", "attested", att.Worker, "spiffeID", att.SPIFFEID,
		"dnsNames", att.DNSNames, "ips", att.IPs, "credentialsExpire", att.ExpiresAt)
	return att, nil
}

// parseAttestResponse turns the CA's answer into credentials or an error:
// *AttestationError for a refusal, ErrCAUnreachable (with the CA's
// Retry-After) when the CA cannot answer now.
func parseAttestResponse(status int, h http.Header, body []byte, now time.Time) (*attestation, error) {
	mt, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	if status == http.StatusCreated {
		if mt != "application/json" {
			return nil, fmt.Errorf("%w: POST /attest answered 201 with Content-Type %q, not application/json", ErrCAUnreachable, h.Get("Content-Type"))
		}
		var att attestation
		if err := json.Unmarshal(body, &att); err != nil {
			return nil, fmt.Errorf("%w: the attestation credentials do not parse: %v", ErrCAUnreachable, err)
		}
		if att.KID == "" || att.HMACKey == "" || len(att.DNSNames)+len(att.IPs) == 0 {
			return nil, fmt.Errorf("%w: the attestation credentials lack kid, hmacKey or names to order", ErrCAUnreachable)
		}
		if _, err := base64.RawURLEncoding.DecodeString(att.HMACKey); err != nil {
			return nil, fmt.Errorf("%w: the attestation credentials' hmacKey is not unpadded base64url", ErrCAUnreachable)
		}
		return &att, nil
	}
	var p struct {
		Type   string `json:"type"`
		Detail string `json:"detail"`
		Check  string `json:"check"`
	}
	if mt == "application/problem+json" || mt == "application/json" {
		_ = json.Unmarshal(body, &p)
	}
	if p.Detail == "" {
		p.Detail = http.StatusText(status)
		if s := strings.TrimSpace(string(body)); s != "" && mt != "text/html" {
			p.Detail += ": " + truncate(s, 200)
		}
	}
	switch {
	case status == http.StatusTooManyRequests:
		return nil, &retryAfterError{
			err:   fmt.Errorf("the CA is rate limiting attestations (HTTP 429): %s", p.Detail),
			after: retryAfter(h, now),
		}
	case status >= 500:
		return nil, &retryAfterError{
			err:   fmt.Errorf("%w: POST /attest answered %d: %s", ErrCAUnreachable, status, p.Detail),
			after: retryAfter(h, now),
		}
	}
	return nil, &AttestationError{Status: status, Type: p.Type, Check: p.Check, Detail: p.Detail}
}

// retryAfter reads a Retry-After header (seconds or an HTTP date); 0 if
// there is none.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
