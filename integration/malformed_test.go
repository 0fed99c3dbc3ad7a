package integration

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// This file holds a deliberately minimal ACME client ("raw..." helpers) that
// can produce every kind of broken request, and a table of malformed requests
// that must each be answered with an RFC 8555 problem document and a 4xx.

const rawProblemPrefix = "urn:ietf:params:acme:error:"

// rawResp is what the server answered.
type rawResp struct {
	status int
	ct     string
	header http.Header
	body   []byte
}

func (r rawResp) String() string {
	return fmt.Sprintf("%d %s %s", r.status, r.ct, bytes.TrimSpace(r.body))
}

// rawProblem is an RFC 8555 / RFC 7807 problem document.
type rawProblem struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
	Status int    `json:"status"`
}

// rawDir is an ACME directory.
type rawDir struct {
	NewNonce   string `json:"newNonce"`
	NewAccount string `json:"newAccount"`
	NewOrder   string `json:"newOrder"`
	RevokeCert string `json:"revokeCert"`
	KeyChange  string `json:"keyChange"`
}

// rawAccount is an account key and, once registered, its URL.
type rawAccount struct {
	key  *ecdsa.PrivateKey
	url  string
	prov string
}

// rawOrder is the part of an order object the tests use.
type rawOrder struct {
	url            string
	Status         string   `json:"status"`
	Authorizations []string `json:"authorizations"`
	Finalize       string   `json:"finalize"`
}

// rawFlat is a flattened JWS JSON serialization, with room for the fields a
// malformed request may add.
type rawFlat struct {
	Protected string         `json:"protected"`
	Payload   string         `json:"payload"`
	Signature string         `json:"signature"`
	Header    map[string]any `json:"header,omitempty"`
}

// rawClient talks to one CA.
type rawClient struct {
	t    *testing.T
	c    *ca
	hc   *http.Client
	dirs map[string]rawDir
}

func newRawClient(t *testing.T, c *ca) *rawClient {
	return &rawClient{t: t, c: c, hc: c.httpClient(), dirs: map[string]rawDir{}}
}

