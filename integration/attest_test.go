package integration

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/crank-platform/crank-ca/config"
)

// oidcIssuer is an OpenID provider served over HTTPS by the test: discovery
// and JWKS, and tokens signed with its key.
type oidcIssuer struct {
	t      *testing.T
	srv    *httptest.Server
	key    *ecdsa.PrivateKey
	kid    string
	caFile string
	jwks   atomic.Int64 // JWKS fetches
}

func newOIDCIssuer(t *testing.T) *oidcIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	o := &oidcIssuer{t: t, key: key, kid: "key-1"}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": o.srv.URL, "jwks_uri": o.srv.URL + "/keys"})
	})
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, r *http.Request) {
		o.jwks.Add(1)
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: o.kid, Algorithm: "ES256", Use: "sig"}}})
	})
	o.srv = httptest.NewTLSServer(mux)
	t.Cleanup(o.srv.Close)
	o.caFile = filepath.Join(t.TempDir(), "issuer-ca.pem")
	if err := os.WriteFile(o.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: o.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return o
}

// jwksFile writes the issuer's key set into dir, for attestors with
// keySource jwksFile, and returns its path.
func (o *oidcIssuer) jwksFile(t *testing.T, dir string) string {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &o.key.PublicKey, KeyID: o.kid, Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "jwks-"+strings.TrimPrefix(o.srv.URL, "https://127.0.0.1:")+".json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// tokenOpts shape one token; zero values give a valid token for sub.
type tokenOpts struct {
	iss, aud, kid, jti string
	iat, exp, nbf      time.Time
	key                any // signing key; default the issuer's
	alg                jose.SignatureAlgorithm
	extra              map[string]any
}

func (o *oidcIssuer) token(sub string, opts tokenOpts) string {
	o.t.Helper()
	now := time.Now()
	if opts.iss == "" {
		opts.iss = o.srv.URL
	}
	if opts.aud == "" {
		opts.aud = "crank-ca"
	}
	if opts.kid == "" {
		opts.kid = o.kid
	}
	if opts.jti == "" {
		b := make([]byte, 12)
		_, _ = rand.Read(b)
		opts.jti = base64.RawURLEncoding.EncodeToString(b)
	}
	if opts.iat.IsZero() {
		opts.iat = now
	}
	if opts.exp.IsZero() {
		opts.exp = now.Add(10 * time.Minute)
	}
	if opts.key == nil {
		opts.key = o.key
	}
	if opts.alg == "" {
		opts.alg = jose.ES256
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: opts.alg, Key: opts.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", opts.kid))
	if err != nil {
		o.t.Fatal(err)
	}
	c := jwt.Claims{Issuer: opts.iss, Subject: sub, Audience: jwt.Audience{opts.aud}, ID: opts.jti,
		IssuedAt: jwt.NewNumericDate(opts.iat), Expiry: jwt.NewNumericDate(opts.exp)}
	if !opts.nbf.IsZero() {
		c.NotBefore = jwt.NewNumericDate(opts.nbf)
	}
	b := jwt.Signed(signer).Claims(c)
	if opts.extra != nil {
		b = b.Claims(opts.extra)
	}
	s, err := b.Serialize()
	if err != nil {
		o.t.Fatal(err)
	}
	return s
}

// attestResp is what POST /attest answered.
type attestResp struct {
	status int
	creds  struct {
		KID       string   `json:"kid"`
		HMACKey   string   `json:"hmacKey"`
		Directory string   `json:"directory"`
		Worker    string   `json:"worker"`
		SPIFFEID  string   `json:"spiffeID"`
		DNSNames  []string `json:"dnsNames"`
	}
	problem rawProblem
	check   string
	body    string
}

func (c *ca) attest(t *testing.T, prov, token string) attestResp {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"jwt": token})
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, c.url+"/attest/"+prov, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.httpClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := attestResp{status: resp.StatusCode, body: string(b)}
	if resp.StatusCode == http.StatusCreated {
		if err := json.Unmarshal(b, &out.creds); err != nil {
			t.Fatalf("credentials: %v: %s", err, b)
		}
		return out
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
		t.Fatalf("refusal without a problem document: %d %s", resp.StatusCode, b)
	}
	var p struct {
		rawProblem
		Check string `json:"check"`
	}
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatalf("problem: %v: %s", err, b)
	}
	out.problem, out.check = p.rawProblem, p.Check
	if token != "" && strings.Contains(string(b), token) {
		t.Errorf("the refusal echoes the token")
	}
	return out
}

