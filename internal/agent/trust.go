package agent

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// NormalizeFingerprint accepts hex SHA-256 with or without colons, in either
// case, as printed by `crank-ca init` or `openssl -fingerprint -sha256`.
func NormalizeFingerprint(fp string) (string, error) {
	f := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(fp), ":", ""))
	if b, err := hex.DecodeString(f); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("fingerprint %q is not a hex SHA-256 (64 hex digits)", fp)
	}
	return f, nil
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// fetchRoot bootstraps trust: it downloads /roots.pem without trusting the
// server yet, keeps the root whose SHA-256 is the pinned fingerprint, and then
// checks that the very server it talked to presented a certificate chaining to
// that root. After this the agent trusts that root and nothing else.
func fetchRoot(ctx context.Context, caURL, fp string, timeout time.Duration) (*x509.Certificate, error) {
	u, err := url.Parse(caURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("--ca-url %q must be an https URL", caURL)
	}
	var peer []*x509.Certificate
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy: http.ProxyFromEnvironment,
			TLSClientConfig: &tls.Config{
				MinVersion:         tls.VersionTLS12,
				InsecureSkipVerify: true, //nolint:gosec // verified below against the pinned root
				VerifyConnection: func(cs tls.ConnectionState) error {
					peer = cs.PeerCertificates
					return nil
				},
			},
		},
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(caURL, "/")+"/roots.pem", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCAUnreachable, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%w: reading roots.pem: %v", ErrCAUnreachable, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: GET roots.pem answered %s", ErrCAUnreachable, resp.Status)
	}
	roots, err := parseCerts(body)
	if err != nil {
		return nil, fmt.Errorf("roots.pem: %w", err)
	}
	var root *x509.Certificate
	for _, r := range roots {
		if fingerprint(r) == fp {
			root = r
		}
	}
	if root == nil {
		got := make([]string, len(roots))
		for i, r := range roots {
			got[i] = fingerprint(r)
		}
		return nil, fmt.Errorf("%w: pinned %s, the CA serves %s", ErrFingerprintMismatch, fp, strings.Join(got, ", "))
	}
	if len(peer) == 0 {
		return nil, fmt.Errorf("%w: the server presented no certificate", ErrFingerprintMismatch)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range peer[1:] {
		inter.AddCert(c)
	}
	host := u.Hostname()
	if _, err := peer[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, DNSName: host}); err != nil {
		return nil, fmt.Errorf("%w: the server's own certificate does not chain to the pinned root for %s: %v", ErrFingerprintMismatch, net.JoinHostPort(host, u.Port()), err)
	}
	return root, nil
}
