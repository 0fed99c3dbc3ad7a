package integration

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/challenge/http01"

	"github.com/crank-platform/crank-ca/config"
)

// The attacks of issue 7, each replayed as an outsider would: hand-built JWS
// requests over real HTTPS. Every one must be refused with the right 4xx
// problem document and leave no order or certificate behind.

// attack is one hostile request and the refusal it must get.
type attack struct {
	name   string
	do     func(t *testing.T) rawResp
	typ    string // problem type without the urn prefix
	status int    // exact status; 0 means any 4xx
}

// wantRefused checks that r is a 4xx problem document of type typ.
func wantRefused(t *testing.T, r rawResp, typ string, status int) rawProblem {
	t.Helper()
	var p rawProblem
	if r.status < 400 || r.status > 499 {
		t.Fatalf("status %d, want a 4xx refusal: %s", r.status, r)
	}
	if status != 0 && r.status != status {
		t.Errorf("status %d, want %d: %s", r.status, status, r)
	}
	if !strings.HasPrefix(r.ct, "application/problem+json") {
		t.Errorf("Content-Type %q, want a problem document", r.ct)
	}
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("not a problem document: %v: %s", err, r)
	}
	if got := strings.TrimPrefix(p.Type, rawProblemPrefix); got != typ {
		t.Errorf("problem type %s, want %s: %s", got, typ, p.Detail)
	}
	return p
}

// orderCount lists an account's orders through its "orders" URL.
func (rc *rawClient) orderCount(acc *rawAccount) int {
	rc.t.Helper()
	r := rc.rawPostAsGet(acc, acc.url)
	var a struct {
		Orders string `json:"orders"`
	}
	if r.status != http.StatusOK || json.Unmarshal(r.body, &a) != nil || a.Orders == "" {
		rc.t.Fatalf("account: %s", r)
	}
	r = rc.rawPostAsGet(acc, a.Orders)
	var list []string
	if r.status != http.StatusOK || json.Unmarshal(r.body, &list) != nil {
		rc.t.Fatalf("orders list: %s", r)
	}
	return len(list)
}

func ids(names ...string) []map[string]string {
	var out []map[string]string
	for _, n := range names {
		typ := "dns"
		if strings.ContainsAny(n, ":") || strings.Trim(n, "0123456789.") == "" {
			typ = "ip"
		}
		out = append(out, map[string]string{"type": typ, "value": n})
	}
	return out
}

