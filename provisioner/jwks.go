package provisioner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Bounds of key fetching.
const (
	maxJWKSBytes = 1 << 20
	// jwksMaxAge is how long fetched keys are used before a refresh.
	jwksMaxAge = time.Hour
	// jwksMinRefresh rate-limits refreshes on an unknown kid, so tokens
	// with made-up kids cannot make the CA hammer the issuer.
	jwksMinRefresh = 30 * time.Second
)

// JWKSConfig says where a JWKS comes from: exactly one of URL, File, or
// Discovery (the issuer's /.well-known/openid-configuration names the
// jwks_uri). Keys are only ever fetched from there, never from a location a
// token names.
type JWKSConfig struct {
	URL       string
	File      string
	Discovery string // the issuer URL
	// Client fetches URL and Discovery (trust roots, timeouts); nil means
	// a client with a 10 s timeout and the system roots.
	Client *http.Client
	Now    func() time.Time
}

// JWKS is a cached key set. It is safe for concurrent use.
type JWKS struct {
	cfg JWKSConfig

	mu          sync.Mutex
	keys        jose.JSONWebKeySet
	fetchedAt   time.Time
	lastAttempt time.Time
}

// NewJWKS validates cfg; nothing is fetched until the first Key call.
func NewJWKS(cfg JWKSConfig) (*JWKS, error) {
	n := 0
	for _, s := range []string{cfg.URL, cfg.File, cfg.Discovery} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return nil, &FieldError{Field: "keys", Err: errors.New("exactly one of jwksURL, jwksFile or discovery is required")}
	}
	for _, u := range []string{cfg.URL, cfg.Discovery} {
		if u == "" {
			continue
		}
		pu, err := url.Parse(u)
		if err != nil || pu.Scheme != "https" || pu.Host == "" {
			return nil, &FieldError{Field: "keys", Err: fmt.Errorf("%q is not an https URL", u)}
		}
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &JWKS{cfg: cfg}, nil
}

// Key returns the key with kid, fetching the set when it is older than an
// hour, and once more (at most every 30 s) when kid is unknown: issuers
// rotate keys and publish the new one first.
func (j *JWKS) Key(ctx context.Context, kid string) (jose.JSONWebKey, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	now := j.cfg.Now()
	stale := j.fetchedAt.IsZero() || now.Sub(j.fetchedAt) > jwksMaxAge
	if !stale {
		if k, ok := j.lookup(kid); ok {
			return k, nil
		}
	}
	if !j.lastAttempt.IsZero() && now.Sub(j.lastAttempt) < jwksMinRefresh {
		if k, ok := j.lookup(kid); ok {
			return k, nil
		}
		return jose.JSONWebKey{}, refuse("key", "no key %q in the issuer's key set", truncate(kid))
	}
	j.lastAttempt = now
	set, err := j.fetch(ctx)
	if err != nil {
		if k, ok := j.lookup(kid); ok {
			return k, nil // keep serving the known keys while the issuer is down
		}
		return jose.JSONWebKey{}, &AttestationError{Check: "key", Reason: "the issuer's keys cannot be fetched: " + err.Error()}
	}
	j.keys, j.fetchedAt = set, now
	if k, ok := j.lookup(kid); ok {
		return k, nil
	}
	return jose.JSONWebKey{}, refuse("key", "no key %q in the issuer's key set", truncate(kid))
}

func (j *JWKS) lookup(kid string) (jose.JSONWebKey, bool) {
	for _, k := range j.keys.Key(kid) {
		if k.Valid() && k.IsPublic() {
			return k, true
		}
	}
	return jose.JSONWebKey{}, false
}

func (j *JWKS) fetch(ctx context.Context) (jose.JSONWebKeySet, error) {
	var (
		b   []byte
		err error
	)
	switch {
	case j.cfg.File != "":
		b, err = os.ReadFile(j.cfg.File)
	case j.cfg.URL != "":
		b, err = j.get(ctx, j.cfg.URL)
	default:
		b, err = j.discover(ctx)
	}
	if err != nil {
		return jose.JSONWebKeySet{}, err
	}
	var set jose.JSONWebKeySet
	if err := jsonObject(b, &set); err != nil {
		return jose.JSONWebKeySet{}, fmt.Errorf("not a JWK set: %w", err)
	}
	return set, nil
}

// discover reads the OpenID provider configuration of the issuer. Its
// "issuer" must be the configured one (OpenID Connect Discovery 1.0, 4.3),
// and its jwks_uri an https URL.
func (j *JWKS) discover(ctx context.Context) ([]byte, error) {
	b, err := j.get(ctx, strings.TrimSuffix(j.cfg.Discovery, "/")+"/.well-known/openid-configuration")
	if err != nil {
		return nil, err
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := jsonObject(b, &doc); err != nil {
		return nil, fmt.Errorf("discovery document: %w", err)
	}
	if doc.Issuer != j.cfg.Discovery {
		return nil, fmt.Errorf("discovery document names issuer %q, not %q", truncate(doc.Issuer), j.cfg.Discovery)
	}
	if u, err := url.Parse(doc.JWKSURI); err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("jwks_uri %q is not an https URL", truncate(doc.JWKSURI))
	}
	return j.get(ctx, doc.JWKSURI)
}

func (j *JWKS) get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	resp, err := j.cfg.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d", u, resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	if len(b) > maxJWKSBytes {
		return nil, fmt.Errorf("GET %s: larger than %d bytes", u, maxJWKSBytes)
	}
	return b, nil
}
