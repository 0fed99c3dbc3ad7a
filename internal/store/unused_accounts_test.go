package store

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/smallstep/certificates/acme"
	acmenosql "github.com/smallstep/certificates/acme/db/nosql"
	"github.com/smallstep/nosql"
	"go.step.sm/crypto/jose"
)

// unusedFixture is a bbolt store with smallstep's ACME tables and crank-ca's.
type unusedFixture struct {
	db   nosql.DB
	acme *acmenosql.DB
}

func newUnusedFixture(t *testing.T) unusedFixture {
	t.Helper()
	db := openBolt(t)
	adb, err := acmenosql.New(db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{DB: db}); err != nil {
		t.Fatal(err)
	}
	return unusedFixture{db: db, acme: adb}
}

// register creates an account through smallstep's own code, so the records
// have exactly its shape, and returns it with its key index id.
func (f unusedFixture) register(t *testing.T, jwk *jose.JSONWebKey) (*acme.Account, string) {
	t.Helper()
	acc := &acme.Account{Key: jwk, Status: acme.StatusValid, ProvisionerName: "adhoc"}
	if err := f.acme.CreateAccount(t.Context(), acc); err != nil {
		t.Fatal(err)
	}
	kid, err := acme.KeyToID(jwk)
	if err != nil {
		t.Fatal(err)
	}
	return acc, kid
}

// setCreatedAt rewrites an account record's creation time.
func (f unusedFixture) setCreatedAt(t *testing.T, id string, at time.Time) {
	t.Helper()
	b, err := f.db.Get(accountsTable, []byte(id))
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	rec["createdAt"] = at
	if b, err = json.Marshal(rec); err != nil {
		t.Fatal(err)
	}
	if err := f.db.Set(accountsTable, []byte(id), b); err != nil {
		t.Fatal(err)
	}
}

func newJWK(t *testing.T) *jose.JSONWebKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &jose.JSONWebKey{Key: &k.PublicKey}
}

// TestSweepUnusedAccounts creates accounts with smallstep's code in every
// state retention distinguishes, sweeps once and checks which are gone, and
// that a deleted account's key registers again.
func TestSweepUnusedAccounts(t *testing.T) {
	t.Parallel()
	f := newUnusedFixture(t)
	now := time.Now().Add(72 * time.Hour)
	const unused = 24 * time.Hour

	type account struct {
		name string
		// age is the account's age at the sweep; zero means no creation time.
		age time.Duration
		// index is the account's order index entry; nil: none.
		index []byte
		bound bool
		// keyTaken makes the key index name another account.
		keyTaken bool
		deleted  bool
	}
	cases := []account{
		{name: "never ordered", age: 48 * time.Hour, deleted: true},
		{name: "never ordered, young", age: time.Hour},
		{name: "just past the limit", age: unused + time.Second, deleted: true},
		{name: "ordered", age: 48 * time.Hour, index: []byte(`["o1"]`)},
		{name: "orders pruned to an empty list", age: 48 * time.Hour, index: []byte(`[]`)},
		{name: "orders pruned to an empty value", age: 48 * time.Hour, index: []byte{}},
		{name: "bound, never ordered", age: 48 * time.Hour, bound: true, deleted: true},
		{name: "bound and ordered", age: 48 * time.Hour, bound: true, index: []byte(`["o2"]`)},
		{name: "key index names another account", age: 48 * time.Hour, keyTaken: true, deleted: true},
		{name: "no creation time"},
	}
	type made struct {
		account
		id, kid string
		jwk     *jose.JSONWebKey
	}
	var accounts []made
	for _, c := range cases {
		jwk := newJWK(t)
		acc, kid := f.register(t, jwk)
		var at time.Time
		if c.age != 0 {
			at = now.Add(-c.age)
		}
		f.setCreatedAt(t, acc.ID, at)
		if c.index != nil {
			if err := f.db.Set(accountOrdersTable, []byte(acc.ID), c.index); err != nil {
				t.Fatal(err)
			}
		}
		if c.bound {
			b, _ := json.Marshal(Binding{AccountID: acc.ID, Provisioner: "workers", Worker: "api", KID: "kid-" + acc.ID})
			if err := f.db.Set(bindingTable, []byte(acc.ID), b); err != nil {
				t.Fatal(err)
			}
		}
		if c.keyTaken {
			if err := f.db.Set(accountByKeyTable, []byte(kid), []byte("another")); err != nil {
				t.Fatal(err)
			}
		}
		accounts = append(accounts, made{account: c, id: acc.ID, kid: kid, jwk: jwk})
	}

	r := NewRetainer(RetainerConfig{DB: f.db, Keep: 24 * time.Hour, Unused: unused, Now: func() time.Time { return now }})
	st, err := r.Sweep(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, a := range accounts {
		if a.deleted {
			want++
		}
	}
	if st.Accounts != want {
		t.Errorf("sweep deleted %d accounts, want %d (stats %+v)", st.Accounts, want, st)
	}

	for _, a := range accounts {
		t.Run(a.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			_, err := f.acme.GetAccount(ctx, a.id)
			if gone := errors.Is(err, acme.ErrNotFound); gone != a.deleted {
				t.Fatalf("GetAccount: err %v, want deleted=%v", err, a.deleted)
			}
			_, err = f.db.Get(bindingTable, []byte(a.id))
			if kept := err == nil; kept != (a.bound && !a.deleted) {
				t.Errorf("binding kept=%v (err %v), want %v", kept, err, a.bound && !a.deleted)
			}
			owner, err := f.db.Get(accountByKeyTable, []byte(a.kid))
			switch {
			case a.keyTaken:
				if string(owner) != "another" {
					t.Errorf("key index entry of another account = %q, %v; want it untouched", owner, err)
				}
			case a.deleted:
				if err == nil {
					t.Errorf("key index entry of a deleted account kept: %q", owner)
				}
				// The key registers again as a new account.
				acc, _ := f.register(t, a.jwk)
				if acc.ID == a.id {
					t.Errorf("re-registration reused id %s", a.id)
				}
			default:
				if got, err := f.acme.GetAccountByKeyID(ctx, a.kid); err != nil || got.ID != a.id {
					t.Errorf("GetAccountByKeyID = %v, %v; want account %s", got, err, a.id)
				}
			}
			if a.index != nil {
				if _, err := f.db.Get(accountOrdersTable, []byte(a.id)); err != nil {
					t.Errorf("order index entry: %v", err)
				}
			}
		})
	}
}