func TestAttacksRefused(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()
	rc := newRawClient(t, c)
	adhocDir := rc.rawDir("adhoc")
	workersDir := rc.rawDir("workers")
	acc := rc.rawRegister("adhoc", nil)
	wAcc := rc.rawRegisterWorker("alpha")

	newOrder := func(a *rawAccount, payload string) func(t *testing.T) rawResp {
		return func(t *testing.T) rawResp {
			u := rc.rawDir(a.prov).NewOrder
			return rc.rawPost(u, rc.rawSigned(a.prov, a, u, []byte(payload)))
		}
	}
	js := func(v any) string { return string(rawMarshal(t, v)) }
	now := time.Now().UTC()

	attacks := []attack{
		// Policy bypass: the precheck could not decode "replaces": 1 and
		// let the order through; the names were checked nowhere else.
		{name: "replaces as a number with foreign names", typ: "malformed",
			do: newOrder(acc, js(map[string]any{"identifiers": ids("evil.example.com", "0.0.0.0"), "replaces": 1}))},
		{name: "replaces as an object", typ: "malformed",
			do: newOrder(acc, js(map[string]any{"identifiers": ids("evil.example.com"), "replaces": map[string]any{}}))},
		{name: "foreign host name", typ: "rejectedIdentifier", do: newOrder(acc, js(map[string]any{"identifiers": ids("evil.example.com")}))},
		{name: "0.0.0.0 as an IP", typ: "rejectedIdentifier", do: newOrder(acc, js(map[string]any{"identifiers": ids("0.0.0.0")}))},
		{name: "0.0.0.0 as a DNS name", typ: "rejectedIdentifier", do: newOrder(acc, js(map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": "0.0.0.0"}}}))},
		{name: "duplicate identifiers key, foreign last", typ: "malformed",
			do: newOrder(acc, `{"identifiers":[{"type":"dns","value":"ok.localhost"}],"identifiers":[{"type":"dns","value":"evil.example.com"}]}`)},
		{name: "identifiers key in another case", typ: "malformed",
			do: newOrder(acc, `{"identifiers":[{"type":"dns","value":"ok.localhost"}],"Identifiers":[{"type":"dns","value":"evil.example.com"}]}`)},
		{name: "duplicate value key inside an identifier", typ: "malformed",
			do: newOrder(acc, `{"identifiers":[{"type":"dns","value":"ok.localhost","value":"evil.example.com"}]}`)},
		{name: "unknown field", typ: "malformed", do: newOrder(acc, js(map[string]any{"identifiers": ids("ok.localhost"), "profile": "shortlived"}))},
		{name: "identifier with an extra field", typ: "malformed",
			do: newOrder(acc, `{"identifiers":[{"type":"dns","value":"ok.localhost","wildcard":true}]}`)},
		{name: "identifier type as a number", typ: "malformed", do: newOrder(acc, `{"identifiers":[{"type":1,"value":"ok.localhost"}]}`)},
		{name: "trailing data after the payload", typ: "malformed", do: newOrder(acc, `{"identifiers":[{"type":"dns","value":"ok.localhost"}]} {}`)},
		{name: "non-ASCII look-alike of a worker name", typ: "rejectedIdentifier",
			do: newOrder(acc, js(map[string]any{"identifiers": ids("alpha.wor\u212aers.crank.internal")}))},

		// Worker names from the ad-hoc directory.
		{name: "worker name on adhoc", typ: "rejectedIdentifier", do: newOrder(acc, js(map[string]any{"identifiers": ids("alpha.workers.crank.internal")}))},
		{name: "deeper worker namespace name on adhoc", typ: "rejectedIdentifier", do: newOrder(acc, js(map[string]any{"identifiers": ids("a.b.workers.crank.internal")}))},
		{name: "wildcard over the worker namespace on adhoc", typ: "rejectedIdentifier", do: newOrder(acc, js(map[string]any{"identifiers": ids("*.workers.crank.internal")}))},

		// Time.
		{name: "worker notBefore 300 days ahead", typ: "malformed", do: newOrder(wAcc, js(map[string]any{
			"identifiers": ids("alpha.workers.crank.internal"),
			"notBefore":   now.Add(300 * 24 * time.Hour).Format(time.RFC3339), "notAfter": now.Add(301 * 24 * time.Hour).Format(time.RFC3339),
		}))},
		{name: "worker notBefore 6 days back", typ: "malformed", do: newOrder(wAcc, js(map[string]any{
			"identifiers": ids("alpha.workers.crank.internal"),
			"notBefore":   now.Add(-6 * 24 * time.Hour).Format(time.RFC3339), "notAfter": now.Add(time.Hour).Format(time.RFC3339),
		}))},
		{name: "adhoc notBefore 10 minutes ahead", typ: "malformed", do: newOrder(acc, js(map[string]any{
			"identifiers": ids("ok.localhost"), "notBefore": now.Add(10 * time.Minute).Format(time.RFC3339),
		}))},
		{name: "notAfter in the past", typ: "malformed", do: newOrder(acc, js(map[string]any{
			"identifiers": ids("ok.localhost"), "notAfter": now.Add(-time.Hour).Format(time.RFC3339),
		}))},

		// Amplification: 4,500 identifiers in one unauthenticated-ish order.
		{name: "4500 identifiers", typ: "malformed", do: func(t *testing.T) rawResp {
			names := make([]string, 4500)
			for i := range names {
				names[i] = "n" + strconv.Itoa(i) + ".localhost"
			}
			return newOrder(acc, js(map[string]any{"identifiers": ids(names...)}))(t)
		}},
		{name: "101 identifiers", typ: "malformed", do: func(t *testing.T) rawResp {
			names := make([]string, 101)
			for i := range names {
				names[i] = "n" + strconv.Itoa(i) + ".localhost"
			}
			return newOrder(acc, js(map[string]any{"identifiers": ids(names...)}))(t)
		}},

		// Smaller items: plain GET of resources.
		{name: "plain GET of new-order", typ: "malformed", status: http.StatusMethodNotAllowed, do: func(t *testing.T) rawResp {
			return rc.rawDo(http.MethodGet, adhocDir.NewOrder, "", nil)
		}},
		{name: "plain GET of an account URL", typ: "malformed", status: http.StatusMethodNotAllowed, do: func(t *testing.T) rawResp {
			return rc.rawDo(http.MethodGet, acc.url, "", nil)
		}},
		{name: "PUT to a workers order URL", typ: "malformed", status: http.StatusMethodNotAllowed, do: func(t *testing.T) rawResp {
			return rc.rawDo(http.MethodPut, c.url+"/acme/workers/order/x", "application/jose+json", []byte(`{}`))
		}},
		{name: "new-account with an unknown field", typ: "malformed", do: func(t *testing.T) rawResp {
			a := &rawAccount{key: newKey(t), prov: "adhoc"}
			return rc.rawPost(adhocDir.NewAccount, rc.rawSigned("adhoc", a, adhocDir.NewAccount, []byte(`{"termsOfServiceAgreed":true,"agreement":"x"}`)))
		}},
		{name: "new-account with 5000 contacts", typ: "invalidContact", do: func(t *testing.T) rawResp {
			a := &rawAccount{key: newKey(t), prov: "adhoc"}
			contacts := make([]string, 5000)
			for i := range contacts {
				contacts[i] = "mailto:c" + strconv.Itoa(i) + "@example.com"
			}
			return rc.rawPost(adhocDir.NewAccount, rc.rawSigned("adhoc", a, adhocDir.NewAccount, rawMarshal(t, map[string]any{"contact": contacts})))
		}},
		{name: "account update with a 10 kB contact", typ: "invalidContact", do: func(t *testing.T) rawResp {
			return rc.rawPost(acc.url, rc.rawSigned("adhoc", acc, acc.url, rawMarshal(t, map[string]any{"contact": []string{"mailto:" + strings.Repeat("a", 10000) + "@example.com"}})))
		}},
		{name: "new-account with contact as a string", typ: "malformed", do: func(t *testing.T) rawResp {
			a := &rawAccount{key: newKey(t), prov: "workers"}
			return rc.rawPost(workersDir.NewAccount, rc.rawSigned("workers", a, workersDir.NewAccount, []byte(`{"contact":"mailto:a@b"}`)))
		}},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			p := wantRefused(t, a.do(t), a.typ, a.status)
			t.Logf("%s: %s", a.typ, p.Detail)
		})
	}
	if n := rc.orderCount(acc); n != 0 {
		t.Errorf("the adhoc account has %d orders after the attacks, want 0", n)
	}
	if n := rc.orderCount(wAcc); n != 0 {
		t.Errorf("the worker account has %d orders after the attacks, want 0", n)
	}

	// The same clients still get what they may have.
	if o := rc.rawNewOrder(acc, "ok.localhost"); o.Status != "pending" {
		t.Errorf("adhoc order after the attacks: %+v", o)
	}
	if o := rc.rawNewOrder(wAcc, "alpha.workers.crank.internal"); o.Status != "ready" {
		t.Errorf("worker order after the attacks: %+v", o)
	}
	if errs := rawFailedLines(c.logs.String()); strings.Contains(errs, "level=ERROR") {
		t.Errorf("server faults while refusing attacks:\n%s", errs)
	}

	// The audit stream tells tokens apart by a digest, not by a prefix
	// every token of the provisioner shares.
	rc.rawRegisterWorker("beta")
	kids := map[string]bool{}
	for _, l := range strings.Split(c.logs.String(), "\n") {
		if !strings.Contains(l, "account bound") {
			continue
		}
		_, kid, _ := strings.Cut(l, " kid=")
		kid, _, _ = strings.Cut(kid, " ")
		if !strings.HasPrefix(kid, "sha256:") {
			t.Errorf("audit line identifies the token by %q, want a sha256: digest: %s", kid, l)
		}
		kids[kid] = true
	}
	if len(kids) != 2 {
		t.Errorf("two tokens bound, audit shows %d distinct token digests: %v", len(kids), kids)
	}
}

// TestAttackWeakKeys: a CSR with a P-224 key was issued and RSA-1024 got a
// 500; both are badCSR now, and the order can still be finalized properly.
func TestAttackWeakKeys(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()
	rc := newRawClient(t, c)
	wAcc := rc.rawRegisterWorker("keys")
	o := rc.rawNewOrder(wAcc, "keys.workers.crank.internal")
	finalize := func(key crypto.Signer) rawResp {
		csr := rawB64(csrFor(t, key, "", []string{"keys.workers.crank.internal"}, nil).Raw)
		return rc.rawPost(o.Finalize, rc.rawSigned("workers", wAcc, o.Finalize, rawMarshal(t, map[string]string{"csr": csr})))
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		key  crypto.Signer
	}{{"P-224", p224}, {"P-521", p521}, {"RSA-1024", rsa1024}} {
		t.Run(tc.name, func(t *testing.T) {
			wantRefused(t, finalize(tc.key), "badCSR", 0)
		})
	}
	r := finalize(newKey(t))
	if r.status != http.StatusOK {
		t.Fatalf("finalize with P-256 after the refusals: %s\n%s", r, rawTail(c.logs.String(), 20))
	}
	if errs := rawFailedLines(c.logs.String()); strings.Contains(errs, "level=ERROR") {
		t.Errorf("server faults while refusing weak keys:\n%s", errs)
	}
}

// TestAttackLimits: pending orders per account and new accounts per client
// address are bounded, refused with rateLimited and Retry-After.
func TestAttackLimits(t *testing.T) {
	t.Parallel()
	c := newCA(t, func(cfg *config.Config) {
		adhoc(cfg).Limits = &config.Limits{MaxIdentifiersPerOrder: 100, MaxPendingOrdersPerAccount: 3, NewAccountsPerMinute: 4, NewOrdersPerMinute: 600}
	})
	c.start()
	rc := newRawClient(t, c)
	acc := rc.rawRegister("adhoc", nil)
	for i := range 3 {
		rc.rawNewOrder(acc, "p"+strconv.Itoa(i)+".localhost")
	}
	u := rc.rawDir("adhoc").NewOrder
	r := rc.rawPost(u, rc.rawSigned("adhoc", acc, u, rawMarshal(t, map[string]any{"identifiers": ids("p3.localhost")})))
	wantRefused(t, r, "rateLimited", http.StatusTooManyRequests)
	if r.header.Get("Retry-After") == "" {
		t.Error("pending-order refusal without Retry-After")
	}
	if n := rc.orderCount(acc); n != 3 {
		t.Errorf("%d orders, want 3", n)
	}

	// Accounts per address: one was made above; three more fit, the fifth not.
	for range 3 {
		rc.rawRegister("adhoc", nil)
	}
	a := &rawAccount{key: newKey(t), prov: "adhoc"}
	nu := rc.rawDir("adhoc").NewAccount
	r = rc.rawPost(nu, rc.rawSigned("adhoc", a, nu, []byte(`{"termsOfServiceAgreed":true}`)))
	wantRefused(t, r, "rateLimited", http.StatusTooManyRequests)
	ra, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 60 {
		t.Errorf("Retry-After %q, want 1-60 seconds", r.header.Get("Retry-After"))
	}
	// The limit is per provisioner: the workers directory is unaffected.
	rc.rawRegisterWorker("limits")
}

// TestAttackAdhocCSRWithSPIFFEURI: an ordinary ACME client with a valid
// http-01 authorization for a name it may have asks, in its CSR, for a
// worker's SPIFFE ID. The finalize is refused (badCSR) by the name policy.
func TestAttackAdhocCSRWithSPIFFEURI(t *testing.T) {
	t.Parallel()
	httpPort := freePort(t)
	c := newCA(t, func(cfg *config.Config) {
		adhoc(cfg).ValidationPorts = &config.ValidationPorts{HTTP01: httpPort, TLSALPN01: freePort(t)}
	})
	c.start()
	cl, u := c.newLego("adhoc", nil)
	reg, err := cl.Registration.Register(registrationOptions())
	if err != nil {
		t.Fatal(err)
	}
	u.reg = reg
	if err := cl.Challenge.SetHTTP01Provider(http01.NewProviderServer("127.0.0.1", strconv.Itoa(httpPort))); err != nil {
		t.Fatal(err)
	}
	spiffe, _ := url.Parse("spiffe://crank.internal/worker/alpha")
	csr := csrFor(t, newKey(t), "", []string{"localhost"}, nil, spiffe.String())
	_, err = cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: csr, Bundle: true})
	if err == nil {
		t.Fatal("a CSR with a worker's SPIFFE ID was certified by the adhoc provisioner")
	}
	wantProblem(t, err, "badCSR", http.StatusBadRequest)
	// The same client without the URI gets its certificate.
	res, err := cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: csrFor(t, newKey(t), "", []string{"localhost"}, nil), Bundle: true})
	if err != nil {
		t.Fatalf("plain CSR: %v", err)
	}
	if leaf := parseChain(t, res.Certificate)[0]; len(leaf.URIs) != 0 {
		t.Errorf("adhoc leaf has URIs %v", leaf.URIs)
	}
}