// attestCA is a CA whose "workers" provisioner trusts the test's OIDC
// issuer (through discovery) and a Kubernetes-style issuer (through a JWKS
// file), and whose "other" provisioner trusts the OIDC issuer for another
// audience.
func attestCA(t *testing.T, o *oidcIssuer, k8s *oidcIssuer, mutate func(*config.Config)) *ca {
	t.Helper()
	return newCA(t, func(cfg *config.Config) {
		w, _ := cfg.Provisioner("workers")
		jwksFile := k8s.jwksFile(t, t.TempDir())
		w.Attestors = []config.Attestor{
			{Name: "ci", Type: config.AttestorOIDC, Issuer: o.srv.URL, Audience: "crank-ca", CAFile: o.caFile},
			{Name: "k8s", Type: config.AttestorKubernetes, Issuer: k8s.srv.URL, Audience: "crank-ca",
				KeySource: config.KeySourceJWKSFile, JWKSFile: jwksFile,
				Allow: []config.ServiceAccountRule{{Namespace: "team-a", ServiceAccount: "billing"}, {Namespace: "team-b", ServiceAccount: "*"}}},
		}
		other := config.Provisioner{Name: "other", Type: config.TypeWorkerAttestation,
			Workers:   &config.WorkerPattern{Pattern: "[a-z]+", DNSTemplates: []string{"{worker}.other.{trustDomain}"}, SPIFFEIDTemplate: "spiffe://{trustDomain}/other/{worker}"},
			Attestors: []config.Attestor{{Name: "ci", Type: config.AttestorOIDC, Issuer: o.srv.URL, Audience: "other", CAFile: o.caFile}},
		}
		cfg.Provisioners = append(cfg.Provisioners, other)
		a := adhoc(cfg)
		a.Policy.DeniedDNSSuffixes = append(a.Policy.DeniedDNSSuffixes, "other."+cfg.TrustDomain)
		if mutate != nil {
			mutate(cfg)
		}
		cfg.ApplyDefaults()
	})
}

// k8sClaims are the claims of a Kubernetes service-account token.
func k8sClaims(ns, sa, pod string) map[string]any {
	k := map[string]any{"namespace": ns, "serviceaccount": map[string]string{"name": sa, "uid": "uid-" + sa}}
	if pod != "" {
		k["pod"] = map[string]string{"name": pod, "uid": "uid-" + pod}
	}
	return map[string]any{"kubernetes.io": k}
}

// registerAttested registers a lego client with attested EAB credentials.
func (c *ca) registerAttested(t *testing.T, prov string, r attestResp) (*lego.Client, error) {
	t.Helper()
	cl, u := c.newLego(prov, nil)
	reg, err := cl.Registration.RegisterWithExternalAccountBinding(registration.RegisterEABOptions{TermsOfServiceAgreed: true, Kid: r.creds.KID, HmacEncoded: r.creds.HMACKey})
	if err != nil {
		return nil, err
	}
	u.reg = reg
	return cl, nil
}

// enrolWithCredentials registers with attested EAB credentials and orders
// the attested names.
func (c *ca) enrolWithCredentials(t *testing.T, prov string, r attestResp) (*certificate.Resource, error) {
	t.Helper()
	cl, err := c.registerAttested(t, prov, r)
	if err != nil {
		return nil, err
	}
	return obtain(t, c, cl.Certificate, r.creds.DNSNames...)
}

// enrolAttestedSVID enrols with attested credentials and checks that the
// leaf is an X.509-SVID for exactly spiffeID.
func (c *ca) enrolAttestedSVID(t *testing.T, prov string, r attestResp, spiffeID string) *x509.Certificate {
	t.Helper()
	res, err := c.enrolWithCredentials(t, prov, r)
	if err != nil {
		t.Fatalf("enrol: %v\n%s", err, rawTail(c.logs.String(), 15))
	}
	leaf := parseChain(t, res.Certificate)[0]
	if got := uris(leaf); len(got) != 1 || got[0] != spiffeID {
		t.Errorf("URIs %v, want %s", got, spiffeID)
	}
	checkSVIDProfile(t, leaf)
	return leaf
}

