package store

import (
	"encoding/json"
	"testing"
	"time"
)

// TestSweepKeepsIndexedAndLiveRecords checks the cutoff rules on synthetic
// records shaped like smallstep's.
func TestSweepKeepsIndexedAndLiveRecords(t *testing.T) {
	t.Parallel()
	db := openBolt(t)
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for _, tbl := range [][]byte{ordersTable, accountOrdersTable, authzTable, challengeTable, nonceTable, tokenUsesTable} {
		if err := db.CreateTable(tbl); err != nil {
			t.Fatal(err)
		}
	}
	put := func(tbl []byte, key string, v any) {
		t.Helper()
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Set(tbl, []byte(key), b); err != nil {
			t.Fatal(err)
		}
	}
	old, recent := now.Add(-72*time.Hour), now.Add(-time.Hour)
	put(ordersTable, "old", map[string]any{"accountID": "acc", "expiresAt": old, "notAfter": old})
	put(ordersTable, "old-indexed", map[string]any{"accountID": "acc", "expiresAt": old, "notAfter": old})
	put(ordersTable, "recent", map[string]any{"accountID": "acc", "expiresAt": recent, "notAfter": now.Add(time.Hour)})
	put(accountOrdersTable, "acc", []string{"old-indexed"})
	put(authzTable, "az-old", map[string]any{"expiresAt": old, "challengeIDs": []string{"ch-1", "ch-2"}})
	put(authzTable, "az-recent", map[string]any{"expiresAt": recent, "challengeIDs": []string{"ch-3"}})
	for _, ch := range []string{"ch-1", "ch-2", "ch-3"} {
		put(challengeTable, ch, map[string]any{})
	}
	put(nonceTable, "n-old", map[string]any{"CreatedAt": now.Add(-2 * time.Hour)})
	put(nonceTable, "n-new", map[string]any{"CreatedAt": now.Add(-time.Minute)})
	put(tokenUsesTable, "kid-old", Binding{KID: "kid-old", TokenExpiresAt: old})
	put(tokenUsesTable, "kid-live", Binding{KID: "kid-live", TokenExpiresAt: recent})

	r := NewRetainer(RetainerConfig{DB: db, Keep: 24 * time.Hour, Now: func() time.Time { return now }})
	st, err := r.Sweep(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// The first sweep indexes these records (written without the index)
	// and then deletes through it.
	want := Stats{Orders: 1, Authorizations: 1, Challenges: 2, Nonces: 1, SpentTokens: 1, Indexed: 9}
	if st != want {
		t.Errorf("stats = %+v, want %+v", st, want)
	}
	for _, tc := range []struct {
		tbl  []byte
		key  string
		kept bool
	}{
		{ordersTable, "old", false},
		{ordersTable, "old-indexed", true},
		{ordersTable, "recent", true},
		{authzTable, "az-old", false},
		{authzTable, "az-recent", true},
		{challengeTable, "ch-1", false},
		{challengeTable, "ch-3", true},
		{nonceTable, "n-old", false},
		{nonceTable, "n-new", true},
		{tokenUsesTable, "kid-old", false},
		{tokenUsesTable, "kid-live", true},
	} {
		_, err := db.Get(tc.tbl, []byte(tc.key))
		if kept := err == nil; kept != tc.kept {
			t.Errorf("%s/%s kept=%v, want %v", tc.tbl, tc.key, kept, tc.kept)
		}
	}
}