// TestAttackUnknownPaths: unknown ACME paths and methods answer problem
// documents, never chi's plain-text defaults.
func TestAttackUnknownPaths(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()
	rc := newRawClient(t, c)
	acc := rc.rawRegister("adhoc", nil)
	u := c.url + "/acme/adhoc/no-such-resource"
	wantRefused(t, rc.rawPost(u, rc.rawSigned("adhoc", acc, u, nil)), "malformed", http.StatusNotFound)
	wantRefused(t, rc.rawDo(http.MethodDelete, c.url+"/acme/adhoc/directory", "", nil), "malformed", http.StatusMethodNotAllowed)
	wantRefused(t, rc.rawDo(http.MethodPost, c.url+"/acme/adhoc/renewal-info/abc", "application/jose+json", []byte(`{}`)), "malformed", http.StatusMethodNotAllowed)
}

// TestOrderAfterListingNoPendingOrders: smallstep's own order listing
// leaves an index its next new-order cannot read once no order is pending,
// so one POST-as-GET of the orders URL broke the account with 500s. The
// listing is crank-ca's now; listing then ordering works.
func TestOrderAfterListingNoPendingOrders(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()
	rc := newRawClient(t, c)
	w := rc.rawRegisterWorker("lister")
	o := rc.rawNewOrder(w, "lister.workers.crank.internal")
	csr := rawB64(csrFor(t, newKey(t), "", []string{"lister.workers.crank.internal"}, nil).Raw)
	if r := rc.rawPost(o.Finalize, rc.rawSigned("workers", w, o.Finalize, rawMarshal(t, map[string]string{"csr": csr}))); r.status != http.StatusOK {
		t.Fatalf("finalize: %s", r)
	}
	for range 2 {
		if n := rc.orderCount(w); n != 0 {
			t.Fatalf("%d pending orders listed, want 0", n)
		}
		if o := rc.rawNewOrder(w, "lister.workers.crank.internal"); o.Status != "ready" {
			t.Fatalf("order after listing: %+v", o)
		}
		if n := rc.orderCount(w); n != 0 {
			t.Fatalf("a ready order is listed as pending (%d)", n)
		}
	}
}