// TestSweepUnusedAccountsDisabled: a zero Unused keeps every account, as
// for callers that predate the setting.
func TestSweepUnusedAccountsDisabled(t *testing.T) {
	t.Parallel()
	f := newUnusedFixture(t)
	acc, _ := f.register(t, newJWK(t))
	now := time.Now().Add(1000 * time.Hour)
	r := NewRetainer(RetainerConfig{DB: f.db, Keep: time.Hour, Now: func() time.Time { return now }})
	st, err := r.Sweep(t.Context())
	if err != nil || st.Accounts != 0 {
		t.Fatalf("sweep = %+v, %v; want no accounts deleted", st, err)
	}
	if _, err := f.acme.GetAccount(t.Context(), acc.ID); err != nil {
		t.Errorf("account deleted with Unused 0: %v", err)
	}
}

// TestSweepKeepsAccountWithRealOrder orders through smallstep's code (which
// writes the order index) and checks the account survives.
func TestSweepKeepsAccountWithRealOrder(t *testing.T) {
	t.Parallel()
	f := newUnusedFixture(t)
	ordered, _ := f.register(t, newJWK(t))
	idle, _ := f.register(t, newJWK(t))
	o := &acme.Order{
		AccountID: ordered.ID, ProvisionerID: "acme/adhoc", Status: acme.StatusPending,
		ExpiresAt: time.Now().Add(time.Hour), AuthorizationIDs: []string{"az"},
		Identifiers: []acme.Identifier{{Type: acme.DNS, Value: "a.example"}},
	}
	if err := f.acme.CreateOrder(t.Context(), o); err != nil {
		t.Fatal(err)
	}
	now := time.Now().Add(48 * time.Hour)
	r := NewRetainer(RetainerConfig{DB: f.db, Keep: 24 * time.Hour, Unused: 24 * time.Hour, Now: func() time.Time { return now }})
	st, err := r.Sweep(t.Context())
	if err != nil || st.Accounts != 1 {
		t.Fatalf("sweep = %+v, %v; want the idle account deleted", st, err)
	}
	if _, err := f.acme.GetAccount(t.Context(), ordered.ID); err != nil {
		t.Errorf("account with an order deleted: %v", err)
	}
	if _, err := f.acme.GetAccount(t.Context(), idle.ID); !errors.Is(err, acme.ErrNotFound) {
		t.Errorf("idle account: %v, want not found", err)
	}
}

// TestSweepUnusedAccountsThroughIndex: accounts registered after the legacy
// pass are found through the entries IndexAccount writes. An unused one
// goes once old enough, one that ordered is kept and not looked at again,
// a young one waits.
func TestSweepUnusedAccountsThroughIndex(t *testing.T) {
	t.Parallel()
	f := newUnusedFixture(t)
	s, err := New(Config{DB: f.db})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Add(72 * time.Hour)
	r := NewRetainer(RetainerConfig{DB: f.db, Keep: 24 * time.Hour, Unused: 24 * time.Hour, Now: func() time.Time { return now }})
	if st, err := r.Sweep(t.Context()); err != nil || st != (Stats{}) {
		t.Fatalf("sweep of the empty store = %+v, %v", st, err)
	}
	made := map[string]string{}
	for name, age := range map[string]time.Duration{"unused": 48 * time.Hour, "ordered": 48 * time.Hour, "young": time.Hour} {
		acc, _ := f.register(t, newJWK(t))
		f.setCreatedAt(t, acc.ID, now.Add(-age))
		// crank-ca's clock at registration may differ a little from the
		// record's; the record decides.
		if err := s.IndexAccount(t.Context(), acc.ID, now.Add(-age+time.Second)); err != nil {
			t.Fatal(err)
		}
		made[name] = acc.ID
	}
	if err := f.db.Set(accountOrdersTable, []byte(made["ordered"]), []byte(`["o1"]`)); err != nil {
		t.Fatal(err)
	}
	st, err := r.Sweep(t.Context())
	if err != nil || st != (Stats{Accounts: 1}) {
		t.Fatalf("sweep = %+v, %v; want the unused account deleted", st, err)
	}
	for name, id := range made {
		_, err := f.acme.GetAccount(t.Context(), id)
		if gone := errors.Is(err, acme.ErrNotFound); gone != (name == "unused") {
			t.Errorf("%s account: GetAccount err %v", name, err)
		}
	}
	es, err := f.db.List(expiryTable)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range es {
		if kind, _, id, ok := parseExpiryKey(e.Key); ok && kind == kindAccount {
			left = append(left, id)
		}
	}
	if want := []string{made["young"]}; !slices.Equal(left, want) {
		t.Errorf("account entries left: %v, want the young account's %v", left, want)
	}
}