func TestAttestOIDCAndKubernetes(t *testing.T) {
	t.Parallel()
	o, k8s := newOIDCIssuer(t), newOIDCIssuer(t)
	c := attestCA(t, o, k8s, nil)
	c.start()

	t.Run("oidc token for a configured worker", func(t *testing.T) {
		r := c.attest(t, "workers", o.token("hello", tokenOpts{}))
		if r.status != http.StatusCreated {
			t.Fatalf("attest: %d %s", r.status, r.body)
		}
		if r.creds.SPIFFEID != "spiffe://crank.internal/worker/hello" || r.creds.Directory != c.directory("workers") {
			t.Errorf("credentials: %+v", r.creds)
		}
		c.enrolAttestedSVID(t, "workers", r, "spiffe://crank.internal/worker/hello")
		// The credentials are single use.
		if _, err := c.enrolWithCredentials(t, "workers", r); err == nil {
			t.Error("attested credentials registered a second account")
		}
	})

	t.Run("kubernetes pod-bound token", func(t *testing.T) {
		r := c.attest(t, "workers", k8s.token("system:serviceaccount:team-a:billing", tokenOpts{extra: k8sClaims("team-a", "billing", "billing-7d9f")}))
		if r.status != http.StatusCreated {
			t.Fatalf("attest: %d %s", r.status, r.body)
		}
		if r.creds.SPIFFEID != "spiffe://crank.internal/ns/team-a/sa/billing" || len(r.creds.DNSNames) != 1 || r.creds.DNSNames[0] != "billing.team-a.workers.crank.internal" {
			t.Errorf("credentials: %+v", r.creds)
		}
		c.enrolAttestedSVID(t, "workers", r, "spiffe://crank.internal/ns/team-a/sa/billing")
		logs := c.logs.String()
		if !strings.Contains(logs, "pod=billing-7d9f") || !strings.Contains(logs, "podUID=uid-billing-7d9f") {
			t.Errorf("the pod is not in the audit stream:\n%s", rawTail(logs, 10))
		}
	})

	t.Run("kubernetes wildcard service account", func(t *testing.T) {
		r := c.attest(t, "workers", k8s.token("system:serviceaccount:team-b:api", tokenOpts{extra: k8sClaims("team-b", "api", "")}))
		if r.status != http.StatusCreated || r.creds.SPIFFEID != "spiffe://crank.internal/ns/team-b/sa/api" {
			t.Fatalf("attest: %d %s", r.status, r.body)
		}
	})

	// Every refusal: a 4xx problem naming the check, no binding, no
	// certificate. The HS256 token is signed with the issuer's public key
	// bytes as the HMAC secret (the classic key-confusion attack).
	pub, _ := o.key.PublicKey.ECDH()
	replayed := o.token("hello", tokenOpts{jti: "replayed-jti"})
	if r := c.attest(t, "workers", replayed); r.status != http.StatusCreated {
		t.Fatalf("first use of the token: %d %s", r.status, r.body)
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	for _, tc := range []struct {
		name, prov, token, check string
		status                   int
	}{
		{"wrong aud", "workers", o.token("hello", tokenOpts{aud: "someone-else"}), "audience", 401},
		{"wrong iss", "workers", o.token("hello", tokenOpts{iss: "https://evil.example"}), "issuer", 401},
		{"expired", "workers", o.token("hello", tokenOpts{iat: now.Add(-30 * time.Minute), exp: now.Add(-10 * time.Minute)}), "expiry", 401},
		{"not yet valid", "workers", o.token("hello", tokenOpts{nbf: now.Add(10 * time.Minute), exp: now.Add(20 * time.Minute)}), "not-before", 401},
		{"issued in the future", "workers", o.token("hello", tokenOpts{iat: now.Add(10 * time.Minute), exp: now.Add(20 * time.Minute)}), "issued-at", 401},
		{"too old", "workers", o.token("hello", tokenOpts{iat: now.Add(-3 * time.Hour), exp: now.Add(time.Hour)}), "max-age", 401},
		{"alg none", "workers", unsignedToken(t, o.srv.URL, "hello"), "algorithm", 401},
		{"HS256 signed with the public key", "workers", o.token("hello", tokenOpts{alg: jose.HS256, key: pub.Bytes()}), "algorithm", 401},
		{"unknown kid", "workers", o.token("hello", tokenOpts{kid: "no-such-key"}), "key", 401},
		{"signed by another key", "workers", o.token("hello", tokenOpts{key: otherKey}), "signature", 401},
		{"replayed jti", "workers", replayed, "jti", 401},
		{"sub not a configured worker", "workers", o.token("Not_A_Worker", tokenOpts{}), "subject", 401},
		{"namespace not allowed", "workers", k8s.token("system:serviceaccount:team-c:billing", tokenOpts{extra: k8sClaims("team-c", "billing", "")}), "allow-list", 401},
		{"service account not allowed", "workers", k8s.token("system:serviceaccount:team-a:admin", tokenOpts{extra: k8sClaims("team-a", "admin", "")}), "allow-list", 401},
		{"kubernetes claim disagrees with sub", "workers", k8s.token("system:serviceaccount:team-a:billing", tokenOpts{extra: k8sClaims("team-b", "billing", "")}), "subject", 401},
		{"token for another provisioner", "workers", o.token("hello", tokenOpts{aud: "other"}), "audience", 401},
		{"garbage", "workers", "not.a.jwt", "format", 401},
		{"unknown provisioner", "nope", o.token("hello", tokenOpts{}), "", 404},
		{"provisioner without attestors", "adhoc", o.token("hello", tokenOpts{}), "", 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.attest(t, tc.prov, tc.token)
			if r.status != tc.status || r.check != tc.check {
				t.Fatalf("status %d check %q, want %d %q: %s", r.status, r.check, tc.status, tc.check, r.body)
			}
			t.Logf("%d %s: %s", r.status, r.check, r.problem.Detail)
		})
	}

	t.Run("credentials of another provisioner", func(t *testing.T) {
		r := c.attest(t, "other", o.token("hello", tokenOpts{aud: "other"}))
		if r.status != http.StatusCreated {
			t.Fatalf("attest on other: %d %s", r.status, r.body)
		}
		if _, err := c.enrolWithCredentials(t, "workers", r); err == nil {
			t.Fatal("credentials attested on \"other\" registered on \"workers\"")
		}
	})

	t.Run("malformed requests", func(t *testing.T) {
		for _, body := range []string{``, `{}`, `{"jwt":1}`, `{"jwt":"a","extra":1}`, `[]`} {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, c.url+"/attest/workers", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := c.httpClient().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
				t.Errorf("body %q: %d %s", body, resp.StatusCode, resp.Header.Get("Content-Type"))
			}
		}
		resp, err := c.httpClient().Get(c.url + "/attest/workers")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("GET: %d", resp.StatusCode)
		}
	})

	// Only the accepted attestations bound accounts: the two enrolments
	// above (OIDC and pod-bound Kubernetes).
	var accounts []struct {
		Worker string `json:"worker"`
	}
	if st := c.admin(t, http.MethodGet, "/accounts", nil, &accounts); st != http.StatusOK {
		t.Fatalf("accounts: %d", st)
	}
	bound := map[string]int{}
	for _, a := range accounts {
		bound[a.Worker]++
	}
	if bound["hello"] != 1 || bound["ns/team-a/sa/billing"] != 1 || len(accounts) != 2 {
		t.Errorf("bound accounts %v, want exactly hello and ns/team-a/sa/billing once each", bound)
	}
	if strings.Contains(c.logs.String(), replayed) {
		t.Error("a token appears in the logs")
	}
	if n := strings.Count(c.logs.String(), `msg=attestation`); n < 20 {
		t.Errorf("%d attestation audit lines, want one per decision (>= 20)", n)
	}
}

