package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
)

func TestExpiryKey(t *testing.T) {
	t.Parallel()
	base := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		at   time.Time
		want uint64
	}{
		{"whole second", base, uint64(base.Unix())},
		{"rounded up", base.Add(time.Nanosecond), uint64(base.Unix()) + 1},
		{"before 1970", time.Unix(-5, 0), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k := expiry{kind: kindCert, at: tc.at, id: "123"}.key()
			kind, sec, id, ok := parseExpiryKey(k)
			if !ok || kind != kindCert || sec != tc.want || id != "123" {
				t.Errorf("parse(%q) = %c %d %q %v, want c %d 123", k, kind, sec, id, ok, tc.want)
			}
		})
	}

	// Keys sort by kind, then time, then id; a cutoff between two seconds
	// splits a kind's range exactly.
	keys := [][]byte{
		expiry{kind: kindOrder, at: base.Add(time.Hour), id: "a"}.key(),
		expiry{kind: kindCert, at: base.Add(time.Hour), id: "a"}.key(),
		expiry{kind: kindCert, at: base, id: "b"}.key(),
		expiry{kind: kindCert, at: base, id: "a"}.key(),
		expiry{kind: kindAuthz, at: base.Add(48 * time.Hour), id: "z"}.key(),
		expiryStateKey,
	}
	slices.SortFunc(keys, bytes.Compare)
	var got []string
	for _, k := range keys {
		got = append(got, printableKey(k))
	}
	want := []string{
		`"\x00state"`,
		"a/2026-12-01T12:00:00Z/z",
		"c/2026-11-29T12:00:00Z/a",
		"c/2026-11-29T12:00:00Z/b",
		"c/2026-11-29T13:00:00Z/a",
		"o/2026-11-29T13:00:00Z/a",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("key order (-want +got):\n%s", diff)
	}
	cut, _ := cutoffSecond(base.Add(time.Hour - time.Nanosecond))
	if _, sec, _, _ := parseExpiryKey(expiry{kind: kindCert, at: base.Add(time.Hour - 2*time.Nanosecond), id: "x"}.key()); sec <= cut {
		t.Errorf("an entry expiring after the cutoff (second %d) is due at cutoff second %d", sec, cut)
	}
}

