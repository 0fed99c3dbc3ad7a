package integration

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestUnusedAccountsRetention registers two adhoc accounts, orders with one,
// moves the clock past retention.unusedAccounts (24h by default) and checks
// that one sweep deletes only the account that never ordered: requests
// signed with its kid get a 4xx problem (never a 5xx), its key registers a
// fresh account, and the other account keeps working.
func TestUnusedAccountsRetention(t *testing.T) {
	t.Parallel()
	c := newCA(t, nil)
	c.start()
	rc := newRawClient(t, c)

	idle := rc.rawRegister("adhoc", nil)
	active := rc.rawRegister("adhoc", nil)
	rc.rawNewOrder(active, "unused.localhost")

	if st, err := c.srv.Sweep(t.Context()); err != nil || st.Accounts != 0 {
		t.Fatalf("sweep before the limit = %+v, %v; want no account deleted", st, err)
	}

	c.clock.Advance(c.cfg.Retention.UnusedAccounts.Duration + time.Hour)
	st, err := c.srv.Sweep(t.Context())
	if err != nil {
		t.Fatalf("sweep: %v\n%s", err, rawTail(c.logs.String(), 20))
	}
	if st.Accounts != 1 {
		t.Errorf("sweep deleted %d accounts, want the one that never ordered (stats %+v)", st.Accounts, st)
	}

	// The deleted account: a problem document with a 4xx, for its account
	// URL and for a new-order.
	for _, u := range []string{idle.url, rc.rawDir("adhoc").NewOrder} {
		payload := []byte(nil)
		if u != idle.url {
			payload = rawMarshal(t, map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": "idle.localhost"}}})
		}
		r := rc.rawPost(u, rc.rawSigned("adhoc", idle, u, payload))
		var p rawProblem
		if r.status < 400 || r.status >= 500 || json.Unmarshal(r.body, &p) != nil {
			t.Fatalf("request of the deleted account to %s: %s, want a 4xx problem\n%s", u, r, rawTail(c.logs.String(), 20))
		}
		if typ := strings.TrimPrefix(p.Type, rawProblemPrefix); typ != "accountDoesNotExist" && typ != "unauthorized" {
			t.Errorf("request of the deleted account to %s: problem %q, want accountDoesNotExist or unauthorized", u, p.Type)
		}
	}

	// The account that ordered is untouched and orders again.
	if r := rc.rawPostAsGet(active, active.url); r.status != http.StatusOK {
		t.Errorf("account that ordered: %s", r)
	}
	rc.rawNewOrder(active, "unused.localhost")

	// The deleted account's key registers again, as a new account.
	again := &rawAccount{key: idle.key, prov: "adhoc"}
	newAccount := rc.rawDir("adhoc").NewAccount
	r := rc.rawPost(newAccount, rc.rawSigned("adhoc", again, newAccount, rawMarshal(t, map[string]any{"termsOfServiceAgreed": true})))
	if r.status != http.StatusCreated {
		t.Fatalf("re-registering the deleted account's key: %s, want 201\n%s", r, rawTail(c.logs.String(), 20))
	}
	again.url = r.header.Get("Location")
	if again.url == "" || again.url == idle.url {
		t.Errorf("re-registration Location %q, want a new account (old %q)", again.url, idle.url)
	}
	if r := rc.rawPostAsGet(again, again.url); r.status != http.StatusOK {
		t.Errorf("re-registered account: %s", r)
	}
}