// unsignedToken is an "alg":"none" JWT.
func unsignedToken(t *testing.T, iss, sub string) string {
	t.Helper()
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	p, _ := json.Marshal(map[string]any{"iss": iss, "sub": sub, "aud": "crank-ca", "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()})
	return h + "." + base64.RawURLEncoding.EncodeToString(p) + "."
}

// TestAttestBindingAge: an account bound by attestation stops ordering
// after maxBindingAge; a fresh attestation gives a new account that works.
func TestAttestBindingAge(t *testing.T) {
	t.Parallel()
	o, k8s := newOIDCIssuer(t), newOIDCIssuer(t)
	c := attestCA(t, o, k8s, func(cfg *config.Config) {
		w, _ := cfg.Provisioner("workers")
		w.MaxBindingAge = config.Dur(10 * time.Minute)
	})
	c.start()
	r := c.attest(t, "workers", o.token("hello", tokenOpts{}))
	if r.status != http.StatusCreated {
		t.Fatalf("attest: %d %s", r.status, r.body)
	}
	cl, err := c.registerAttested(t, "workers", r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := obtain(t, c, cl.Certificate, r.creds.DNSNames...); err != nil {
		t.Fatal(err)
	}
	c.clock.Advance(11 * time.Minute)
	_, err = obtain(t, c, cl.Certificate, r.creds.DNSNames...)
	wantProblem(t, err, "unauthorized", http.StatusUnauthorized)
	if !strings.Contains(problem(t, err).Detail, "attest again") {
		t.Errorf("detail %q does not say what to do", problem(t, err).Detail)
	}
	// A fresh attestation (the issuer's clock is real time; the CA's is
	// 11 minutes ahead, inside the token's 10-minute validity plus leeway
	// only if the token is fresh and long enough).
	fresh := c.attest(t, "workers", o.token("hello", tokenOpts{exp: time.Now().Add(time.Hour)}))
	if fresh.status != http.StatusCreated {
		t.Fatalf("re-attest: %d %s", fresh.status, fresh.body)
	}
	if _, err := c.enrolWithCredentials(t, "workers", fresh); err != nil {
		t.Fatalf("enrol after re-attestation: %v", err)
	}
}

// TestAttestDisabledIdentity: an operator disables an attested Kubernetes
// identity by its name; its account stops ordering and attestation is
// refused; once enabled again, the old account stays dead (it was bound
// before the disable) and a fresh attestation works.
func TestAttestDisabledIdentity(t *testing.T) {
	t.Parallel()
	o, k8s := newOIDCIssuer(t), newOIDCIssuer(t)
	c := attestCA(t, o, k8s, nil)
	c.start()
	tok := func() string {
		return k8s.token("system:serviceaccount:team-a:billing", tokenOpts{extra: k8sClaims("team-a", "billing", "")})
	}
	r := c.attest(t, "workers", tok())
	if r.status != http.StatusCreated {
		t.Fatalf("attest: %d %s", r.status, r.body)
	}
	cl, err := c.registerAttested(t, "workers", r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := obtain(t, c, cl.Certificate, r.creds.DNSNames...); err != nil {
		t.Fatal(err)
	}
	name := "ns%2Fteam-a%2Fsa%2Fbilling"
	if st := c.admin(t, http.MethodPost, "/workers/workers/"+name+"/disable", nil, nil); st != http.StatusOK {
		t.Fatalf("disable: %d", st)
	}
	if _, err := obtain(t, c, cl.Certificate, r.creds.DNSNames...); err == nil {
		t.Fatal("a disabled identity's account still orders")
	}
	if got := c.attest(t, "workers", tok()); got.status != http.StatusUnauthorized || got.check != "disabled" {
		t.Fatalf("attestation of a disabled identity: %d %q %s", got.status, got.check, got.body)
	}
	if st := c.admin(t, http.MethodPost, "/workers/workers/"+name+"/enable", nil, nil); st != http.StatusOK {
		t.Fatalf("enable: %d", st)
	}
	c.clock.Advance(time.Second) // bindings must be newer than the disable
	if _, err := obtain(t, c, cl.Certificate, r.creds.DNSNames...); err == nil {
		t.Fatal("the account bound before the disable orders again")
	}
	fresh := c.attest(t, "workers", tok())
	if fresh.status != http.StatusCreated {
		t.Fatalf("re-attest: %d %s", fresh.status, fresh.body)
	}
	if _, err := c.enrolWithCredentials(t, "workers", fresh); err != nil {
		t.Fatalf("enrol after enable: %v\n%s", err, rawTail(c.logs.String(), 10))
	}
	if st := c.admin(t, http.MethodPost, "/workers/workers/ns%2Fteam-z%2Fsa%2Fx/disable", nil, nil); st != http.StatusNotFound {
		t.Errorf("disabling an identity no attestor admits: %d, want 404", st)
	}
}

// TestAttestCertbot: an unmodified EAB client (certbot) uses attested
// credentials: it registers with them and gets the attested worker's
// certificate without solving a challenge.
func TestAttestCertbot(t *testing.T) {
	skipWithoutCertbot(t)
	t.Parallel()
	o, k8s := newOIDCIssuer(t), newOIDCIssuer(t)
	c := attestCA(t, o, k8s, nil)
	c.start()
	r := c.attest(t, "workers", k8s.token("system:serviceaccount:team-b:api", tokenOpts{extra: k8sClaims("team-b", "api", "")}))
	if r.status != http.StatusCreated {
		t.Fatalf("attest: %d %s", r.status, r.body)
	}
	b := newCertbot(t, c, certbotFreePort(t))
	b.prov = "workers"
	b.mustRun("register", append(certbotRegisterArgs(), "--eab-kid="+r.creds.KID, "--eab-hmac-key="+r.creds.HMACKey)...)
	name := r.creds.DNSNames[0]
	b.mustRun("certonly", b.certonlyArgs(name)...)
	leaf := b.liveCert(name)
	if got := uris(leaf); len(got) != 1 || got[0] != "spiffe://crank.internal/ns/team-b/sa/api" {
		t.Errorf("certbot's certificate URIs %v", got)
	}
	certbotNoServerErrors(t, c)
}
