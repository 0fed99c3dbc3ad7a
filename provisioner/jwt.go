package provisioner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrAttestation is wrapped by every refusal of a JWT attestor; the
// *AttestationError says which check failed.
var ErrAttestation = errors.New("attestation refused")

// AttestationError is one failed check of a JWT attestation. Check is a
// short stable name ("issuer", "audience", "signature", ...); Reason says
// what was wrong without quoting the token.
type AttestationError struct {
	Check  string
	Reason string
}

func (e *AttestationError) Error() string { return e.Check + ": " + e.Reason }
func (e *AttestationError) Unwrap() error { return ErrAttestation }

func refuse(check, format string, args ...any) error {
	return &AttestationError{Check: check, Reason: fmt.Sprintf(format, args...)}
}

// JWTKind selects how a verified token maps to a worker identity.
type JWTKind int

const (
	// JWTKubernetes maps a service-account token's namespace and service
	// account to spiffe://<td>/ns/<namespace>/sa/<serviceaccount>, the
	// convention of SPIRE and Istio.
	JWTKubernetes JWTKind = iota + 1
	// JWTOIDC maps chosen claims through a template to a configured worker
	// of the provisioner.
	JWTOIDC
)

// Asymmetric algorithms only: "none" and the HMAC family (where a public
// key could be abused as a shared secret) are refused before anything else.
var jwtAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// KeySet finds the public key of a token by its kid. Implementations fetch
// keys only from where the operator configured them.
type KeySet interface {
	Key(ctx context.Context, kid string) (jose.JSONWebKey, error)
}

// TokenReviewer asks a Kubernetes API server whether a token is genuine
// (TokenReview), for issuers that do not publish their keys.
type TokenReviewer interface {
	Review(ctx context.Context, token, audience string) (username string, err error)
}

// ServiceAccountRule admits the service accounts of one namespace: a name,
// or "*" for all of them.
type ServiceAccountRule struct {
	Namespace      string
	ServiceAccount string
}

// JWTAttestorConfig configures a JWTAttestor.
type JWTAttestorConfig struct {
	// Name identifies the attestor in audit lines and bindings.
	Name     string
	Kind     JWTKind
	Issuer   string // exact "iss"
	Audience string // must be one of "aud"
	// Keys verifies signatures. It may be nil only with a Reviewer.
	Keys     KeySet
	Reviewer TokenReviewer
	// MaxTokenAge bounds now - iat. Leeway is the clock skew allowed on
	// exp, nbf and iat (default 1 minute).
	MaxTokenAge time.Duration
	Leeway      time.Duration
	TrustDomain string

	// Kubernetes: which service accounts may attest, and the DNS names
	// of their certificates (placeholders {namespace}, {serviceAccount},
	// {trustDomain}).
	Allow        []ServiceAccountRule
	DNSTemplates []string

	// OIDC: WorkerTemplate renders the worker name from claims
	// ({sub}, {claim:NAME} for a string claim); Identities resolves it.
	WorkerTemplate string
	Identities     *Identities

	Now func() time.Time
}

// JWTAttestor verifies JWTs the platform already gives workers (Kubernetes
// service-account tokens, OIDC identity tokens) and maps them to an identity.
type JWTAttestor struct {
	cfg JWTAttestorConfig
	td  spiffeid.TrustDomain
}

// Attestation is the outcome of a successful JWT attestation.
type Attestation struct {
	Attestor string
	Subject  string // "sub"
	Identity Identity
	// JTI and ExpiresAt let the caller spend the token once.
	JTI       string
	ExpiresAt time.Time
	// Pod name and UID of a pod-bound Kubernetes token.
	PodName, PodUID string
}

var templateVarRE = regexp.MustCompile(`\{[^{}]*\}`)

