package stepca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/smallstep/certificates/acme"
	acmenosql "github.com/smallstep/certificates/acme/db/nosql"
	stepdb "github.com/smallstep/certificates/db"

	"github.com/crank-platform/crank-ca/internal/limit"
	"github.com/crank-platform/crank-ca/internal/store"
	"github.com/crank-platform/crank-ca/internal/testpki"
	"github.com/crank-platform/crank-ca/provisioner"
)

// The tests here read every record records.go writes back through
// smallstep's own getters (acme/db/nosql and db), and compare the stored
// bytes with the ones smallstep writes for the same request into a second
// store (the twin): the getters drop some fields (createdAt), and every
// later request of smallstep's reads these records.

// recordsEnv is a store opened as ca.go opens it (one bbolt file with the
// authority's, smallstep's ACME and crank-ca's tables) and an acmeDB over it
// with the fields the record writes use.
type recordsEnv struct {
	d       *acmeDB
	inner   *acmenosql.DB
	data    *storeDB
	st      *store.Store
	clock   time.Time // crank-ca's injected clock, fixed
	workers *Provisioner
	adhoc   *Provisioner
}

func newRecordsEnv(t *testing.T, clock time.Time) *recordsEnv {
	t.Helper()
	data, err := openDatabase(t.Context(), Storage{Type: "bbolt", DataSource: filepath.Join(t.TempDir(), "db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := data.Close(); err != nil {
			t.Error(err)
		}
	})
	now := func() time.Time { return clock }
	st, err := store.New(store.Config{DB: data.DB, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	inner, err := acmenosql.New(data.DB)
	if err != nil {
		t.Fatal(err)
	}
	limits := Limits{MaxIdentifiersPerOrder: 4, MaxPendingOrdersPerAccount: 10, NewAccountsPerMinute: 10, NewOrdersPerMinute: 10}
	workers := &Provisioner{
		Name: "workers", Kind: KindWorkers, Limits: limits,
		MinDuration: 5 * time.Minute, DefaultDuration: time.Hour, MaxDuration: 24 * time.Hour,
	}
	adhoc := &Provisioner{
		Name: "adhoc", Kind: KindACME, Limits: limits,
		MinDuration: 5 * time.Minute, DefaultDuration: time.Hour, MaxDuration: 24 * time.Hour,
		Challenges: []string{"http-01", "dns-01", "tls-alpn-01"},
		Policy:     provisioner.NamePolicy{AllowedDNSSuffixes: []string{"localhost"}},
	}
	discard := slog.New(slog.DiscardHandler)
	d := &acmeDB{
		DB:      inner,
		specs:   specsByID(map[string]*Provisioner{workers.Name: workers, adhoc.Name: adhoc}),
		store:   st,
		now:     now,
		log:     discard,
		audit:   discard,
		pending: limit.NewPending(now),
		held:    newHeldDB(data),
	}
	return &recordsEnv{d: d, inner: inner, data: data, st: st, clock: clock, workers: workers, adhoc: adhoc}
}

// recordsClock is the injected clock of a test's stores: now, UTC, without
// a monotonic reading.
func recordsClock() time.Time { return time.Now().UTC() }

// requestCtx is a request's context as the linker (spec) and
// GetExternalAccountKeyByAccountID (a worker's binding and identity) leave
// it.
func (e *recordsEnv) requestCtx(t *testing.T, spec *Provisioner, account string, id *provisioner.Identity) context.Context {
	t.Helper()
	ctx := withState(t.Context())
	st := stateFrom(ctx)
	st.spec = spec
	if id != nil {
		st.identity = id
		st.binding = &store.Binding{AccountID: account, Provisioner: spec.Name, Worker: id.Worker}
	}
	return ctx
}

// orderRequest is a new-order request as smallstep's handler has parsed it.
type orderRequest struct {
	spec        *Provisioner
	account     string
	identity    *provisioner.Identity // a bound worker's identity, or nil
	identifiers []acme.Identifier
	replaces    string // an RFC 9773 certID
}

// newOrder runs a new-order request's DB calls as smallstep's handler makes
// them (acme/api/order.go NewOrder and newAuthorization) and returns the
// order and authorizations as the handler holds them afterwards.
func (e *recordsEnv) newOrder(t *testing.T, r orderRequest) (*acme.Order, []*acme.Authorization, error) {
	t.Helper()
	ctx := e.requestCtx(t, r.spec, r.account, r.identity)
	st := stateFrom(ctx)
	st.newOrder = &newOrderWrites{}
	st.replaces = r.replaces
	now := stepNow()
	o := &acme.Order{
		AccountID: r.account, ProvisionerID: r.spec.id(), Status: acme.StatusPending,
		Identifiers: r.identifiers, ExpiresAt: now.Add(orderLifetime),
		AuthorizationIDs: make([]string, len(r.identifiers)),
		NotBefore:        now.Add(-backdateAllowance), NotAfter: now.Add(r.spec.DefaultDuration),
	}
	azs := authorize(ctx, t, e.d, r.spec, o)
	return o, azs, e.d.CreateOrder(ctx, o)
}

// authorize makes newAuthorization's calls for each identifier of o: its
// challenges, then the authorization naming them.
func authorize(ctx context.Context, t *testing.T, db acme.DB, spec *Provisioner, o *acme.Order) []*acme.Authorization {
	t.Helper()
	azs := make([]*acme.Authorization, len(o.Identifiers))
	for i, id := range o.Identifiers {
		value, wildcard := strings.CutPrefix(id.Value, "*.")
		az := &acme.Authorization{
			AccountID: o.AccountID, Identifier: acme.Identifier{Type: id.Type, Value: value}, Wildcard: wildcard,
			ExpiresAt: o.ExpiresAt, Status: acme.StatusPending, Token: fmt.Sprintf("token-%d", i),
		}
		for _, typ := range challengeTypesOf(spec, az) {
			ch := &acme.Challenge{AccountID: o.AccountID, Value: value, Type: typ, Token: az.Token, Status: acme.StatusPending}
			if err := db.CreateChallenge(ctx, ch); err != nil {
				t.Fatalf("CreateChallenge: %v", err)
			}
			az.Challenges = append(az.Challenges, ch)
		}
		if err := db.CreateAuthorization(ctx, az); err != nil {
			t.Fatalf("CreateAuthorization: %v", err)
		}
		o.AuthorizationIDs[i] = az.ID
		azs[i] = az
	}
	return azs
}

// challengeTypesOf is smallstep's challengeTypes filtered by the
// challenges stepProvisioner enables.
func challengeTypesOf(spec *Provisioner, az *acme.Authorization) []acme.ChallengeType {
	switch {
	case spec.Kind == KindWorkers:
		return []acme.ChallengeType{acme.HTTP01}
	case az.Identifier.Type == acme.IP:
		return []acme.ChallengeType{acme.HTTP01, acme.TLSALPN01}
	case az.Wildcard:
		return []acme.ChallengeType{acme.DNS01}
	default:
		return []acme.ChallengeType{acme.DNS01, acme.HTTP01, acme.TLSALPN01}
	}
}

// raw is a stored value.
func (e *recordsEnv) raw(t *testing.T, table []byte, key string) []byte {
	t.Helper()
	b, err := e.data.Get(table, []byte(key))
	if err != nil {
		t.Fatalf("read %s %s: %v", table, key, err)
	}
	return b
}

// sameShape compares a record crank-ca wrote with the one smallstep wrote
// for the same input in the twin store: equal once the twin's record ids
// are renamed to crank-ca's, but for createdAt, which each write stamps
// with its own clock (see checkCreatedAt).
func sameShape(t *testing.T, what string, ours, twins []byte, rename map[string]string) {
	t.Helper()
	for from, to := range rename {
		twins = bytes.ReplaceAll(twins, []byte(from), []byte(to))
	}
	var got, want any
	if err := json.Unmarshal(ours, &got); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if err := json.Unmarshal(twins, &want); err != nil {
		t.Fatalf("%s (smallstep's): %v", what, err)
	}
	for _, v := range []any{got, want} {
		if m, ok := v.(map[string]any); ok {
			delete(m, "createdAt")
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("%s differs from smallstep's record (-smallstep +crank-ca):\n%s", what, diff)
	}
}

// checkCreatedAt checks a record's createdAt: UTC, from the write's time
// span, and in whole seconds where smallstep stamps it with its record
// clock (acme.Clock).
func checkCreatedAt(t *testing.T, what string, rec []byte, from, to time.Time, whole bool) {
	t.Helper()
	var v struct {
		CreatedAt string `json:"createdAt"`
	}
	if err := json.Unmarshal(rec, &v); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	at, err := time.Parse(time.RFC3339Nano, v.CreatedAt)
	switch {
	case err != nil:
		t.Errorf("%s createdAt %q: %v", what, v.CreatedAt, err)
	case !strings.HasSuffix(v.CreatedAt, "Z"):
		t.Errorf("%s createdAt %q is not UTC", what, v.CreatedAt)
	case whole && !at.Equal(at.Truncate(time.Second)):
		t.Errorf("%s createdAt %q is not in whole seconds, as smallstep's clock stamps it", what, v.CreatedAt)
	case at.Before(from.Truncate(time.Second)) || at.After(to):
		t.Errorf("%s createdAt %s is outside the write's span [%s, %s]", what, at, from, to)
	}
}

// checkRecordID checks an id is smallstep's: 32 alphanumerics.
func checkRecordID(t *testing.T, what, id string) {
	t.Helper()
	const alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	if len(id) != 32 || strings.Trim(id, alnum) != "" {
		t.Errorf("%s id %q is not 32 alphanumerics", what, id)
	}
}

// missing reports whether err is smallstep's nosql getters' answer for a
// missing record: a malformed problem "... not found" (not
// acme.ErrNotFound).
func missing(err error) bool {
	var e *acme.Error
	return errors.As(err, &e) && e.Type == "urn:ietf:params:acme:error:malformed" && strings.Contains(e.Error(), "not found")
}

// sameCert compares certificates by their DER.
var sameCert = cmp.Comparer(func(a, b *x509.Certificate) bool { return a.Equal(b) })

// orderIndex is an account's order index as stored.
func (e *recordsEnv) orderIndex(t *testing.T, account string) []string {
	t.Helper()
	var ids []string
	if err := json.Unmarshal(e.raw(t, orderIndexTable, account), &ids); err != nil {
		t.Fatalf("order index of %s: %v", account, err)
	}
	return ids
}

func TestRecordsNewOrder(t *testing.T) {
	t.Parallel()
	alpha := provisioner.Identity{
		Worker:   "alpha",
		DNSNames: []string{"alpha.workers.crank.internal"},
		IPs:      []netip.Addr{netip.MustParseAddr("10.0.0.7")},
	}
	for _, tc := range []struct {
		name        string
		workers     bool
		identity    *provisioner.Identity
		identifiers []acme.Identifier
		// authz is the status of every challenge and authorization, order
		// the order's.
		authz, order acme.Status
	}{
		{
			name: "pre-authorized worker", workers: true, identity: &alpha,
			identifiers: []acme.Identifier{{Type: acme.DNS, Value: "alpha.workers.crank.internal"}, {Type: acme.IP, Value: "10.0.0.7"}},
			authz:       acme.StatusValid, order: acme.StatusReady,
		},
		{
			name:        "plain",
			identifiers: []acme.Identifier{{Type: acme.DNS, Value: "www.localhost"}, {Type: acme.DNS, Value: "*.wild.localhost"}},
			authz:       acme.StatusPending, order: acme.StatusPending,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clock := recordsClock()
			e, twin := newRecordsEnv(t, clock), newRecordsEnv(t, clock)
			spec := e.adhoc
			if tc.workers {
				spec = e.workers
			}
			const account = "acct"
			ctx := t.Context()
			from := time.Now()
			o, azs, err := e.newOrder(t, orderRequest{spec: spec, account: account, identity: tc.identity, identifiers: tc.identifiers})
			if err != nil {
				t.Fatalf("CreateOrder: %v", err)
			}
			to := time.Now()

			// Each record through smallstep's getters, against what was
			// given, and against what the handler holds in memory (it
			// answers the client from that).
			validatedAt := ""
			if tc.authz == acme.StatusValid {
				validatedAt = clock.Format(time.RFC3339)
			}
			wantAuthzIDs := make([]string, len(azs))
			for i, az := range azs {
				checkRecordID(t, "authorization", az.ID)
				wantAuthzIDs[i] = az.ID
				value, wildcard := strings.CutPrefix(tc.identifiers[i].Value, "*.")
				want := &acme.Authorization{
					ID: az.ID, AccountID: account, Identifier: acme.Identifier{Type: tc.identifiers[i].Type, Value: value},
					Status: tc.authz, Wildcard: wildcard, ExpiresAt: o.ExpiresAt, Token: az.Token,
				}
				for _, ch := range az.Challenges {
					checkRecordID(t, "challenge", ch.ID)
					wantCh := &acme.Challenge{
						ID: ch.ID, AccountID: account, Type: ch.Type, Value: value,
						Status: tc.authz, Token: az.Token, ValidatedAt: validatedAt,
					}
					got, err := e.inner.GetChallenge(ctx, ch.ID, az.ID)
					if err != nil {
						t.Fatalf("GetChallenge: %v", err)
					}
					if diff := cmp.Diff(wantCh, got); diff != "" {
						t.Errorf("challenge %s (-want +got):\n%s", ch.Type, diff)
					}
					if diff := cmp.Diff(ch, got); diff != "" {
						t.Errorf("challenge %s: stored differs from the handler's (-handler +stored):\n%s", ch.Type, diff)
					}
					want.Challenges = append(want.Challenges, wantCh)
				}
				if got := len(want.Challenges); got != len(challengeTypesOf(spec, want)) {
					t.Errorf("authorization %s has %d challenges, want %d", value, got, len(challengeTypesOf(spec, want)))
				}
				got, err := e.inner.GetAuthorization(ctx, az.ID)
				if err != nil {
					t.Fatalf("GetAuthorization: %v", err)
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("authorization %s (-want +got):\n%s", value, diff)
				}
				if diff := cmp.Diff(az, got); diff != "" {
					t.Errorf("authorization %s: stored differs from the handler's (-handler +stored):\n%s", value, diff)
				}
			}
			checkRecordID(t, "order", o.ID)
			wantOrder := &acme.Order{
				ID: o.ID, AccountID: account, ProvisionerID: spec.id(), Status: tc.order,
				ExpiresAt: o.ExpiresAt, Identifiers: tc.identifiers, NotBefore: o.NotBefore, NotAfter: o.NotAfter,
				AuthorizationIDs: wantAuthzIDs,
			}
			gotOrder, err := e.inner.GetOrder(ctx, o.ID)
			if err != nil {
				t.Fatalf("GetOrder: %v", err)
			}
			if diff := cmp.Diff(wantOrder, gotOrder); diff != "" {
				t.Errorf("order (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(o, gotOrder); diff != "" {
				t.Errorf("order: stored differs from the handler's (-handler +stored):\n%s", diff)
			}
			if diff := cmp.Diff([]string{o.ID}, e.orderIndex(t, account)); diff != "" {
				t.Errorf("order index (-want +got):\n%s", diff)
			}

			// The same request written by smallstep: crank-ca's
			// pre-authorization outside a new-order (smallstep's create,
			// then its update), smallstep's CreateOrder with the status
			// crank-ca chose.
			tctx := twin.requestCtx(t, spec, account, tc.identity)
			tOrder := &acme.Order{
				AccountID: account, ProvisionerID: spec.id(), Status: acme.StatusPending,
				Identifiers: tc.identifiers, ExpiresAt: o.ExpiresAt, NotBefore: o.NotBefore, NotAfter: o.NotAfter,
				AuthorizationIDs: make([]string, len(tc.identifiers)),
			}
			tazs := authorize(tctx, t, twin.d, spec, tOrder)
			tOrder.Status = o.Status
			if err := twin.inner.CreateOrder(tctx, tOrder); err != nil {
				t.Fatalf("smallstep's CreateOrder: %v", err)
			}
			rename := map[string]string{tOrder.ID: o.ID}
			for i, az := range azs {
				rename[tazs[i].ID] = az.ID
				for j, ch := range az.Challenges {
					rename[tazs[i].Challenges[j].ID] = ch.ID
				}
			}
			for i, az := range azs {
				for j, ch := range az.Challenges {
					rec := e.raw(t, challengesTable, ch.ID)
					sameShape(t, "challenge", rec, twin.raw(t, challengesTable, tazs[i].Challenges[j].ID), rename)
					checkCreatedAt(t, "challenge", rec, from, to, true)
				}
				rec := e.raw(t, authzsTable, az.ID)
				sameShape(t, "authorization", rec, twin.raw(t, authzsTable, tazs[i].ID), rename)
				checkCreatedAt(t, "authorization", rec, from, to, true)
			}
			rec := e.raw(t, ordersTable, o.ID)
			sameShape(t, "order", rec, twin.raw(t, ordersTable, tOrder.ID), rename)
			checkCreatedAt(t, "order", rec, from, to, true)
			sameShape(t, "order index", e.raw(t, orderIndexTable, account), twin.raw(t, orderIndexTable, account), rename)

			// smallstep's listing reads the index (last: it rewrites it).
			listed, err := e.inner.GetAllOrdersByAccountID(ctx, account)
			if err != nil {
				t.Fatalf("smallstep's GetAllOrdersByAccountID: %v", err)
			}
			if diff := cmp.Diff([]string{o.ID}, listed); diff != "" {
				t.Errorf("smallstep's listing (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRecordsOrderIndex(t *testing.T) {
	t.Parallel()
	const account = "acct"
	for _, tc := range []struct {
		name string
		// seed writes the account's index as the new order finds it and
		// returns the ids that must stay in it.
		seed func(t *testing.T, e *recordsEnv) []string
	}{
		{
			name: "none",
			seed: func(*testing.T, *recordsEnv) []string { return nil },
		},
		{
			name: "orders in every state",
			seed: func(t *testing.T, e *recordsEnv) []string {
				t.Helper()
				now := stepNow()
				// The pending order's authorization, which smallstep's
				// listing reads.
				az := &acme.Authorization{
					AccountID: account, Identifier: acme.Identifier{Type: acme.DNS, Value: "old.localhost"},
					Status: acme.StatusPending, ExpiresAt: now.Add(time.Hour),
				}
				if err := e.inner.CreateAuthorization(t.Context(), az); err != nil {
					t.Fatal(err)
				}
				var ids, kept []string
				for _, o := range []struct {
					status  acme.Status
					expires time.Duration // from now
					stored  bool          // false: removed by retention
					kept    bool
				}{
					{acme.StatusPending, time.Hour, true, true},
					{acme.StatusReady, time.Hour, true, true},
					{acme.StatusPending, -time.Hour, true, false},
					{acme.StatusReady, -time.Second, true, false},
					{acme.StatusValid, time.Hour, true, false},
					{acme.StatusInvalid, time.Hour, true, false},
					{acme.StatusPending, time.Hour, false, false},
				} {
					id, err := newRecordID()
					if err != nil {
						t.Fatal(err)
					}
					ids = append(ids, id)
					if o.kept {
						kept = append(kept, id)
					}
					if !o.stored {
						continue
					}
					b, err := json.Marshal(stepOrder{
						ID: id, AccountID: account, ProvisionerID: e.adhoc.id(), Status: o.status,
						Identifiers: []acme.Identifier{az.Identifier}, AuthorizationIDs: []string{az.ID},
						CreatedAt: now.Add(o.expires - orderLifetime), ExpiresAt: now.Add(o.expires),
						NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
					})
					if err != nil {
						t.Fatal(err)
					}
					if err := e.data.Set(ordersTable, []byte(id), b); err != nil {
						t.Fatal(err)
					}
				}
				b, err := json.Marshal(ids)
				if err != nil {
					t.Fatal(err)
				}
				if err := e.data.Set(orderIndexTable, []byte(account), b); err != nil {
					t.Fatal(err)
				}
				return kept
			},
		},
		{
			// smallstep's listing stores an empty value once nothing is
			// pending, which its own next new-order cannot parse.
			name: "emptied by smallstep's listing",
			seed: func(t *testing.T, e *recordsEnv) []string {
				t.Helper()
				now := stepNow()
				o := &acme.Order{
					AccountID: account, ProvisionerID: e.adhoc.id(), Status: acme.StatusValid,
					Identifiers: []acme.Identifier{{Type: acme.DNS, Value: "old.localhost"}},
					ExpiresAt:   now.Add(time.Hour), NotBefore: now, NotAfter: now.Add(time.Hour),
				}
				if err := e.inner.CreateOrder(t.Context(), o); err != nil {
					t.Fatal(err)
				}
				if _, err := e.inner.GetOrdersByAccountID(t.Context(), account); err != nil {
					t.Fatal(err)
				}
				if b := e.raw(t, orderIndexTable, account); len(b) != 0 {
					t.Fatalf("smallstep's listing left %q, want an empty value", b)
				}
				return nil
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newRecordsEnv(t, recordsClock())
			kept := tc.seed(t, e)
			o, _, err := e.newOrder(t, orderRequest{
				spec: e.adhoc, account: account,
				identifiers: []acme.Identifier{{Type: acme.DNS, Value: "www.localhost"}},
			})
			if err != nil {
				t.Fatalf("CreateOrder: %v", err)
			}
			want := append(kept, o.ID)
			if diff := cmp.Diff(want, e.orderIndex(t, account)); diff != "" {
				t.Errorf("order index (-want +got):\n%s", diff)
			}
			// smallstep's listing reads every order the index names.
			listed, err := e.inner.GetAllOrdersByAccountID(t.Context(), account)
			if err != nil {
				t.Fatalf("smallstep's GetAllOrdersByAccountID: %v", err)
			}
			if diff := cmp.Diff(want, listed); diff != "" {
				t.Errorf("smallstep's listing (-want +got):\n%s", diff)
			}
		})
	}
}

// certIDOf is a certificate's RFC 9773 certID.
func certIDOf(c *x509.Certificate) string {
	serial := c.SerialNumber.Bytes()
	if len(serial) == 0 || serial[0]&0x80 != 0 {
		serial = append([]byte{0}, serial...)
	}
	return base64.RawURLEncoding.EncodeToString(c.AuthorityKeyId) + "." + base64.RawURLEncoding.EncodeToString(serial)
}

// problem is an ACME problem's type and status; zero is no problem.
type problem struct {
	Type   string
	Status int
}

func problemOf(err error) problem {
	var e *acme.Error
	switch {
	case err == nil:
		return problem{}
	case errors.As(err, &e):
		return problem{Type: e.Type, Status: e.Status}
	}
	return problem{Type: err.Error()}
}

func TestRecordsReplacement(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t, "records root")
	old, _ := ca.Issue(t, &x509.Certificate{DNSNames: []string{"www.localhost"}})
	serial := old.SerialNumber.String()
	const account = "acct"
	record := store.CertRecord{
		Serial: serial, Provisioner: "adhoc", AccountID: account, OrderID: "first-order",
		DNSNames: old.DNSNames, NotBefore: old.NotBefore, NotAfter: old.NotAfter,
		AKI: hex.EncodeToString(old.AuthorityKeyId),
	}
	var (
		ordered         = problem{}
		alreadyReplaced = problem{"urn:ietf:params:acme:error:alreadyReplaced", http.StatusConflict}
		unauthorized    = problem{"urn:ietf:params:acme:error:unauthorized", http.StatusUnauthorized}
		malformed       = problem{"urn:ietf:params:acme:error:malformed", http.StatusBadRequest}
	)
	otherAccount := record
	otherAccount.AccountID = "other"
	for _, tc := range []struct {
		name   string
		record *store.CertRecord // crank-ca's record of the certificate, nil: none
		certID string
		// want is each new-order's outcome, in turn.
		want []problem
	}{
		{"replaced", &record, certIDOf(old), []problem{ordered}},
		{"replaced twice", &record, certIDOf(old), []problem{ordered, alreadyReplaced}},
		{"another account's", &otherAccount, certIDOf(old), []problem{unauthorized}},
		{"unknown", nil, certIDOf(old), []problem{malformed}},
		{"malformed certID", &record, "not-a-cert-id", []problem{malformed}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newRecordsEnv(t, recordsClock())
			ctx := t.Context()
			if tc.record != nil {
				if err := e.st.PutCert(ctx, *tc.record); err != nil {
					t.Fatal(err)
				}
			}
			var got []problem
			var placed []string
			for range tc.want {
				o, azs, err := e.newOrder(t, orderRequest{
					spec: e.adhoc, account: account, replaces: tc.certID,
					identifiers: []acme.Identifier{{Type: acme.DNS, Value: "www.localhost"}},
				})
				got = append(got, problemOf(err))
				if err == nil {
					placed = append(placed, o.ID)
					continue
				}
				// Nothing of a refused order reaches the store.
				if o.ID != "" {
					if _, err := e.inner.GetOrder(ctx, o.ID); !missing(err) {
						t.Errorf("refused order %s: GetOrder = %v, want not found", o.ID, err)
					}
				}
				for _, az := range azs {
					if _, err := e.inner.GetAuthorization(ctx, az.ID); !missing(err) {
						t.Errorf("refused order's authorization %s: GetAuthorization = %v, want not found", az.ID, err)
					}
					for _, ch := range az.Challenges {
						if _, err := e.inner.GetChallenge(ctx, ch.ID, az.ID); !missing(err) {
							t.Errorf("refused order's challenge %s: GetChallenge = %v, want not found", ch.ID, err)
						}
					}
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("outcomes (-want +got):\n%s", diff)
			}

			if tc.record != nil {
				want := *tc.record
				if len(placed) > 0 {
					want.ReplacedBy = placed[0]
				}
				rec, err := e.st.Cert(ctx, serial)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(want, rec); diff != "" {
					t.Errorf("certificate record (-want +got):\n%s", diff)
				}
			}
			if len(placed) == 0 {
				if _, err := e.data.Get(orderIndexTable, []byte(account)); !store.IsNotFound(err) {
					t.Errorf("order index written for refused orders (err %v)", err)
				}
				return
			}
			if diff := cmp.Diff(placed, e.orderIndex(t, account)); diff != "" {
				t.Errorf("order index (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRecordsFinalize(t *testing.T) {
	t.Parallel()
	root := testpki.New(t, "records root")
	inter := root.Intermediate(t, "records intermediate")
	const spiffeID = "spiffe://crank.internal/worker/alpha"
	workerLeaf, _ := inter.Leaf(t, spiffeID)
	plainLeaf, _ := inter.Issue(t, &x509.Certificate{DNSNames: []string{"www.localhost"}})
	alpha := provisioner.Identity{Worker: "alpha", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	for _, tc := range []struct {
		name    string
		workers bool
		leaf    *x509.Certificate
		// held: the authority's record of the signature is held, as when
		// the authority signs.
		held bool
		// finalize: CreateCertificate runs in a finalize of the order
		// (st.orderID set, claim held), then UpdateOrder.
		finalize bool
	}{
		{name: "worker", workers: true, leaf: workerLeaf, held: true, finalize: true},
		{name: "plain", leaf: plainLeaf, held: true, finalize: true},
		{name: "outside a finalize", leaf: plainLeaf, held: true},
		{name: "without the authority's record", leaf: plainLeaf, finalize: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clock := recordsClock()
			e, twin := newRecordsEnv(t, clock), newRecordsEnv(t, clock)
			const account = "acct"
			spec, identity := e.adhoc, (*provisioner.Identity)(nil)
			ids := []acme.Identifier{{Type: acme.DNS, Value: "www.localhost"}}
			if tc.workers {
				spec, identity = e.workers, &alpha
				ids = []acme.Identifier{{Type: acme.IP, Value: "127.0.0.1"}}
			}
			o, _, err := e.newOrder(t, orderRequest{spec: spec, account: account, identity: identity, identifiers: ids})
			if err != nil {
				t.Fatalf("CreateOrder: %v", err)
			}
			// The order was created a while ago: its update must keep
			// createdAt, as smallstep's does.
			var created map[string]any
			if err := json.Unmarshal(e.raw(t, ordersTable, o.ID), &created); err != nil {
				t.Fatal(err)
			}
			created["createdAt"] = stepNow().Add(-time.Hour).Format(time.RFC3339)
			b, err := json.Marshal(created)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.data.Set(ordersTable, []byte(o.ID), b); err != nil {
				t.Fatal(err)
			}

			ctx := e.requestCtx(t, spec, account, identity)
			st := stateFrom(ctx)
			if tc.finalize {
				st.orderID = o.ID
				if err := e.d.claim(ctx, o.ID); err != nil {
					t.Fatal(err)
				}
			}
			prov := stepProvisioner(spec)
			if tc.held {
				if err := e.d.held.StoreCertificateChain(prov, tc.leaf, inter.Cert); err != nil {
					t.Fatal(err)
				}
			}
			before, err := e.inner.GetOrder(ctx, o.ID)
			if err != nil {
				t.Fatal(err)
			}
			rawBefore := e.raw(t, ordersTable, o.ID)
			serial := tc.leaf.SerialNumber.String()
			from := time.Now()
			cert := &acme.Certificate{AccountID: account, OrderID: o.ID, Leaf: tc.leaf, Intermediates: []*x509.Certificate{inter.Cert}}
			if err := e.d.CreateCertificate(ctx, cert); err != nil {
				t.Fatalf("CreateCertificate: %v", err)
			}
			checkRecordID(t, "certificate", cert.ID)
			if tc.finalize {
				// Held for the order update: nothing is downloadable yet.
				if _, err := e.inner.GetCertificateBySerial(ctx, serial); !missing(err) {
					t.Errorf("before the order update: GetCertificateBySerial = %v, want not found", err)
				}
				o.CertificateID, o.Status = cert.ID, acme.StatusValid
				if err := e.d.UpdateOrder(ctx, o); err != nil {
					t.Fatalf("UpdateOrder: %v", err)
				}
			}
			to := time.Now()
			if st.finalize != nil || st.claim != "" {
				t.Errorf("request state after completion: finalize %v, claim %q; want both cleared", st.finalize, st.claim)
			}

			// smallstep's ACME records.
			wantCert := &acme.Certificate{ID: cert.ID, AccountID: account, OrderID: o.ID, Leaf: tc.leaf, Intermediates: []*x509.Certificate{inter.Cert}}
			got, err := e.inner.GetCertificate(ctx, cert.ID)
			if err != nil {
				t.Fatalf("GetCertificate: %v", err)
			}
			if diff := cmp.Diff(wantCert, got, sameCert); diff != "" {
				t.Errorf("certificate (-want +got):\n%s", diff)
			}
			got, err = e.inner.GetCertificateBySerial(ctx, serial)
			if err != nil {
				t.Fatalf("GetCertificateBySerial: %v", err)
			}
			if diff := cmp.Diff(wantCert, got, sameCert); diff != "" {
				t.Errorf("certificate by serial (-want +got):\n%s", diff)
			}
			wantOrder := *before
			wantOrder.Status, wantOrder.CertificateID = acme.StatusValid, cert.ID
			gotOrder, err := e.inner.GetOrder(ctx, o.ID)
			if err != nil {
				t.Fatalf("GetOrder: %v", err)
			}
			if diff := cmp.Diff(&wantOrder, gotOrder); diff != "" {
				t.Errorf("order (-want +got):\n%s", diff)
			}
			// smallstep's UpdateOrder changes status, error and
			// certificate, and nothing else.
			var updated map[string]any
			if err := json.Unmarshal(rawBefore, &updated); err != nil {
				t.Fatal(err)
			}
			updated["status"], updated["certificate"] = string(acme.StatusValid), cert.ID
			var gotRaw map[string]any
			if err := json.Unmarshal(e.raw(t, ordersTable, o.ID), &gotRaw); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(updated, gotRaw); diff != "" {
				t.Errorf("stored order differs from smallstep's update (-smallstep +crank-ca):\n%s", diff)
			}

			// crank-ca's record.
			wantRec := store.CertRecord{
				Serial: serial, Provisioner: spec.Name, AccountID: account, OrderID: o.ID,
				DNSNames: tc.leaf.DNSNames, NotBefore: tc.leaf.NotBefore, NotAfter: tc.leaf.NotAfter,
				IssuedAt: clock, AKI: hex.EncodeToString(inter.Cert.SubjectKeyId),
			}
			if tc.workers {
				wantRec.Worker, wantRec.SPIFFEID, wantRec.IPs = "alpha", spiffeID, []string{"127.0.0.1"}
			}
			rec, err := e.st.Cert(ctx, serial)
			if err != nil {
				t.Fatalf("crank-ca's record: %v", err)
			}
			if diff := cmp.Diff(wantRec, rec); diff != "" {
				t.Errorf("crank-ca's record (-want +got):\n%s", diff)
			}

			// The authority's record, through smallstep's getters.
			authority := &stepdb.DB{DB: e.data.DB}
			if tc.held {
				leaf, err := authority.GetCertificate(serial)
				if err != nil {
					t.Fatalf("authority GetCertificate: %v", err)
				}
				if !leaf.Equal(tc.leaf) {
					t.Error("authority GetCertificate: not the signed certificate")
				}
				data, err := authority.GetCertificateData(serial)
				if err != nil {
					t.Fatalf("authority GetCertificateData: %v", err)
				}
				wantData := &stepdb.CertificateData{Provisioner: &stepdb.ProvisionerData{ID: spec.id(), Name: spec.Name, Type: "ACME"}}
				if diff := cmp.Diff(wantData, data); diff != "" {
					t.Errorf("authority certificate data (-want +got):\n%s", diff)
				}
				tauthority := &stepdb.DB{DB: twin.data.DB}
				if err := tauthority.StoreCertificateChain(prov, tc.leaf, inter.Cert); err != nil {
					t.Fatal(err)
				}
				for _, table := range [][]byte{x509CertsTable, x509CertsDataTable} {
					if ours, theirs := e.raw(t, table, serial), twin.raw(t, table, serial); !bytes.Equal(ours, theirs) {
						t.Errorf("%s: %q, smallstep writes %q", table, ours, theirs)
					}
				}
			} else if _, err := authority.GetCertificate(serial); err == nil {
				t.Error("authority GetCertificate found a record nobody held")
			}
			if _, ok := e.d.held.take(serial); ok {
				t.Error("the authority's record is still held after the order update")
			}

			// The same certificate written by smallstep.
			tcert := &acme.Certificate{AccountID: account, OrderID: o.ID, Leaf: tc.leaf, Intermediates: []*x509.Certificate{inter.Cert}}
			if err := twin.inner.CreateCertificate(ctx, tcert); err != nil {
				t.Fatal(err)
			}
			rename := map[string]string{tcert.ID: cert.ID}
			stored := e.raw(t, acmeCertsTable, cert.ID)
			sameShape(t, "certificate", stored, twin.raw(t, acmeCertsTable, tcert.ID), rename)
			checkCreatedAt(t, "certificate", stored, from, to, false)
			sameShape(t, "serial index", e.raw(t, serialsTable, serial), twin.raw(t, serialsTable, serial), rename)

			if tc.finalize {
				if err := e.st.ClaimOrder(ctx, o.ID, "next", claimTTL); err != nil {
					t.Errorf("claim after completion: %v (not released)", err)
				}
			}
		})
	}
}

// TestRecordsAbandonedFinalize ends finalize requests that signed but did
// not complete their order: the signature still gets the authority's
// record, and nothing else is written.
func TestRecordsAbandonedFinalize(t *testing.T) {
	t.Parallel()
	root := testpki.New(t, "records root")
	inter := root.Intermediate(t, "records intermediate")
	for _, tc := range []struct {
		name string
		// meanwhile: another request completed the order after this one
		// read it.
		meanwhile bool
		// update is UpdateOrder's outcome.
		update problem
	}{
		{name: "ended before the order update"},
		{name: "finalized meanwhile", meanwhile: true, update: problem{"urn:ietf:params:acme:error:orderNotReady", http.StatusForbidden}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newRecordsEnv(t, recordsClock())
			const account = "acct"
			o, _, err := e.newOrder(t, orderRequest{
				spec: e.adhoc, account: account,
				identifiers: []acme.Identifier{{Type: acme.DNS, Value: "www.localhost"}},
			})
			if err != nil {
				t.Fatalf("CreateOrder: %v", err)
			}
			ctx := e.requestCtx(t, e.adhoc, account, nil)
			st := stateFrom(ctx)
			st.orderID = o.ID
			if err := e.d.claim(ctx, o.ID); err != nil {
				t.Fatal(err)
			}
			leaf, _ := inter.Issue(t, &x509.Certificate{DNSNames: []string{"www.localhost"}})
			serial := leaf.SerialNumber.String()
			prov := stepProvisioner(e.adhoc)
			if err := e.d.held.StoreCertificateChain(prov, leaf, inter.Cert); err != nil {
				t.Fatal(err)
			}
			cert := &acme.Certificate{AccountID: account, OrderID: o.ID, Leaf: leaf, Intermediates: []*x509.Certificate{inter.Cert}}
			if err := e.d.CreateCertificate(ctx, cert); err != nil {
				t.Fatalf("CreateCertificate: %v", err)
			}
			if tc.meanwhile {
				done := *o
				done.Status, done.CertificateID = acme.StatusValid, "elsewhere"
				if err := e.inner.UpdateOrder(ctx, &done); err != nil {
					t.Fatal(err)
				}
			}
			before, err := e.inner.GetOrder(ctx, o.ID)
			if err != nil {
				t.Fatal(err)
			}
			if tc.meanwhile {
				o.CertificateID, o.Status = cert.ID, acme.StatusValid
				if diff := cmp.Diff(tc.update, problemOf(e.d.UpdateOrder(ctx, o))); diff != "" {
					t.Errorf("UpdateOrder (-want +got):\n%s", diff)
				}
			}
			e.d.releaseClaim(ctx) // the request ends

			authority := &stepdb.DB{DB: e.data.DB}
			if got, err := authority.GetCertificate(serial); err != nil || !got.Equal(leaf) {
				t.Errorf("authority GetCertificate = %v; want the signed certificate", err)
			}
			data, err := authority.GetCertificateData(serial)
			if err != nil {
				t.Fatalf("authority GetCertificateData: %v", err)
			}
			wantData := &stepdb.CertificateData{Provisioner: &stepdb.ProvisionerData{ID: e.adhoc.id(), Name: e.adhoc.Name, Type: "ACME"}}
			if diff := cmp.Diff(wantData, data); diff != "" {
				t.Errorf("authority certificate data (-want +got):\n%s", diff)
			}
			if _, ok := e.d.held.take(serial); ok {
				t.Error("the authority's record is still held")
			}
			if _, err := e.inner.GetCertificate(ctx, cert.ID); !missing(err) {
				t.Errorf("GetCertificate = %v, want not found", err)
			}
			if _, err := e.inner.GetCertificateBySerial(ctx, serial); !missing(err) {
				t.Errorf("GetCertificateBySerial = %v, want not found", err)
			}
			if _, err := e.st.Cert(ctx, serial); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("crank-ca's record: %v, want not found", err)
			}
			after, err := e.inner.GetOrder(ctx, o.ID)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(before, after); diff != "" {
				t.Errorf("order changed (-before +after):\n%s", diff)
			}
			if err := e.st.ClaimOrder(ctx, o.ID, "next", claimTTL); err != nil {
				t.Errorf("claim after the request: %v (not released)", err)
			}
		})
	}
}

// TestRecordsListingSkipsSweptOrders: an order the account's index still
// names but retention deleted is skipped by the listing (smallstep reports
// the missing order as malformed, which would fail the whole listing).
func TestRecordsListingSkipsSweptOrders(t *testing.T) {
	t.Parallel()
	e := newRecordsEnv(t, recordsClock())
	const account = "acc-swept"
	var ids []string
	for range 2 {
		o, _, err := e.newOrder(t, orderRequest{spec: e.adhoc, account: account,
			identifiers: []acme.Identifier{{Type: acme.DNS, Value: "a.localhost"}}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, o.ID)
	}
	if err := e.data.Del(ordersTable, []byte(ids[0])); err != nil {
		t.Fatal(err)
	}
	got, err := e.d.GetOrdersByAccountID(t.Context(), account)
	if err != nil {
		t.Fatalf("listing with a swept order: %v", err)
	}
	if len(got) != 1 || got[0] != ids[1] {
		t.Errorf("listing = %v, want only %s", got, ids[1])
	}
}