// TestIndexMethods checks what the write-time hooks store.
func TestIndexMethods(t *testing.T) {
	t.Parallel()
	b := openCrankBolt(t, filepath.Join(t.TempDir(), "s.db"))
	createTables(t, b)
	s, err := New(Config{DB: b})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	at := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	err = s.Txn(ctx, func(kv KV) error {
		return errors.Join(
			IndexCertificateIn(kv, "42", "cert-1", at),
			IndexOrderIn(kv, "o-1", "acc-1", at, at.Add(time.Hour)),
			IndexOrderIn(kv, "o-2", "acc-1", at.Add(time.Hour), at),
			IndexAuthorizationIn(kv, "az-1", []string{"ch-1", "ch-2"}, at))
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		s.IndexRevocation(ctx, "42", at),
		s.IndexAccount(ctx, "acc-1", at),
		s.indexSpentToken(tokenUseKey("kid"), at),
		s.indexSpentToken(tokenUseKey("no expiry"), time.Time{}),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	for name, err := range map[string]error{
		"a certificate without notAfter (it would be deleted at once)": s.Txn(ctx, func(kv KV) error { return IndexCertificateIn(kv, "43", "", time.Time{}) }),
		"an order without id":              s.Txn(ctx, func(kv KV) error { return IndexOrderIn(kv, "", "acc", at, at) }),
		"an account without creation time": s.IndexAccount(ctx, "acc-2", time.Time{}),
	} {
		if err == nil {
			t.Errorf("%s was indexed", name)
		}
	}
	es, err := b.Scan(expiryTable, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]expiryRef{}
	for _, e := range es {
		var ref expiryRef
		if len(e.Value) > 0 {
			if err := json.Unmarshal(e.Value, &ref); err != nil {
				t.Fatal(err)
			}
		}
		got[printableKey(e.Key)] = ref
	}
	want := map[string]expiryRef{
		"a/2026-11-29T12:00:00Z/az-1":                          {Challenges: []string{"ch-1", "ch-2"}},
		"c/2026-11-29T12:00:00Z/42":                            {Cert: "cert-1"},
		"o/2026-11-29T13:00:00Z/o-1":                           {Account: "acc-1"},
		"o/2026-11-29T13:00:00Z/o-2":                           {Account: "acc-1"},
		"r/2026-11-29T12:00:00Z/42":                            {},
		"t/2026-11-29T12:00:00Z/" + string(tokenUseKey("kid")): {},
		"u/2026-11-29T12:00:00Z/acc-1":                         {},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("index (-want +got):\n%s", diff)
	}
}

// retentionDriver opens a store for the retention tests: crank-ca's bbolt
// driver (a RangeScanner) or smallstep's (read whole, the fallback).
type retentionDriver struct {
	name string
	open func(t *testing.T) (nosql.DB, *countingDB)
}

var retentionDrivers = []retentionDriver{
	{"range scanner", func(t *testing.T) (nosql.DB, *countingDB) {
		c := &countingDB{DB: openCrankBolt(t, filepath.Join(t.TempDir(), "s.db"))}
		return countingScanDB{c}, c
	}},
	{"list fallback", func(t *testing.T) (nosql.DB, *countingDB) {
		c := &countingDB{DB: openBolt(t)}
		return c, c
	}},
	// Skipped under -short or without PostgreSQL installed.
	{"postgresql", func(t *testing.T) (nosql.DB, *countingDB) {
		c := &countingDB{DB: startTestPG(t).open(t, uniqueDB("retention"))}
		return countingScanDB{c}, c
	}},
}

// keysIn returns which of keys a table holds.
func keysIn(t *testing.T, db nosql.DB, table []byte, keys ...string) []string {
	t.Helper()
	var out []string
	for _, k := range keys {
		switch _, err := db.Get(table, []byte(k)); {
		case err == nil:
			out = append(out, k)
		case !database.IsErrNotFound(err):
			t.Fatal(err)
		}
	}
	return out
}

// issuanceKeys lists every record an issuance wrote, by table.
func issuanceKeys(iss *issuance) map[string][]string {
	return map[string][]string{
		string(ordersTable):        {iss.Order},
		string(authzTable):         {iss.Authz},
		string(challengeTable):     iss.Challenges,
		string(acmeCertsTable):     {iss.CertID},
		string(certBySerialTable):  {iss.Serial},
		string(x509CertsTable):     {iss.Serial},
		string(x509CertsDataTable): {iss.Serial},
		string(certsTable):         {iss.Serial},
	}
}

// checkIssuance fails unless the records of iss are all there in the
// tables kept names and gone from the others.
func checkIssuance(t *testing.T, db nosql.DB, iss *issuance, kept map[string]bool) {
	t.Helper()
	for table, keys := range issuanceKeys(iss) {
		got := keysIn(t, db, []byte(table), keys...)
		if kept[table] != (len(got) == len(keys)) || (!kept[table] && len(got) > 0) {
			t.Errorf("issuance at %s: %s holds %v of %v, want kept=%v", iss.At.Format(time.RFC3339), table, got, keys, kept[table])
		}
	}
}

var allKept = map[string]bool{
	string(ordersTable): true, string(authzTable): true, string(challengeTable): true, string(acmeCertsTable): true,
	string(certBySerialTable): true, string(x509CertsTable): true, string(x509CertsDataTable): true, string(certsTable): true,
}

func indexKeys(t *testing.T, db nosql.DB) []string {
	t.Helper()
	es, err := db.List(expiryTable)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, printableKey(e.Key))
	}
	slices.Sort(out)
	return out
}

