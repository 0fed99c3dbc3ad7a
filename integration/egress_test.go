package integration

import (
	"crypto"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/crank-platform/crank-ca/config"
)

// egressResponder is a client's http-01 responder on 127.0.0.1 that counts
// the requests it gets. Its behaviour is set once the challenge token is
// known.
type egressResponder struct {
	port int
	hits atomic.Int64
	mu   sync.Mutex
	h    http.HandlerFunc
}

func newEgressResponder(t *testing.T) *egressResponder {
	t.Helper()
	r := &egressResponder{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.hits.Add(1)
		r.mu.Lock()
		h := r.h
		r.mu.Unlock()
		if h == nil {
			http.NotFound(w, req)
			return
		}
		h(w, req)
	}))
	t.Cleanup(srv.Close)
	r.port = srv.Listener.Addr().(*net.TCPAddr).Port
	return r
}

func (r *egressResponder) set(h http.HandlerFunc) {
	r.mu.Lock()
	r.h = h
	r.mu.Unlock()
}

// egressChallenge is the http-01 challenge of a fresh adhoc order.
type egressChallenge struct {
	rc      *rawClient
	acc     *rawAccount
	authz   string
	url     string
	token   string
	keyAuth string
}

// egressOutcome is the authorization and its http-01 challenge once
// validation settled.
type egressOutcome struct {
	authzStatus string
	status      string
	err         json.RawMessage
}

type egressAuthz struct {
	Status     string `json:"status"`
	Challenges []struct {
		Type   string          `json:"type"`
		URL    string          `json:"url"`
		Token  string          `json:"token"`
		Status string          `json:"status"`
		Error  json.RawMessage `json:"error"`
	} `json:"challenges"`
}

// newEgressChallenge registers an account on adhoc and orders name.
func newEgressChallenge(t *testing.T, c *ca, name string) *egressChallenge {
	t.Helper()
	rc := newRawClient(t, c)
	acc := rc.rawRegister("adhoc", nil)
	o := rc.rawNewOrder(acc, name)
	if len(o.Authorizations) != 1 {
		t.Fatalf("order: %+v", o)
	}
	ch := &egressChallenge{rc: rc, acc: acc, authz: o.Authorizations[0]}
	az := ch.get(t)
	for _, x := range az.Challenges {
		if x.Type == "http-01" {
			ch.url, ch.token = x.URL, x.Token
		}
	}
	if ch.url == "" || ch.token == "" {
		t.Fatalf("no http-01 challenge in %+v", az)
	}
	jwk := jose.JSONWebKey{Key: &acc.key.PublicKey}
	thumb, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	ch.keyAuth = ch.token + "." + rawB64(thumb)
	return ch
}

func (ch *egressChallenge) get(t *testing.T) egressAuthz {
	t.Helper()
	r := ch.rc.rawPostAsGet(ch.acc, ch.authz)
	var az egressAuthz
	if r.status != http.StatusOK {
		t.Fatalf("authz: %s", r)
	}
	if err := json.Unmarshal(r.body, &az); err != nil {
		t.Fatalf("authz: %v: %s", err, r)
	}
	return az
}