func rawB64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// rawJWK is the public JWK of key, as JSON.
func rawJWK(t *testing.T, key *ecdsa.PrivateKey) json.RawMessage {
	t.Helper()
	b, err := jose.JSONWebKey{Key: &key.PublicKey}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawSignES256 signs input with key (JWS ES256: r||s, 32 bytes each).
func rawSignES256(t *testing.T, key *ecdsa.PrivateKey, input string) []byte {
	t.Helper()
	h := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return sig
}

// rawSign builds a flattened JWS over payload with the given protected
// header, signed ES256 with key whatever the header's alg says (nil key: an
// empty signature).
func rawSign(t *testing.T, protected map[string]any, payload []byte, key *ecdsa.PrivateKey) rawFlat {
	t.Helper()
	ph, err := json.Marshal(protected)
	if err != nil {
		t.Fatal(err)
	}
	f := rawFlat{Protected: rawB64(ph), Payload: rawB64(payload)}
	if key != nil {
		f.Signature = rawB64(rawSignES256(t, key, f.Protected+"."+f.Payload))
	}
	return f
}

func rawMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawDo sends a request and reads the whole answer.
func (rc *rawClient) rawDo(method, url, ct string, body []byte) rawResp {
	rc.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		rc.t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	resp, err := rc.hc.Do(req)
	if err != nil {
		rc.t.Fatalf("%s %s: %v\nserver log:\n%s", method, url, err, rawTail(rc.c.logs.String(), 20))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		rc.t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return rawResp{status: resp.StatusCode, ct: resp.Header.Get("Content-Type"), header: resp.Header, body: b}
}

func (rc *rawClient) rawPost(url string, body []byte) rawResp {
	rc.t.Helper()
	return rc.rawDo(http.MethodPost, url, "application/jose+json", body)
}

func (rc *rawClient) rawDir(prov string) rawDir {
	rc.t.Helper()
	if d, ok := rc.dirs[prov]; ok {
		return d
	}
	r := rc.rawDo(http.MethodGet, rc.c.directory(prov), "", nil)
	if r.status != http.StatusOK {
		rc.t.Fatalf("directory %s: %s", prov, r)
	}
	var d rawDir
	if err := json.Unmarshal(r.body, &d); err != nil {
		rc.t.Fatalf("directory %s: %v", prov, err)
	}
	rc.dirs[prov] = d
	return d
}

func (rc *rawClient) rawNonce(prov string) string {
	rc.t.Helper()
	r := rc.rawDo(http.MethodHead, rc.rawDir(prov).NewNonce, "", nil)
	n := r.header.Get("Replay-Nonce")
	if r.status != http.StatusOK || n == "" {
		rc.t.Fatalf("newNonce %s: %s (nonce %q)", prov, r, n)
	}
	return n
}

// rawHeader is the usual protected header: ES256, a fresh nonce, url, and
// kid (account URL) or else the embedded jwk.
func (rc *rawClient) rawHeader(prov string, acc *rawAccount, url string) map[string]any {
	rc.t.Helper()
	h := map[string]any{"alg": "ES256", "nonce": rc.rawNonce(prov), "url": url}
	if acc.url != "" {
		h["kid"] = acc.url
	} else {
		h["jwk"] = rawJWK(rc.t, acc.key)
	}
	return h
}

// rawSigned is a well-formed request body for url.
func (rc *rawClient) rawSigned(prov string, acc *rawAccount, url string, payload []byte) []byte {
	rc.t.Helper()
	return rawMarshal(rc.t, rawSign(rc.t, rc.rawHeader(prov, acc, url), payload, acc.key))
}

// rawEAB is the externalAccountBinding of RFC 8555 section 7.3.4: an HS256
// JWS over the JWK of accountKey, keyed by hmacKey.
func rawEAB(t *testing.T, kid string, hmacKey []byte, url string, jwk json.RawMessage) rawFlat {
	t.Helper()
	ph := rawMarshal(t, map[string]any{"alg": "HS256", "kid": kid, "url": url})
	f := rawFlat{Protected: rawB64(ph), Payload: rawB64(jwk)}
	m := hmac.New(sha256.New, hmacKey)
	m.Write([]byte(f.Protected + "." + f.Payload))
	f.Signature = rawB64(m.Sum(nil))
	return f
}

// rawRegister creates an account (with an EAB when eab is non-nil).
func (rc *rawClient) rawRegister(prov string, eab *rawFlat) *rawAccount {
	rc.t.Helper()
	acc := &rawAccount{key: newKey(rc.t), prov: prov}
	payload := map[string]any{"termsOfServiceAgreed": true}
	if eab != nil {
		payload["externalAccountBinding"] = eab
	}
	r := rc.rawPost(rc.rawDir(prov).NewAccount, rc.rawSigned(prov, acc, rc.rawDir(prov).NewAccount, rawMarshal(rc.t, payload)))
	if r.status != http.StatusCreated {
		rc.t.Fatalf("new-account on %s: %s\n%s", prov, r, rawTail(rc.c.logs.String(), 20))
	}
	acc.url = r.header.Get("Location")
	if acc.url == "" {
		rc.t.Fatal("new-account: no Location")
	}
	return acc
}

// rawRegisterWorker binds a new account on "workers" with a join token.
func (rc *rawClient) rawRegisterWorker(worker string) *rawAccount {
	rc.t.Helper()
	tok := rc.c.token(worker)
	key := newKey(rc.t)
	u := rc.rawDir("workers").NewAccount
	eab := rawEAB(rc.t, tok.KID, tok.HMACKey, u, rawJWK(rc.t, key))
	acc := &rawAccount{key: key, prov: "workers"}
	payload := rawMarshal(rc.t, map[string]any{"termsOfServiceAgreed": true, "externalAccountBinding": eab})
	r := rc.rawPost(u, rc.rawSigned("workers", acc, u, payload))
	if r.status != http.StatusCreated {
		rc.t.Fatalf("new-account with EAB: %s\n%s", r, rawTail(rc.c.logs.String(), 20))
	}
	acc.url = r.header.Get("Location")
	return acc
}

// rawNewOrder orders one DNS name.
func (rc *rawClient) rawNewOrder(acc *rawAccount, name string) rawOrder {
	rc.t.Helper()
	u := rc.rawDir(acc.prov).NewOrder
	payload := rawMarshal(rc.t, map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": name}}})
	r := rc.rawPost(u, rc.rawSigned(acc.prov, acc, u, payload))
	if r.status != http.StatusCreated {
		rc.t.Fatalf("new-order %s on %s: %s\n%s", name, acc.prov, r, rawTail(rc.c.logs.String(), 20))
	}
	var o rawOrder
	if err := json.Unmarshal(r.body, &o); err != nil {
		rc.t.Fatal(err)
	}
	o.url = r.header.Get("Location")
	return o
}

// rawPostAsGet fetches a resource.
func (rc *rawClient) rawPostAsGet(acc *rawAccount, url string) rawResp {
	rc.t.Helper()
	return rc.rawPost(url, rc.rawSigned(acc.prov, acc, url, nil))
}

// rawTail returns the last n lines of s.
func rawTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// rawFailedLines returns the "acme request failed" lines (and any ERROR
// line) of a log excerpt.
func rawFailedLines(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "acme request failed") || strings.Contains(l, "level=ERROR") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// rawCSR is a base64url DER CSR for names with a fresh key.
func rawCSR(t *testing.T, names ...string) string {
	t.Helper()
	return rawB64(csrFor(t, newKey(t), "", names, nil).Raw)
}

// rawForeignCert is a self-signed certificate this CA never issued.
func rawForeignCert(t *testing.T) []byte {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(4242424242),
		Subject:      pkix.Name{CommonName: "foreign.localhost"},
		DNSNames:     []string{"foreign.localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// rawCase is one malformed request.
type rawCase struct {
	name string
	do   func(t *testing.T) rawResp
	// types lists the acceptable problem types (without the urn prefix);
	// empty accepts any ACME problem type. The first one is what RFC 8555
	// names, the others are what smallstep answers instead and is accepted.
	types []string
	// status, when set, is the exact status wanted; otherwise any 4xx.
	status int
	// noProblem: a method error answered by the router; any 4xx will do.
	noProblem bool
	// head: a HEAD request, whose answer has no body; only the status and
	// the Content-Type are checked.
	head bool
}

func TestMalformedRequests(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()
	rc := newRawClient(t, c)

	adhoc := rc.rawDir("adhoc")
	workers := rc.rawDir("workers")

	// Valid baseline: two adhoc accounts, two bound worker accounts, a
	// pending adhoc order and a ready worker order.
	accA := rc.rawRegister("adhoc", nil)
	accB := rc.rawRegister("adhoc", nil)
	wA := rc.rawRegisterWorker("api")
	wB := rc.rawRegisterWorker("db")
	pending := rc.rawNewOrder(accA, "malformed.localhost")
	if pending.Status != "pending" || len(pending.Authorizations) != 1 {
		t.Fatalf("adhoc order: %+v", pending)
	}
	ready := rc.rawNewOrder(wA, "api.workers.crank.internal")
	if ready.Status != "ready" {
		t.Fatalf("worker order: %+v", ready)
	}
	r := rc.rawPostAsGet(accA, pending.Authorizations[0])
	var authz struct {
		Challenges []struct {
			URL string `json:"url"`
		} `json:"challenges"`
	}
	if r.status != http.StatusOK || json.Unmarshal(r.body, &authz) != nil || len(authz.Challenges) == 0 {
		t.Fatalf("authz: %s", r)
	}
	chURL := authz.Challenges[0].URL
	if r := rc.rawPostAsGet(wB, ready.url); r.status < 400 {
		t.Fatalf("a worker account read another's order: %s", r)
	}

	base := c.url + "/acme/adhoc/"
	newOrderPayload := rawMarshal(t, map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": "malformed.localhost"}}})
	// signedNewOrder is a valid new-order body of accA.
	signedNewOrder := func(t *testing.T) []byte { return rc.rawSigned("adhoc", accA, adhoc.NewOrder, newOrderPayload) }
	// hdr is accA's usual header for a new-order.
	hdr := func(t *testing.T) map[string]any { return rc.rawHeader("adhoc", accA, adhoc.NewOrder) }
	postFlat := func(u string, f rawFlat) rawResp { return rc.rawPost(u, rawMarshal(t, f)) }
	newOrder := func(payload any) func(t *testing.T) rawResp {
		return func(t *testing.T) rawResp {
			var b []byte
			if s, ok := payload.(string); ok {
				b = []byte(s)
			} else {
				b = rawMarshal(t, payload)
			}
			return rc.rawPost(adhoc.NewOrder, rc.rawSigned("adhoc", accA, adhoc.NewOrder, b))
		}
	}
	// newAccount posts a new-account request of a fresh key on prov with the
	// given payload (a string is sent verbatim).
	newAccount := func(prov string, payload func(key *ecdsa.PrivateKey) any) func(t *testing.T) rawResp {
		return func(t *testing.T) rawResp {
			acc := &rawAccount{key: newKey(t), prov: prov}
			u := rc.rawDir(prov).NewAccount
			p := payload(acc.key)
			var b []byte
			if s, ok := p.(string); ok {
				b = []byte(s)
			} else {
				b = rawMarshal(t, p)
			}
			return rc.rawPost(u, rc.rawSigned(prov, acc, u, b))
		}
	}
	finalize := func(acc *rawAccount, o rawOrder, csr string) func(t *testing.T) rawResp {
		return func(t *testing.T) rawResp {
			return rc.rawPost(o.Finalize, rc.rawSigned(acc.prov, acc, o.Finalize, rawMarshal(t, map[string]string{"csr": csr})))
		}
	}
	revoke := func(payload any) func(t *testing.T) rawResp {
		return func(t *testing.T) rawResp {
			var b []byte
			if s, ok := payload.(string); ok {
				b = []byte(s)
			} else {
				b = rawMarshal(t, payload)
			}
			return rc.rawPost(adhoc.RevokeCert, rc.rawSigned("adhoc", accA, adhoc.RevokeCert, b))
		}
	}

	cases := []rawCase{
		// Transport and JWS framing.
		{name: "content-type application/json", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			return rc.rawDo(http.MethodPost, adhoc.NewOrder, "application/json", signedNewOrder(t))
		}},
		{name: "content-type missing", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			return rc.rawDo(http.MethodPost, adhoc.NewOrder, "", signedNewOrder(t))
		}},
		{name: "body not JSON", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			return rc.rawPost(adhoc.NewOrder, []byte("this is not json"))
		}},
		{name: "body a JSON array", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			return rc.rawPost(adhoc.NewOrder, []byte(`[{"protected":"e30","payload":"","signature":""}]`))
		}},
		{name: "body a JSON string", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			return rc.rawPost(adhoc.NewOrder, []byte(`"eyJhbGciOiJFUzI1NiJ9.e30.AAAA"`))
		}},
		{name: "empty body", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			return rc.rawPost(adhoc.NewOrder, nil)
		}},
		{name: "empty JSON object", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			return rc.rawPost(adhoc.NewOrder, []byte(`{}`))
		}},
		{name: "two signatures", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			f1 := rawSign(t, hdr(t), newOrderPayload, accA.key)
			f2 := rawSign(t, hdr(t), newOrderPayload, accA.key)
			body := rawMarshal(t, map[string]any{
				"payload": f1.Payload,
				"signatures": []map[string]string{
					{"protected": f1.Protected, "signature": f1.Signature},
					{"protected": f2.Protected, "signature": f2.Signature},
				},
			})
			return rc.rawPost(adhoc.NewOrder, body)
		}},
		{name: "general serialization with no signature", types: []string{"malformed", "badSignatureAlgorithm"}, do: func(t *testing.T) rawResp {
			return rc.rawPost(adhoc.NewOrder, rawMarshal(t, map[string]any{"payload": rawB64(newOrderPayload), "signatures": []any{}}))
		}},
		{name: "compact serialization", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			f := rawSign(t, hdr(t), newOrderPayload, accA.key)
			return rc.rawPost(adhoc.NewOrder, []byte(f.Protected+"."+f.Payload+"."+f.Signature))
		}},
		{name: "unprotected header present", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			f := rawSign(t, hdr(t), newOrderPayload, accA.key)
			f.Header = map[string]any{"foo": "bar"}
			return postFlat(adhoc.NewOrder, f)
		}},
		{name: "unprotected header carries the nonce", types: []string{"malformed", "badNonce"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			n := h["nonce"]
			delete(h, "nonce")
			f := rawSign(t, h, newOrderPayload, accA.key)
			f.Header = map[string]any{"nonce": n}
			return postFlat(adhoc.NewOrder, f)
		}},
		{name: "protected header not JSON", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			f := rawSign(t, hdr(t), newOrderPayload, accA.key)
			f.Protected = rawB64([]byte("not json"))
			return postFlat(adhoc.NewOrder, f)
		}},
		{name: "payload not base64url", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			f := rawSign(t, hdr(t), newOrderPayload, accA.key)
			f.Payload = "!!!not base64!!!"
			return postFlat(adhoc.NewOrder, f)
		}},

		// Nonces.
		{name: "missing nonce", types: []string{"badNonce"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			delete(h, "nonce")
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, accA.key))
		}},
		{name: "reused nonce", types: []string{"badNonce"}, do: func(t *testing.T) rawResp {
			h := rc.rawHeader("adhoc", accA, accA.url)
			if r := postFlat(accA.url, rawSign(t, h, nil, accA.key)); r.status != http.StatusOK {
				t.Fatalf("first use of the nonce: %s", r)
			}
			return postFlat(accA.url, rawSign(t, h, nil, accA.key))
		}},
		{name: "made-up nonce", types: []string{"badNonce"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			h["nonce"] = "bm90LWEtcmVhbC1ub25jZQ"
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, accA.key))
		}},
		{name: "nonce not a string", types: []string{"badNonce", "malformed"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			h["nonce"] = 12345
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, accA.key))
		}},

		// url, jwk and kid.
		{name: "url header differs from request URL", types: []string{"unauthorized", "malformed"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			h["url"] = adhoc.RevokeCert
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, accA.key))
		}},
		{name: "url header missing", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			delete(h, "url")
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, accA.key))
		}},
		{name: "url header not a string", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			h["url"] = []string{adhoc.NewOrder}
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, accA.key))
		}},
		{name: "both jwk and kid", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			h["jwk"] = rawJWK(t, accA.key)
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, accA.key))
		}},
		{name: "neither jwk nor kid", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			delete(h, "kid")
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, accA.key))
		}},
		{name: "jwk on a kid-only endpoint", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			delete(h, "kid")
			h["jwk"] = rawJWK(t, accA.key)
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, accA.key))
		}},
		{name: "kid on new-account", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			h := rc.rawHeader("adhoc", accA, adhoc.NewAccount)
			return postFlat(adhoc.NewAccount, rawSign(t, h, rawMarshal(t, map[string]any{"termsOfServiceAgreed": true}), accA.key))
		}},
		{name: "jwk that is not a key", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			key := newKey(t)
			h := map[string]any{"alg": "ES256", "nonce": rc.rawNonce("adhoc"), "url": adhoc.NewAccount, "jwk": map[string]string{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}}
			return postFlat(adhoc.NewAccount, rawSign(t, h, []byte(`{"termsOfServiceAgreed":true}`), key))
		}},

		// Algorithms and signatures.
		{name: "alg none", types: []string{"badSignatureAlgorithm"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			h["alg"] = "none"
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, nil))
		}},
		{name: "alg HS256 on a normal request", types: []string{"badSignatureAlgorithm"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			h["alg"] = "HS256"
			f := rawSign(t, h, newOrderPayload, nil)
			m := hmac.New(sha256.New, []byte("secret"))
			m.Write([]byte(f.Protected + "." + f.Payload))
			f.Signature = rawB64(m.Sum(nil))
			return postFlat(adhoc.NewOrder, f)
		}},
		{name: "alg missing", types: []string{"badSignatureAlgorithm", "malformed"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			delete(h, "alg")
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, accA.key))
		}},
		{name: "alg RS256 with an embedded EC jwk", types: []string{"badSignatureAlgorithm", "malformed"}, do: func(t *testing.T) rawResp {
			key := newKey(t)
			h := map[string]any{"alg": "RS256", "nonce": rc.rawNonce("adhoc"), "url": adhoc.NewAccount, "jwk": rawJWK(t, key)}
			return postFlat(adhoc.NewAccount, rawSign(t, h, []byte(`{"termsOfServiceAgreed":true}`), key))
		}},
		{name: "alg RS256 with an EC account key (kid)", types: []string{"badSignatureAlgorithm", "malformed"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			h["alg"] = "RS256"
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, accA.key))
		}},
		{name: "alg ES384 with a P-256 key", types: []string{"badSignatureAlgorithm", "malformed"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			h["alg"] = "ES384"
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, accA.key))
		}},
		{name: "signature does not verify (flipped byte)", types: []string{"malformed", "unauthorized"}, do: func(t *testing.T) rawResp {
			f := rawSign(t, hdr(t), newOrderPayload, accA.key)
			sig, _ := base64.RawURLEncoding.DecodeString(f.Signature)
			sig[10] ^= 0xff
			f.Signature = rawB64(sig)
			return postFlat(adhoc.NewOrder, f)
		}},
		{name: "signature by another key", types: []string{"malformed", "unauthorized"}, do: func(t *testing.T) rawResp {
			return postFlat(adhoc.NewOrder, rawSign(t, hdr(t), newOrderPayload, accB.key))
		}},
		{name: "signature truncated", types: []string{"malformed", "unauthorized"}, do: func(t *testing.T) rawResp {
			f := rawSign(t, hdr(t), newOrderPayload, accA.key)
			f.Signature = f.Signature[:20]
			return postFlat(adhoc.NewOrder, f)
		}},
		{name: "signature empty", types: []string{"malformed", "unauthorized"}, do: func(t *testing.T) rawResp {
			f := rawSign(t, hdr(t), newOrderPayload, accA.key)
			f.Signature = ""
			return postFlat(adhoc.NewOrder, f)
		}},

		// Accounts.
		{name: "kid of an unknown account", types: []string{"accountDoesNotExist"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			h["kid"] = base + "account/doesnotexist"
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, accA.key))
		}},
		{name: "kid of an account on another provisioner", types: []string{"unauthorized", "accountDoesNotExist"}, do: func(t *testing.T) rawResp {
			h := rc.rawHeader("adhoc", wA, adhoc.NewOrder)
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, wA.key))
		}},
		{name: "kid not a URL", types: []string{"accountDoesNotExist", "malformed"}, do: func(t *testing.T) rawResp {
			h := hdr(t)
			h["kid"] = "!!"
			return postFlat(adhoc.NewOrder, rawSign(t, h, newOrderPayload, accA.key))
		}},
		{name: "new-account payload a JSON array", types: []string{"malformed"}, do: newAccount("adhoc", func(*ecdsa.PrivateKey) any { return `[1,2,3]` })},
		{name: "new-account payload a JSON string", types: []string{"malformed"}, do: newAccount("adhoc", func(*ecdsa.PrivateKey) any { return `"hello"` })},
		{name: "new-account payload not JSON", types: []string{"malformed"}, do: newAccount("adhoc", func(*ecdsa.PrivateKey) any { return `{not json` })},
		{name: "new-account contact not an array", types: []string{"malformed"}, do: newAccount("adhoc", func(*ecdsa.PrivateKey) any {
			return map[string]any{"contact": "mailto:a@example.com"}
		})},
		{name: "new-account contact with a non-mailto URL", types: []string{"unsupportedContact", "invalidContact", "malformed"}, do: newAccount("adhoc", func(*ecdsa.PrivateKey) any {
			return map[string]any{"termsOfServiceAgreed": true, "contact": []string{"tel:+15555550100"}}
		})},
		{name: "new-account contact an empty string", types: []string{"invalidContact", "malformed"}, do: newAccount("adhoc", func(*ecdsa.PrivateKey) any {
			return map[string]any{"termsOfServiceAgreed": true, "contact": []string{""}}
		})},
		{name: "new-account onlyReturnExisting for an unknown key", types: []string{"accountDoesNotExist"}, do: newAccount("adhoc", func(*ecdsa.PrivateKey) any {
			return map[string]any{"onlyReturnExisting": true}
		})},
		{name: "new-account on workers without EAB", types: []string{"externalAccountRequired"}, do: newAccount("workers", func(*ecdsa.PrivateKey) any {
			return map[string]any{"termsOfServiceAgreed": true}
		})},
		{name: "EAB a string, not a JWS", types: []string{"malformed"}, do: newAccount("workers", func(*ecdsa.PrivateKey) any {
			return map[string]any{"termsOfServiceAgreed": true, "externalAccountBinding": "not a jws"}
		})},
		{name: "EAB an object that is not a JWS", types: []string{"malformed"}, do: newAccount("workers", func(*ecdsa.PrivateKey) any {
			return map[string]any{"termsOfServiceAgreed": true, "externalAccountBinding": map[string]string{"protected": "!!", "payload": "!!", "signature": "!!"}}
		})},
		{name: "EAB an empty object", types: []string{"malformed"}, do: newAccount("workers", func(*ecdsa.PrivateKey) any {
			return map[string]any{"termsOfServiceAgreed": true, "externalAccountBinding": map[string]string{}}
		})},
		{name: "EAB with an unknown kid", types: []string{"unauthorized"}, do: newAccount("workers", func(key *ecdsa.PrivateKey) any {
			return map[string]any{"termsOfServiceAgreed": true, "externalAccountBinding": rawEAB(t, "no-such-kid", []byte("0123456789abcdef0123456789abcdef"), workers.NewAccount, rawJWK(t, key))}
		})},
		{name: "EAB signed with the wrong key", types: []string{"unauthorized"}, do: newAccount("workers", func(key *ecdsa.PrivateKey) any {
			tok := c.token("wrongkey")
			return map[string]any{"termsOfServiceAgreed": true, "externalAccountBinding": rawEAB(t, tok.KID, []byte("0123456789abcdef0123456789abcdef"), workers.NewAccount, rawJWK(t, key))}
		})},
		{name: "EAB over a different JWK than the outer one", types: []string{"unauthorized", "malformed"}, do: newAccount("workers", func(*ecdsa.PrivateKey) any {
			tok := c.token("otherjwk")
			return map[string]any{"termsOfServiceAgreed": true, "externalAccountBinding": rawEAB(t, tok.KID, tok.HMACKey, workers.NewAccount, rawJWK(t, newKey(t)))}
		})},
		{name: "EAB payload not a JWK", types: []string{"malformed", "unauthorized"}, do: newAccount("workers", func(*ecdsa.PrivateKey) any {
			tok := c.token("notajwk")
			return map[string]any{"termsOfServiceAgreed": true, "externalAccountBinding": rawEAB(t, tok.KID, tok.HMACKey, workers.NewAccount, json.RawMessage(`"hello"`))}
		})},
		{name: "EAB url differs from the outer url", types: []string{"malformed", "unauthorized"}, do: newAccount("workers", func(key *ecdsa.PrivateKey) any {
			tok := c.token("eaburl")
			return map[string]any{"termsOfServiceAgreed": true, "externalAccountBinding": rawEAB(t, tok.KID, tok.HMACKey, workers.NewOrder, rawJWK(t, key))}
		})},

		// New orders.
		{name: "new-order without identifiers", types: []string{"malformed"}, do: newOrder(map[string]any{})},
		{name: "new-order with an empty identifiers array", types: []string{"malformed"}, do: newOrder(map[string]any{"identifiers": []any{}})},
		{name: "new-order identifiers not an array", types: []string{"malformed"}, do: newOrder(map[string]any{"identifiers": "malformed.localhost"})},
		{name: "new-order payload a JSON array", types: []string{"malformed"}, do: newOrder(`[]`)},
		{name: "new-order identifier type foo", types: []string{"unsupportedIdentifier", "rejectedIdentifier", "malformed"}, do: newOrder(map[string]any{
			"identifiers": []map[string]string{{"type": "foo", "value": "malformed.localhost"}},
		})},
		{name: "new-order identifier value empty", types: []string{"rejectedIdentifier", "malformed"}, do: newOrder(map[string]any{
			"identifiers": []map[string]string{{"type": "dns", "value": ""}},
		})},
		{name: "new-order ip identifier not an IP", types: []string{"rejectedIdentifier", "malformed"}, do: newOrder(map[string]any{
			"identifiers": []map[string]string{{"type": "ip", "value": "not-an-ip"}},
		})},
		{name: "new-order 300-character DNS name", types: []string{"rejectedIdentifier", "malformed"}, do: newOrder(map[string]any{
			"identifiers": []map[string]string{{"type": "dns", "value": strings.Repeat("a", 290) + ".localhost"}},
		})},
		{name: "new-order 300-character DNS name of short labels", types: []string{"rejectedIdentifier", "malformed"}, do: newOrder(map[string]any{
			"identifiers": []map[string]string{{"type": "dns", "value": strings.Repeat("abcdefghi.", 29) + "localhost"}},
		})},
		{name: "new-order DNS name with a space", types: []string{"rejectedIdentifier", "malformed"}, do: newOrder(map[string]any{
			"identifiers": []map[string]string{{"type": "dns", "value": "bad name.localhost"}},
		})},
		{name: "new-order foreign name on workers", types: []string{"rejectedIdentifier", "unauthorized"}, do: func(t *testing.T) rawResp {
			p := rawMarshal(t, map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": "db.workers.crank.internal"}}})
			return rc.rawPost(workers.NewOrder, rc.rawSigned("workers", wA, workers.NewOrder, p))
		}},
		{name: "new-order notAfter before notBefore", types: []string{"malformed"}, do: newOrder(map[string]any{
			"identifiers": []map[string]string{{"type": "dns", "value": "malformed.localhost"}},
			"notBefore":   time.Now().Add(2 * time.Hour).UTC().Format(time.RFC3339),
			"notAfter":    time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
		})},
		{name: "new-order notBefore not a date", types: []string{"malformed"}, do: newOrder(map[string]any{
			"identifiers": []map[string]string{{"type": "dns", "value": "malformed.localhost"}},
			"notBefore":   "yesterday",
		})},
		{name: "new-order notAfter a number", types: []string{"malformed"}, do: newOrder(map[string]any{
			"identifiers": []map[string]string{{"type": "dns", "value": "malformed.localhost"}},
			"notAfter":    1700000000,
		})},

		// Resources.
		{name: "POST-as-GET unknown order", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			return rc.rawPostAsGet(accA, base+"order/doesnotexist")
		}},
		{name: "POST-as-GET unknown authz", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			return rc.rawPostAsGet(accA, base+"authz/doesnotexist")
		}},
		{name: "POST-as-GET unknown challenge", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			return rc.rawPostAsGet(accA, base+"challenge/doesnotexist/doesnotexist")
		}},
		{name: "POST-as-GET unknown certificate", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			return rc.rawPostAsGet(accA, base+"certificate/doesnotexist")
		}},
		{name: "POST-as-GET another account's order", types: []string{"unauthorized"}, do: func(t *testing.T) rawResp {
			return rc.rawPostAsGet(accB, pending.url)
		}},
		{name: "POST to another account's challenge", types: []string{"unauthorized"}, do: func(t *testing.T) rawResp {
			return rc.rawPost(chURL, rc.rawSigned("adhoc", accB, chURL, []byte(`{}`)))
		}},
		{name: "POST-as-GET with a non-empty payload", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			return rc.rawPost(pending.url, rc.rawSigned("adhoc", accA, pending.url, []byte(`{"status":"valid"}`)))
		}},
		{name: "POST-as-GET another account's URL", types: []string{"unauthorized"}, do: func(t *testing.T) rawResp {
			return rc.rawPostAsGet(accA, accB.url)
		}},
		{name: "account update with a bad status", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			return rc.rawPost(accA.url, rc.rawSigned("adhoc", accA, accA.url, []byte(`{"status":"valid"}`)))
		}},
		{name: "plain GET of an order URL", noProblem: true, do: func(t *testing.T) rawResp {
			return rc.rawDo(http.MethodGet, pending.url, "", nil)
		}},
		{name: "plain GET of new-order", noProblem: true, do: func(t *testing.T) rawResp {
			return rc.rawDo(http.MethodGet, adhoc.NewOrder, "", nil)
		}},
		{name: "PUT to new-account", noProblem: true, do: func(t *testing.T) rawResp {
			return rc.rawDo(http.MethodPut, adhoc.NewAccount, "application/jose+json", []byte(`{}`))
		}},

		// Finalize.
		{name: "finalize csr not base64", types: []string{"malformed", "badCSR"}, do: finalize(wA, ready, "!!! not base64 !!!")},
		{name: "finalize csr base64 of garbage", types: []string{"badCSR", "malformed"}, do: finalize(wA, ready, rawB64([]byte("garbage, not a DER CSR")))},
		{name: "finalize csr missing", types: []string{"badCSR", "malformed"}, do: func(t *testing.T) rawResp {
			return rc.rawPost(ready.Finalize, rc.rawSigned("workers", wA, ready.Finalize, []byte(`{}`)))
		}},
		{name: "finalize payload a JSON array", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			return rc.rawPost(ready.Finalize, rc.rawSigned("workers", wA, ready.Finalize, []byte(`[]`)))
		}},
		{name: "finalize csr for other names than the order", types: []string{"badCSR"}, do: finalize(wA, ready, rawCSR(t, "db.workers.crank.internal"))},
		{name: "finalize csr with the account key", types: []string{"badCSR"}, do: func(t *testing.T) rawResp {
			csr := rawB64(csrFor(t, wA.key, "", []string{"api.workers.crank.internal"}, nil).Raw)
			return finalize(wA, ready, csr)(t)
		}},
		{name: "finalize an order that is not ready", types: []string{"orderNotReady"}, do: finalize(accA, pending, rawCSR(t, "malformed.localhost"))},
		{name: "finalize someone else's order (adhoc)", types: []string{"unauthorized"}, do: finalize(accB, pending, rawCSR(t, "malformed.localhost"))},
		{name: "finalize someone else's order (workers)", types: []string{"unauthorized"}, do: finalize(wB, ready, rawCSR(t, "api.workers.crank.internal"))},
		{name: "finalize an unknown order", types: []string{"malformed"}, do: func(t *testing.T) rawResp {
			u := base + "order/doesnotexist/finalize"
			return rc.rawPost(u, rc.rawSigned("adhoc", accA, u, rawMarshal(t, map[string]string{"csr": rawCSR(t, "malformed.localhost")})))
		}},

		// Revocation.
		{name: "revokeCert garbage certificate", types: []string{"malformed"}, do: revoke(map[string]any{"certificate": "!!garbage!!"})},
		{name: "revokeCert base64 of garbage", types: []string{"malformed"}, do: revoke(map[string]any{"certificate": rawB64([]byte("garbage"))})},
		{name: "revokeCert certificate not issued by this CA", types: []string{"malformed", "unauthorized"}, do: revoke(map[string]any{"certificate": rawB64(rawForeignCert(t))})},
		{name: "revokeCert foreign certificate signed by its own key (jwk)", types: []string{"malformed", "unauthorized"}, do: func(t *testing.T) rawResp {
			key := newKey(t)
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(77), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"x.localhost"}}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
			if err != nil {
				t.Fatal(err)
			}
			acc := &rawAccount{key: key, prov: "adhoc"}
			return rc.rawPost(adhoc.RevokeCert, rc.rawSigned("adhoc", acc, adhoc.RevokeCert, rawMarshal(t, map[string]any{"certificate": rawB64(der)})))
		}},
		{name: "revokeCert payload a JSON array", types: []string{"malformed"}, do: revoke(`[]`)},
		{name: "revokeCert payload empty object", types: []string{"malformed"}, do: revoke(`{}`)},

		// Provisioners.
		{name: "unknown provisioner directory", do: func(t *testing.T) rawResp {
			return rc.rawDo(http.MethodGet, c.directory("nope"), "", nil)
		}},
		{name: "unknown provisioner new-nonce (HEAD)", head: true, do: func(t *testing.T) rawResp {
			return rc.rawDo(http.MethodHead, c.url+"/acme/nope/new-nonce", "", nil)
		}},
		{name: "unknown provisioner new-order", do: func(t *testing.T) rawResp {
			u := c.url + "/acme/nope/new-order"
			return rc.rawPost(u, rc.rawSigned("adhoc", accA, u, newOrderPayload))
		}},
		{name: "provisioner name with an escaped slash", do: func(t *testing.T) rawResp {
			return rc.rawDo(http.MethodGet, c.url+"/acme/ad%2Fhoc/directory", "", nil)
		}},

		// Size.
		{name: "oversized body (1 MiB) on new-order", types: []string{"malformed"}, status: http.StatusRequestEntityTooLarge, do: func(t *testing.T) rawResp {
			f := rawSign(t, hdr(t), bytes.Repeat([]byte("a"), 1<<20), accA.key)
			return postFlat(adhoc.NewOrder, f)
		}},
		{name: "oversized body (1 MiB) on new-account (adhoc)", types: []string{"malformed"}, status: http.StatusRequestEntityTooLarge, do: newAccount("adhoc", func(*ecdsa.PrivateKey) any {
			return `{"pad":"` + strings.Repeat("a", 1<<20) + `"}`
		})},
		{name: "oversized body (1 MiB) on revokeCert", types: []string{"malformed"}, status: http.StatusRequestEntityTooLarge, do: revoke(`{"certificate":"` + strings.Repeat("A", 1<<20) + `"}`)},
		{name: "oversized body (1 MiB) on new-account (workers)", types: []string{"malformed"}, status: http.StatusRequestEntityTooLarge, do: newAccount("workers", func(*ecdsa.PrivateKey) any {
			return `{"pad":"` + strings.Repeat("a", 1<<20) + `"}`
		})},
		{name: "oversized body (1 MiB) on finalize", types: []string{"malformed"}, status: http.StatusRequestEntityTooLarge, do: func(t *testing.T) rawResp {
			return rc.rawPost(ready.Finalize, rc.rawSigned("workers", wA, ready.Finalize, []byte(`{"csr":"`+strings.Repeat("A", 1<<20)+`"}`)))
		}},
	}

	type outcome struct {
		name   string
		status int
		typ    string
		ok     bool
	}
	var outcomes []outcome
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			logStart := len(c.logs.String())
			resp := tc.do(t)
			o := outcome{name: tc.name, status: resp.status}
			defer func() {
				o.ok = !t.Failed()
				outcomes = append(outcomes, o)
			}()
			fail := func(format string, args ...any) {
				t.Helper()
				t.Errorf("%s\nresponse: %s\nserver log:\n%s", fmt.Sprintf(format, args...), resp, rawFailedLines(c.logs.String()[logStart:]))
			}
			if resp.status < 400 || resp.status > 499 {
				fail("status %d, want 4xx", resp.status)
			}
			if tc.status != 0 && resp.status != tc.status && resp.status >= 400 && resp.status < 500 {
				t.Logf("note: status %d, RFC-preferred %d (accepted)", resp.status, tc.status)
			}
			if tc.noProblem {
				o.typ = "(" + resp.ct + ")"
				return
			}
			if !strings.HasPrefix(resp.ct, "application/problem+json") {
				fail("Content-Type %q, want application/problem+json", resp.ct)
			}
			if tc.head {
				o.typ = "(" + resp.ct + ")"
				return
			}
			var p rawProblem
			if err := json.Unmarshal(resp.body, &p); err != nil {
				fail("body is not a problem document: %v", err)
				return
			}
			o.typ = strings.TrimPrefix(p.Type, rawProblemPrefix)
			if !strings.HasPrefix(p.Type, rawProblemPrefix) {
				fail("problem type %q lacks the %s prefix", p.Type, rawProblemPrefix)
			}
			if p.Detail == "" {
				fail("problem has no detail")
			}
			if len(tc.types) > 0 {
				found := false
				for _, want := range tc.types {
					if o.typ == want {
						found = true
					}
				}
				switch {
				case !found:
					fail("problem type %s, want one of %v", o.typ, tc.types)
				case o.typ != tc.types[0]:
					t.Logf("note: type %s accepted instead of %s", o.typ, tc.types[0])
				}
			}
			t.Logf("%d %s: %s", resp.status, o.typ, p.Detail)
		})
	}

	// The server is still up and answering.
	h := rc.rawDo(http.MethodGet, c.url+"/health", "", nil)
	if h.status != http.StatusOK {
		t.Errorf("/health after the malformed requests: %s", h)
	}
	// A well-formed request still works.
	if r := rc.rawPostAsGet(accA, pending.url); r.status != http.StatusOK {
		t.Errorf("POST-as-GET of the order after the malformed requests: %s", r)
	}
	if errs := rawFailedLines(c.logs.String()); strings.Contains(errs, "level=ERROR") {
		var lines []string
		for _, l := range strings.Split(errs, "\n") {
			if strings.Contains(l, "level=ERROR") {
				lines = append(lines, l)
			}
		}
		t.Errorf("server logged errors (server faults):\n%s", strings.Join(lines, "\n"))
	}

	var sb strings.Builder
	for _, o := range outcomes {
		mark := "ok  "
		if !o.ok {
			mark = "FAIL"
		}
		fmt.Fprintf(&sb, "%s %3d %-24s %s\n", mark, o.status, o.typ, o.name)
	}
	t.Logf("summary:\n%s", sb.String())
}