// TestSweepThroughIndex issues through the write-time hooks' index entries
// and sweeps in small batches: expired issuances go entirely (but an order
// its account's order index still lists, which is looked at again a day
// later), live ones stay, and no table is read whole (with a RangeScanner;
// the fallback reads the index only).
func TestSweepThroughIndex(t *testing.T) {
	t.Parallel()
	for _, drv := range retentionDrivers {
		t.Run(drv.name, func(t *testing.T) {
			t.Parallel()
			db, counts := drv.open(t)
			createTables(t, db)
			s, err := New(Config{DB: db})
			if err != nil {
				t.Fatal(err)
			}
			now := time.Date(2026, 11, 10, 12, 0, 0, 0, time.UTC)
			r := NewRetainer(RetainerConfig{DB: db, Keep: 24 * time.Hour, Batch: 4, Now: func() time.Time { return now }})
			if st, err := r.Sweep(t.Context()); err != nil || st != (Stats{}) {
				t.Fatalf("sweep of the empty store = %+v, %v", st, err)
			}

			is := newIssuer(t, 3)
			for _, w := range []string{"a", "b"} {
				if err := db.Update(is.account(t, w, now.Add(-100*time.Hour))); err != nil {
					t.Fatal(err)
				}
			}
			var expired, live []*issuance
			for i := range 10 {
				w := "a"
				if i >= 6 {
					w = "b"
				}
				expired = append(expired, &issuance{Worker: w, At: now.Add(-60*time.Hour + time.Duration(i)*time.Minute), Life: time.Hour})
			}
			for i := range 3 {
				live = append(live, &issuance{Worker: "b", At: now.Add(-time.Hour + time.Duration(i)*time.Minute), Life: time.Hour})
			}
			for _, iss := range append(slices.Clone(expired), live...) {
				if err := db.Update(is.write(t, iss)); err != nil {
					t.Fatal(err)
				}
			}
			// One expired and one live certificate were revoked.
			for _, iss := range []*issuance{expired[2], live[0]} {
				if err := db.Set(revokedTable, []byte(iss.Serial), mustJSON(t, map[string]any{"Serial": iss.Serial, "ExpiresAt": iss.At.Add(iss.Life)})); err != nil {
					t.Fatal(err)
				}
				if err := s.IndexRevocation(t.Context(), iss.Serial, iss.At.Add(iss.Life)); err != nil {
					t.Fatal(err)
				}
			}
			counts.listed()

			st, err := r.Sweep(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			want := Stats{Certificates: 10, Orders: 9, Authorizations: 10, Challenges: 30, Revocations: 1, SpentTokens: 2}
			if st != want {
				t.Errorf("stats = %+v, want %+v", st, want)
			}
			wantListed := map[string]int(nil)
			if drv.name == "list fallback" {
				wantListed = map[string]int{string(expiryTable): 1}
			}
			if diff := cmp.Diff(wantListed, counts.listed()); diff != "" {
				t.Errorf("tables read whole (-want +got):\n%s", diff)
			}

			for i, iss := range expired {
				var kept map[string]bool
				if i == 5 { // a's latest order, listed in its order index
					kept = map[string]bool{string(ordersTable): true}
				}
				checkIssuance(t, db, iss, kept)
			}
			for _, iss := range live {
				checkIssuance(t, db, iss, allKept)
			}
			if got := keysIn(t, db, revokedTable, expired[2].Serial, live[0].Serial); !slices.Equal(got, []string{live[0].Serial}) {
				t.Errorf("revocations kept: %v, want only the live one", got)
			}
			cutoff := now.Add(-24 * time.Hour)
			wantIndex := []string{
				printableKey(expiry{kind: kindOrder, at: cutoff.Add(orderRecheck), id: expired[5].Order}.key()),
				printableKey(expiry{kind: kindRevocation, at: live[0].At.Add(time.Hour), id: live[0].Serial}.key()),
				printableKey(expiry{kind: kindAccount, at: now.Add(-100 * time.Hour), id: "acc-a"}.key()),
				printableKey(expiry{kind: kindAccount, at: now.Add(-100 * time.Hour), id: "acc-b"}.key()),
				printableKey(expiryStateKey),
			}
			for _, iss := range live {
				wantIndex = append(wantIndex,
					printableKey(expiry{kind: kindCert, at: iss.At.Add(time.Hour), id: iss.Serial}.key()),
					printableKey(expiry{kind: kindAuthz, at: iss.At.Add(24 * time.Hour), id: iss.Authz}.key()),
					printableKey(orderExpiry(iss.Order, "", iss.At.Add(24*time.Hour), iss.At.Add(time.Hour)).key()))
			}
			slices.Sort(wantIndex)
			if diff := cmp.Diff(wantIndex, indexKeys(t, db)); diff != "" {
				t.Errorf("index after the sweep (-want +got):\n%s", diff)
			}

			// A day later, a's order is looked at again and still kept;
			// once a ordered again (smallstep pruned it from the index),
			// it goes.
			now = now.Add(orderRecheck)
			if st, err := r.Sweep(t.Context()); err != nil || st.Orders != 0 {
				t.Errorf("sweep a day later = %+v, %v; want a's listed order kept", st, err)
			}
			if err := db.Set(accountOrdersTable, []byte("acc-a"), []byte(`["newer"]`)); err != nil {
				t.Fatal(err)
			}
			now = now.Add(orderRecheck)
			if st, err := r.Sweep(t.Context()); err != nil || st.Orders < 1 {
				t.Errorf("sweep after a ordered again = %+v, %v; want its old order deleted", st, err)
			}
			if got := keysIn(t, db, ordersTable, expired[5].Order); len(got) != 0 {
				t.Errorf("a's old order kept after it left the order index")
			}
		})
	}
}

// TestSweepLegacyPass sweeps a store written without the index: the first
// sweep indexes every record once and deletes what is due through the
// index; later sweeps read no table whole and delete the rest when due.
func TestSweepLegacyPass(t *testing.T) {
	t.Parallel()
	for _, drv := range retentionDrivers {
		t.Run(drv.name, func(t *testing.T) {
			t.Parallel()
			db, counts := drv.open(t)
			createTables(t, db)
			now := time.Date(2026, 11, 10, 12, 0, 0, 0, time.UTC)
			is := newIssuer(t, 1)
			is.index = false
			if err := db.Update(is.account(t, "a", now.Add(-100*time.Hour))); err != nil {
				t.Fatal(err)
			}
			var old, young []*issuance
			for i := range 5 {
				old = append(old, &issuance{Worker: "a", At: now.Add(-60*time.Hour + time.Duration(i)*time.Minute), Life: time.Hour})
			}
			for i := range 2 {
				young = append(young, &issuance{Worker: "a", At: now.Add(-time.Hour + time.Duration(i)*time.Minute), Life: time.Hour})
			}
			for _, iss := range append(slices.Clone(old), young...) {
				if err := db.Update(is.write(t, iss)); err != nil {
					t.Fatal(err)
				}
			}
			// Nonces smallstep stored before crank-ca's were stateless.
			for k, age := range map[string]time.Duration{"n-old": 2 * time.Hour, "n-new": time.Minute} {
				if err := db.Set(nonceTable, []byte(k), mustJSON(t, map[string]any{"ID": k, "CreatedAt": now.Add(-age)})); err != nil {
					t.Fatal(err)
				}
			}

			r := NewRetainer(RetainerConfig{DB: db, Keep: 24 * time.Hour, Batch: 3, Now: func() time.Time { return now }})
			st, err := r.Sweep(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			// Indexed: 7 certificates, orders and authorizations, a spent
			// token, an account and 2 nonces.
			want := Stats{Certificates: 5, Orders: 5, Authorizations: 5, Challenges: 5, SpentTokens: 1, Nonces: 1, Indexed: 25}
			if st != want {
				t.Errorf("first sweep = %+v, want %+v", st, want)
			}
			for _, iss := range old {
				checkIssuance(t, db, iss, nil)
			}
			for _, iss := range young {
				checkIssuance(t, db, iss, allKept)
			}

			counts.listed()
			if st, err := r.Sweep(t.Context()); err != nil || st != (Stats{}) {
				t.Errorf("second sweep = %+v, %v; want nothing to do", st, err)
			}
			wantListed := map[string]int(nil)
			if drv.name == "list fallback" {
				wantListed = map[string]int{string(expiryTable): 1}
			}
			if diff := cmp.Diff(wantListed, counts.listed()); diff != "" {
				t.Errorf("tables read whole by the second sweep (-want +got):\n%s", diff)
			}

			now = now.Add(100 * time.Hour)
			st, err = r.Sweep(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			// The latest order stays: a's order index lists it.
			want = Stats{Certificates: 2, Orders: 1, Authorizations: 2, Challenges: 2, Nonces: 1}
			if st != want {
				t.Errorf("sweep once all expired = %+v, want %+v", st, want)
			}
			checkIssuance(t, db, young[0], nil)
			checkIssuance(t, db, young[1], map[string]bool{string(ordersTable): true})
		})
	}
}

// cancellingDB cancels a context at its first transaction.
type cancellingDB struct {
	nosql.DB
	cancel context.CancelFunc
}

func (c cancellingDB) Update(tx *database.Tx) error {
	c.cancel()
	return c.DB.Update(tx)
}

func (c cancellingDB) Scan(bucket, start []byte, limit int) ([]*database.Entry, error) {
	return c.DB.(RangeScanner).Scan(bucket, start, limit)
}

// TestSweepStopsWhenCancelled: a sweep stops between batches once its
// context is done, and the next one carries on.
func TestSweepStopsWhenCancelled(t *testing.T) {
	t.Parallel()
	b := openCrankBolt(t, filepath.Join(t.TempDir(), "s.db"))
	createTables(t, b)
	now := time.Date(2026, 11, 10, 12, 0, 0, 0, time.UTC)
	r := NewRetainer(RetainerConfig{DB: b, Keep: 0, Batch: 2, Now: func() time.Time { return now }})
	if _, err := r.Sweep(t.Context()); err != nil {
		t.Fatal(err)
	}
	is := newIssuer(t, 1)
	for i := range 7 {
		if err := b.Update(is.write(t, &issuance{Worker: "a", At: now.Add(-48*time.Hour + time.Duration(i)*time.Minute), Life: time.Hour})); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r = NewRetainer(RetainerConfig{DB: cancellingDB{DB: b, cancel: cancel}, Keep: 0, Batch: 2, Now: func() time.Time { return now }})
	st, err := r.Sweep(ctx)
	if err == nil || ctx.Err() == nil {
		t.Fatalf("cancelled sweep = %+v, %v; want the context's error", st, err)
	}
	if want := (Stats{Certificates: 2}); st != want {
		t.Errorf("cancelled sweep deleted %+v, want one batch %+v", st, want)
	}
	r = NewRetainer(RetainerConfig{DB: b, Keep: 0, Batch: 2, Now: func() time.Time { return now }})
	st, err = r.Sweep(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := (Stats{Certificates: 5, Orders: 6, Authorizations: 7, Challenges: 7}); st != want {
		t.Errorf("next sweep = %+v, want %+v", st, want)
	}
}