// validate asks the CA to validate the challenge, then polls the
// authorization (at most 50 times, 100 ms apart) until the challenge is
// valid, invalid or carries an error.
func (ch *egressChallenge) validate(t *testing.T) egressOutcome {
	t.Helper()
	if r := ch.rc.rawPost(ch.url, ch.rc.rawSigned("adhoc", ch.acc, ch.url, []byte(`{}`))); r.status != http.StatusOK {
		t.Fatalf("challenge: %s", r)
	}
	for range 50 {
		az := ch.get(t)
		for _, x := range az.Challenges {
			if x.Type != "http-01" {
				continue
			}
			if x.Status == "valid" || x.Status == "invalid" || len(x.Error) > 0 || az.Status != "pending" {
				return egressOutcome{authzStatus: az.Status, status: x.Status, err: x.Error}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("challenge %s did not settle in 5s", ch.url)
	return egressOutcome{}
}

// redirectTo answers the challenge path with a 302 to location.
func redirectTo(location string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
			w.Header().Set("Location", location)
			w.WriteHeader(http.StatusFound)
			return
		}
		http.NotFound(w, r)
	}
}

// TestEgress drives real http-01 validations whose responder tries to make
// the CA connect where it must not, and checks that the CA refuses without
// sending a request there and that every refusal reads the same to the
// ACME client as a closed port.
func TestEgress(t *testing.T) {
	t.Parallel()

	// refused collects the challenge errors of the refusals, by case.
	var mu sync.Mutex
	refused := map[string]json.RawMessage{}
	record := func(t *testing.T, name string, out egressOutcome) {
		t.Helper()
		// A refused validation is final (RFC 8555 section 7.5.1): the
		// challenge and its authorization are invalid, so the client cannot
		// make the CA try again without a new order.
		if out.status != "invalid" || out.authzStatus != "invalid" {
			t.Fatalf("challenge %s, authz %s: want both invalid", out.status, out.authzStatus)
		}
		var p rawProblem
		if err := json.Unmarshal(out.err, &p); err != nil || p.Type != rawProblemPrefix+"connection" {
			t.Fatalf("challenge error %s (%v), want a connection problem", out.err, err)
		}
		mu.Lock()
		refused[name] = out.err
		mu.Unlock()
	}
	// defaultCA is the default configuration (adhoc allows 127.0.0.0/8, so
	// validation may dial loopback) with http-01 validation on port.
	defaultCA := func(t *testing.T, port int) *ca {
		t.Helper()
		c := newCA(t, func(cfg *config.Config) {
			adhoc(cfg).ValidationPorts = &config.ValidationPorts{HTTP01: port, TLSALPN01: freePort(t)}
		})
		c.start()
		return c
	}

	t.Run("cases", func(t *testing.T) {
		t.Run("redirect to a loopback high port reaches nothing", func(t *testing.T) {
			t.Parallel()
			resp, target := newEgressResponder(t), newEgressResponder(t)
			c := defaultCA(t, resp.port)
			ch := newEgressChallenge(t, c, "localhost")
			resp.set(redirectTo("http://127.0.0.1:" + strconv.Itoa(target.port) + "/latest/meta-data/"))
			record(t, "loopback high port", ch.validate(t))
			if n := target.hits.Load(); n != 0 {
				t.Errorf("the redirect target got %d requests from the CA", n)
			}
			if resp.hits.Load() == 0 {
				t.Errorf("the responder got no request: the test did not test anything")
			}
			// Retrying the failed challenge does not make the CA connect
			// again: the failure is final.
			before := resp.hits.Load()
			for range 3 {
				ch.rc.rawPost(ch.url, ch.rc.rawSigned("adhoc", ch.acc, ch.url, []byte(`{}`)))
			}
			if n := resp.hits.Load() - before; n != 0 {
				t.Errorf("3 retries of a failed challenge made the CA connect %d more times", n)
			}
		})

		for _, tc := range []struct{ name, location string }{
			{"redirect to cloud metadata", "http://169.254.169.254/latest/meta-data/"},
			{"redirect to cloud metadata on the validation port", "http://169.254.169.254:%d/latest/meta-data/"},
			{"redirect to a file URL", "file:///etc/passwd"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				resp := newEgressResponder(t)
				c := defaultCA(t, resp.port)
				ch := newEgressChallenge(t, c, "localhost")
				resp.set(redirectTo(strings.ReplaceAll(tc.location, "%d", strconv.Itoa(resp.port))))
				record(t, tc.name, ch.validate(t))
				if resp.hits.Load() == 0 {
					t.Errorf("the responder got no request: the test did not test anything")
				}
				if strings.Contains(tc.location, "%d") && !strings.Contains(c.logs.String(), "egress policy") {
					t.Errorf("the refusal was not the egress policy's:\n%s", rawTail(c.logs.String(), 20))
				}
			})
		}

		t.Run("open port answering 404", func(t *testing.T) {
			t.Parallel()
			resp := newEgressResponder(t)
			c := defaultCA(t, resp.port)
			ch := newEgressChallenge(t, c, "localhost")
			record(t, "open port 404", ch.validate(t))
		})

		t.Run("closed port", func(t *testing.T) {
			t.Parallel()
			c := defaultCA(t, freePort(t))
			ch := newEgressChallenge(t, c, "localhost")
			record(t, "closed port", ch.validate(t))
		})

		t.Run("loopback not allowed by the policy", func(t *testing.T) {
			t.Parallel()
			resp := newEgressResponder(t)
			c := newCA(t, func(cfg *config.Config) {
				p := adhoc(cfg)
				p.ValidationPorts = &config.ValidationPorts{HTTP01: resp.port, TLSALPN01: freePort(t)}
				p.Policy.AllowedIPRanges = nil
				p.Egress = nil
			})
			c.start()
			// "localhost" resolves to 127.0.0.1 through /etc/hosts (names
			// under .localhost need not resolve at all).
			ch := newEgressChallenge(t, c, "localhost")
			resp.set(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(ch.keyAuth)) })
			record(t, "loopback not allowed", ch.validate(t))
			if n := resp.hits.Load(); n != 0 {
				t.Errorf("the responder got %d requests although loopback is not allowed", n)
			}
			if !strings.Contains(c.logs.String(), "egress policy") {
				t.Errorf("the refusal was not the egress policy's:\n%s", rawTail(c.logs.String(), 20))
			}
		})

		t.Run("redirect to the CA itself", func(t *testing.T) {
			t.Parallel()
			resp := newEgressResponder(t)
			caPort := freePort(t)
			// The CA's own port is made the tls-alpn-01 validation port,
			// so only the own-address rule stands between a redirect and
			// the CA's API (loopback is allowed).
			c := newCA(t, func(cfg *config.Config) {
				cfg.Listen = "127.0.0.1:" + strconv.Itoa(caPort)
				adhoc(cfg).ValidationPorts = &config.ValidationPorts{HTTP01: resp.port, TLSALPN01: caPort}
			})
			c.url = "https://" + c.cfg.Listen // start listens there
			c.start()
			ch := newEgressChallenge(t, c, "localhost")
			resp.set(redirectTo("https://127.0.0.1:" + strconv.Itoa(caPort) + "/egress-canary"))
			record(t, "the CA itself", ch.validate(t))
			logs := c.logs.String()
			if strings.Contains(logs, "path=/egress-canary") {
				t.Errorf("the CA requested its own /egress-canary:\n%s", rawTail(logs, 20))
			}
			if !strings.Contains(logs, "own listen address") {
				t.Errorf("the refusal was not the own-address rule's:\n%s", rawTail(logs, 20))
			}
		})

		t.Run("redirect on the validation port validates", func(t *testing.T) {
			t.Parallel()
			resp := newEgressResponder(t)
			c := defaultCA(t, resp.port)
			ch := newEgressChallenge(t, c, "localhost")
			resp.set(func(w http.ResponseWriter, r *http.Request) {
				switch r.URL.Path {
				case "/.well-known/acme-challenge/" + ch.token:
					http.Redirect(w, r, "http://127.0.0.1:"+strconv.Itoa(resp.port)+"/other/"+ch.token, http.StatusFound)
				case "/other/" + ch.token:
					_, _ = w.Write([]byte(ch.keyAuth))
				default:
					http.NotFound(w, r)
				}
			})
			out := ch.validate(t)
			if out.status != "valid" || out.authzStatus != "valid" {
				t.Fatalf("challenge %s, authz %s, error %s; want valid\n%s", out.status, out.authzStatus, out.err, rawTail(c.logs.String(), 20))
			}
			if n := resp.hits.Load(); n != 2 {
				t.Errorf("the responder got %d requests, want 2 (challenge, redirect)", n)
			}
		})
	})

	// What the ACME client learns is the same whatever the target did.
	want, ok := refused["closed port"]
	if !ok {
		t.Fatal("no closed-port outcome to compare with")
	}
	for name, got := range refused {
		if string(got) != string(want) {
			t.Errorf("%s: challenge error %s, closed port %s", name, got, want)
		}
	}
	t.Logf("every refusal reads %s", want)
}