// NewJWTAttestor validates the configuration, reporting every problem.
func NewJWTAttestor(cfg JWTAttestorConfig) (*JWTAttestor, error) {
	var errs []error
	fail := func(field string, err error) { errs = append(errs, &FieldError{Field: field, Err: err}) }
	if !validWorkerName(cfg.Name) {
		fail("name", fmt.Errorf("%q is not a DNS label", cfg.Name))
	}
	if cfg.Issuer == "" {
		fail("issuer", errors.New("required"))
	}
	if cfg.Audience == "" {
		fail("audience", errors.New("required"))
	}
	if cfg.Keys == nil && cfg.Reviewer == nil {
		fail("keys", errors.New("a key source or a TokenReview is required"))
	}
	if cfg.MaxTokenAge <= 0 {
		fail("maxTokenAge", errors.New("must be > 0"))
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		fail("trustDomain", err)
	}
	switch cfg.Kind {
	case JWTKubernetes:
		if len(cfg.Allow) == 0 {
			fail("allow", errors.New("at least one namespace/serviceAccount rule is required"))
		}
		for i, r := range cfg.Allow {
			if !validWorkerName(r.Namespace) {
				fail(fmt.Sprintf("allow[%d].namespace", i), fmt.Errorf("%q is not a Kubernetes namespace name", r.Namespace))
			}
			if r.ServiceAccount != "*" && validateDNSName(r.ServiceAccount) != nil {
				fail(fmt.Sprintf("allow[%d].serviceAccount", i), fmt.Errorf("%q is not a service account name or \"*\"", r.ServiceAccount))
			}
		}
		for i, t := range cfg.DNSTemplates {
			for _, v := range templateVarRE.FindAllString(t, -1) {
				if v != "{namespace}" && v != "{serviceAccount}" && v != "{trustDomain}" {
					fail(fmt.Sprintf("dnsTemplates[%d]", i), fmt.Errorf("unknown placeholder %s", v))
				}
			}
			if err := validateDNSName(renderK8s(t, "sample-ns", "sample-sa", td.Name())); err != nil {
				fail(fmt.Sprintf("dnsTemplates[%d]", i), err)
			}
		}
	case JWTOIDC:
		if cfg.Identities == nil {
			fail("identities", errors.New("required for OIDC attestors"))
		}
		if cfg.WorkerTemplate == "" {
			fail("worker", errors.New("required"))
		}
		for _, v := range templateVarRE.FindAllString(cfg.WorkerTemplate, -1) {
			if v != "{sub}" && !strings.HasPrefix(v, "{claim:") {
				fail("worker", fmt.Errorf("unknown placeholder %s; use {sub} or {claim:NAME}", v))
			}
		}
	default:
		fail("type", errors.New("must be kubernetes or oidc"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if cfg.Leeway <= 0 {
		cfg.Leeway = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &JWTAttestor{cfg: cfg, td: td}, nil
}

// Name is the attestor's configured name.
func (a *JWTAttestor) Name() string { return a.cfg.Name }

// Issuer is the issuer this attestor trusts.
func (a *JWTAttestor) Issuer() string { return a.cfg.Issuer }

// PeekIssuer reads the "iss" of a token without verifying anything, so a
// caller can pick the attestor configured for it. Never decide on it.
func PeekIssuer(token string) (string, error) {
	tok, err := jwt.ParseSigned(token, jwtAlgorithms)
	if err != nil {
		return "", refusedFormat(err)
	}
	var c jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
		return "", refuse("format", "the claims are not a JSON object")
	}
	return c.Issuer, nil
}

func refusedFormat(err error) error {
	if strings.Contains(err.Error(), "unexpected signature algorithm") {
		return refuse("algorithm", "only asymmetric signature algorithms are accepted (%v)", jwtAlgorithms)
	}
	return refuse("format", "not a signed JWT in compact serialization")
}

// k8sClaims is the Kubernetes-specific part of a service-account token.
type k8sClaims struct {
	K8s *struct {
		Namespace      string `json:"namespace"`
		ServiceAccount struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"serviceaccount"`
		Pod *struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"pod"`
	} `json:"kubernetes.io"`
}

// Attest verifies token and maps it to an identity. Checks run in this
// order, the first failure ending it: format and algorithm, signature (or
// TokenReview), issuer, audience, expiry, not-before, issued-at and age,
// then the mapping (subject, allow-list, identity).
func (a *JWTAttestor) Attest(ctx context.Context, token string) (Attestation, error) {
	if len(token) > 16<<10 {
		return Attestation{}, refuse("format", "the token is longer than 16 KiB")
	}
	tok, err := jwt.ParseSigned(token, jwtAlgorithms)
	if err != nil {
		return Attestation{}, refusedFormat(err)
	}
	if len(tok.Headers) != 1 {
		return Attestation{}, refuse("format", "exactly one signature is required")
	}
	var (
		std   jwt.Claims
		raw   map[string]any
		k8s   k8sClaims
		claim = []any{&std, &raw, &k8s}
	)
	if a.cfg.Keys != nil {
		kid := tok.Headers[0].KeyID
		if kid == "" {
			return Attestation{}, refuse("key", "the token names no key (kid)")
		}
		key, err := a.cfg.Keys.Key(ctx, kid)
		if err != nil {
			return Attestation{}, err
		}
		if key.Algorithm != "" && key.Algorithm != tok.Headers[0].Algorithm {
			return Attestation{}, refuse("algorithm", "key %q is for %s, the token says %s", kid, key.Algorithm, tok.Headers[0].Algorithm)
		}
		if key.Use != "" && key.Use != "sig" {
			return Attestation{}, refuse("key", "key %q is not a signing key", kid)
		}
		if err := tok.Claims(key.Key, claim...); err != nil {
			return Attestation{}, refuse("signature", "the signature does not verify with key %q", kid)
		}
	} else if err := tok.UnsafeClaimsWithoutVerification(claim...); err != nil {
		return Attestation{}, refuse("format", "the claims are not a JSON object")
	}
	now := a.cfg.Now()
	lw := a.cfg.Leeway
	switch {
	case std.Issuer != a.cfg.Issuer:
		return Attestation{}, refuse("issuer", "issued by %q, not %q", truncate(std.Issuer), a.cfg.Issuer)
	case !std.Audience.Contains(a.cfg.Audience):
		return Attestation{}, refuse("audience", "the token is not for audience %q", a.cfg.Audience)
	case std.Expiry == nil:
		return Attestation{}, refuse("expiry", "the token has no exp")
	case now.Add(-lw).After(std.Expiry.Time()):
		return Attestation{}, refuse("expiry", "the token expired at %s", std.Expiry.Time().UTC().Format(time.RFC3339))
	case std.NotBefore != nil && now.Add(lw).Before(std.NotBefore.Time()):
		return Attestation{}, refuse("not-before", "the token is not valid before %s", std.NotBefore.Time().UTC().Format(time.RFC3339))
	case std.IssuedAt == nil:
		return Attestation{}, refuse("issued-at", "the token has no iat")
	case now.Add(lw).Before(std.IssuedAt.Time()):
		return Attestation{}, refuse("issued-at", "the token is issued in the future (%s)", std.IssuedAt.Time().UTC().Format(time.RFC3339))
	case now.Sub(std.IssuedAt.Time()) > a.cfg.MaxTokenAge+lw:
		return Attestation{}, refuse("max-age", "the token was issued %s ago, more than the %s allowed", now.Sub(std.IssuedAt.Time()).Round(time.Second), a.cfg.MaxTokenAge)
	case std.Subject == "":
		return Attestation{}, refuse("subject", "the token has no sub")
	}
	if a.cfg.Reviewer != nil {
		user, err := a.cfg.Reviewer.Review(ctx, token, a.cfg.Audience)
		if err != nil {
			return Attestation{}, err
		}
		if user != std.Subject {
			return Attestation{}, refuse("token-review", "the API server knows the token as %q, it says %q", truncate(user), truncate(std.Subject))
		}
	}
	att := Attestation{Attestor: a.cfg.Name, Subject: std.Subject, JTI: std.ID, ExpiresAt: std.Expiry.Time()}
	switch a.cfg.Kind {
	case JWTKubernetes:
		err = a.mapKubernetes(&att, std.Subject, k8s)
	default:
		err = a.mapOIDC(&att, std.Subject, raw)
	}
	return att, err
}

func (a *JWTAttestor) mapKubernetes(att *Attestation, sub string, c k8sClaims) error {
	ns, sa, ok := strings.Cut(strings.TrimPrefix(sub, "system:serviceaccount:"), ":")
	if !strings.HasPrefix(sub, "system:serviceaccount:") || !ok {
		return refuse("subject", "%q is not a service account", truncate(sub))
	}
	if c.K8s == nil || c.K8s.Namespace != ns || c.K8s.ServiceAccount.Name != sa {
		return refuse("subject", "the kubernetes.io claim does not match the subject")
	}
	if !validWorkerName(ns) || validateDNSName(sa) != nil {
		return refuse("subject", "namespace or service account name is not valid")
	}
	allowed := slices.ContainsFunc(a.cfg.Allow, func(r ServiceAccountRule) bool {
		return r.Namespace == ns && (r.ServiceAccount == "*" || r.ServiceAccount == sa)
	})
	if !allowed {
		return refuse("allow-list", "service account %s/%s is not allowed", ns, sa)
	}
	id, err := spiffeid.FromSegments(a.td, "ns", ns, "sa", sa)
	if err != nil {
		return refuse("subject", "no SPIFFE ID for %s/%s: %v", ns, sa, err)
	}
	att.Identity = Identity{Worker: "ns/" + ns + "/sa/" + sa, SPIFFEID: id}
	for _, t := range a.cfg.DNSTemplates {
		n := renderK8s(t, ns, sa, a.td.Name())
		if validateDNSName(n) != nil {
			return refuse("subject", "the DNS name of %s/%s is not valid", ns, sa)
		}
		att.Identity.DNSNames = append(att.Identity.DNSNames, n)
	}
	att.Identity.DNSNames = normalizeDNS(att.Identity.DNSNames)
	if c.K8s.Pod != nil {
		att.PodName, att.PodUID = truncate(c.K8s.Pod.Name), truncate(c.K8s.Pod.UID)
	}
	return nil
}

func (a *JWTAttestor) mapOIDC(att *Attestation, sub string, raw map[string]any) error {
	var missing string
	name := templateVarRE.ReplaceAllStringFunc(a.cfg.WorkerTemplate, func(v string) string {
		if v == "{sub}" {
			return sub
		}
		claim := strings.TrimSuffix(strings.TrimPrefix(v, "{claim:"), "}")
		s, ok := raw[claim].(string)
		if !ok {
			missing = claim
		}
		return s
	})
	if missing != "" {
		return refuse("subject", "the token has no string claim %q", missing)
	}
	id, err := a.cfg.Identities.Lookup(name)
	if err != nil {
		return refuse("subject", "the token maps to worker %q, which is not a configured identity", truncate(name))
	}
	att.Identity = id
	return nil
}

func renderK8s(t, ns, sa, td string) string {
	return strings.NewReplacer("{namespace}", ns, "{serviceAccount}", sa, "{trustDomain}", td).Replace(t)
}

// AttestedIdentity rebuilds the identity an attestation minted into a join
// token (SPIFFE ID and names under the token's MAC), checking it again.
func AttestedIdentity(worker, spiffeID string, dnsNames, ips []string) (Identity, error) {
	id, err := spiffeid.FromString(spiffeID)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %w", ErrInvalidIdentity, err)
	}
	out := Identity{Worker: worker, SPIFFEID: id}
	for _, n := range dnsNames {
		if err := validateDNSName(n); err != nil {
			return Identity{}, fmt.Errorf("%w: %w", ErrInvalidIdentity, err)
		}
		out.DNSNames = append(out.DNSNames, n)
	}
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return Identity{}, fmt.Errorf("%w: %w", ErrInvalidIdentity, err)
		}
		out.IPs = append(out.IPs, ip.Unmap())
	}
	out.DNSNames, out.IPs = normalizeDNS(out.DNSNames), normalizeIPs(out.IPs)
	if len(out.DNSNames)+len(out.IPs) == 0 {
		return Identity{}, fmt.Errorf("%w: no names", ErrInvalidIdentity)
	}
	return out, nil
}

// jsonObject is used by key sets to reject non-object documents early.
func jsonObject(b []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}
