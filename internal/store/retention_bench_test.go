package store

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
	bolt "go.etcd.io/bbolt"

	"github.com/crank-platform/crank-ca/internal/testpki"
)

var retentionIssuances = flag.Int("retention.issuances", 500,
	"issuances TestRetentionStoreSize writes before its retention pass (100000 for the figure in the docs)")

// issuer writes issuances the way smallstep and crank-ca store them, in
// smallstep's JSON shapes (acme/db/nosql, db): an order with one
// identifier, its authorization and challenges, the certificate in
// smallstep's tables and crank-ca's record, and the expiry index entries
// the write-time hooks add. Accounts (one per worker) come with their key
// index entry, binding and spent token.
type issuer struct {
	ca *testpki.CA
	// chain is the intermediate PEM that acme_certs stores with each leaf.
	chain []byte
	// challenges per authorization: 1 for pre-authorized workers, 3 for
	// a DNS name on an ordinary ACME provisioner.
	challenges int
	// index writes the expiry entries; off for data written before the
	// index existed.
	index bool
}

func newIssuer(t testing.TB, challenges int) *issuer {
	t.Helper()
	ca := testpki.New(t, "root").Intermediate(t, "intermediate")
	return &issuer{
		ca:         ca,
		chain:      pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}),
		challenges: challenges,
		index:      true,
	}
}

// issuance is one certificate of a worker, ordered at At.
type issuance struct {
	Worker string
	At     time.Time
	Life   time.Duration

	// Filled in by write.
	Order, Authz, CertID, Serial string
	Challenges                   []string
}

func (i *issuance) account() string { return "acc-" + i.Worker }

func randomID(t testing.TB) string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tables an issuance writes to, for counting.
var issuanceTables = [][]byte{
	ordersTable, accountOrdersTable, authzTable, challengeTable, acmeCertsTable, certBySerialTable,
	x509CertsTable, x509CertsDataTable, revokedTable, certsTable, expiryTable,
}

// createTables creates what smallstep's and crank-ca's constructors create.
func createTables(t testing.TB, db nosql.DB) {
	t.Helper()
	for _, tbl := range append(issuanceTables, accountsTable, accountByKeyTable, bindingTable, tokenUsesTable, nonceTable, orderClaimsTable) {
		if err := db.CreateTable(tbl); err != nil {
			t.Fatal(err)
		}
	}
}

// account returns the transaction that registers and binds a worker's
// account.
func (is *issuer) account(t testing.TB, worker string, at time.Time) *database.Tx {
	t.Helper()
	id := "acc-" + worker
	tx := new(database.Tx)
	tx.Set(accountsTable, []byte(id), mustJSON(t, map[string]any{
		"id": id, "key": map[string]string{"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
		"status": "valid", "locationPrefix": "https://ca.example/acme/workers/account/", "provisionerID": "acme/workers",
		"provisionerName": "workers", "createdAt": at, "deactivatedAt": time.Time{},
	}))
	tx.Set(accountByKeyTable, []byte("kid-"+worker), []byte(id))
	kid := "crank-token-" + worker
	b := mustJSON(t, Binding{AccountID: id, Provisioner: "workers", Worker: worker, KID: kid, BoundAt: at, TokenExpiresAt: at.Add(time.Hour)})
	tx.Set(bindingTable, []byte(id), b)
	tx.Set(tokenUsesTable, tokenUseKey(kid), b)
	if is.index {
		putTx(t, tx, expiry{kind: kindSpentToken, at: at.Add(time.Hour), id: string(tokenUseKey(kid))},
			expiry{kind: kindAccount, at: at, id: id})
	}
	return tx
}

func putTx(t testing.TB, tx *database.Tx, es ...expiry) {
	t.Helper()
	for _, e := range es {
		k, v, err := e.encode()
		if err != nil {
			t.Fatal(err)
		}
		tx.Set(expiryTable, k, v)
	}
}

// write returns the transaction that stores one finished issuance (the
// account's order index then lists this order only, as smallstep leaves it
// after the account's next new-order pruned the previous one).
func (is *issuer) write(t testing.TB, iss *issuance) *database.Tx {
	t.Helper()
	acc := iss.account()
	name := iss.Worker + ".workers.crank.internal"
	spiffe, err := url.Parse("spiffe://crank.internal/worker/" + iss.Worker)
	if err != nil {
		t.Fatal(err)
	}
	nb, na := iss.At.Add(-time.Minute), iss.At.Add(iss.Life)
	leaf, _ := is.ca.Issue(t, &x509.Certificate{
		NotBefore: nb, NotAfter: na, DNSNames: []string{name}, URIs: []*url.URL{spiffe},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
	iss.Order, iss.Authz, iss.CertID, iss.Serial = randomID(t), randomID(t), randomID(t), leaf.SerialNumber.String()
	iss.Challenges = nil
	expires := iss.At.Add(24 * time.Hour) // smallstep's order lifetime
	ident := map[string]string{"type": "dns", "value": name}
	tx := new(database.Tx)
	for _, typ := range []string{"http-01", "dns-01", "tls-alpn-01"}[:is.challenges] {
		ch := randomID(t)
		iss.Challenges = append(iss.Challenges, ch)
		tx.Set(challengeTable, []byte(ch), mustJSON(t, map[string]any{
			"id": ch, "accountID": acc, "type": typ, "status": "valid", "token": randomID(t)[:22], "value": name,
			"validatedAt": iss.At.Format(time.RFC3339), "createdAt": iss.At, "error": nil,
		}))
	}
	tx.Set(authzTable, []byte(iss.Authz), mustJSON(t, map[string]any{
		"id": iss.Authz, "accountID": acc, "identifier": ident, "status": "valid", "token": randomID(t)[:22],
		"challengeIDs": iss.Challenges, "wildcard": false, "createdAt": iss.At, "expiresAt": expires, "error": nil,
	}))
	tx.Set(ordersTable, []byte(iss.Order), mustJSON(t, map[string]any{
		"id": iss.Order, "accountID": acc, "provisionerID": "acme/workers", "identifiers": []any{ident},
		"authorizationIDs": []string{iss.Authz}, "status": "valid", "notBefore": nb, "notAfter": na,
		"createdAt": iss.At, "expiresAt": expires, "certificate": iss.CertID,
	}))
	tx.Set(accountOrdersTable, []byte(acc), mustJSON(t, []string{iss.Order}))
	tx.Set(x509CertsTable, []byte(iss.Serial), leaf.Raw)
	tx.Set(x509CertsDataTable, []byte(iss.Serial), []byte(`{"provisioner":{"id":"acme/workers","name":"workers","type":"ACME"}}`))
	tx.Set(acmeCertsTable, []byte(iss.CertID), mustJSON(t, map[string]any{
		"id": iss.CertID, "createdAt": iss.At, "accountID": acc, "orderID": iss.Order,
		"leaf": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}), "intermediates": is.chain,
	}))
	tx.Set(certBySerialTable, []byte(iss.Serial), mustJSON(t, map[string]string{"serial": iss.Serial, "certificateID": iss.CertID}))
	tx.Set(certsTable, []byte(iss.Serial), mustJSON(t, CertRecord{
		Serial: iss.Serial, Provisioner: "workers", Worker: iss.Worker, AccountID: acc, OrderID: iss.Order,
		SPIFFEID: spiffe.String(), DNSNames: []string{name}, IPs: []string{"127.0.0.1"},
		NotBefore: nb, NotAfter: na, IssuedAt: iss.At, AKI: fmt.Sprintf("%x", leaf.AuthorityKeyId),
	}))
	if is.index {
		putTx(t, tx,
			expiry{kind: kindAuthz, at: expires, id: iss.Authz, ref: expiryRef{Challenges: iss.Challenges}},
			orderExpiry(iss.Order, acc, expires, na),
			expiry{kind: kindCert, at: na, id: iss.Serial, ref: expiryRef{Cert: iss.CertID}})
	}
	return tx
}

// openCrankBolt opens crank-ca's bbolt driver, a RangeScanner.
func openCrankBolt(t testing.TB, path string) *Bolt {
	t.Helper()
	b, err := OpenBolt(BoltConfig{Path: path, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// countingDB counts whole-table reads; it hides the driver's Scan (the
// fallback), countingScanDB keeps it.
type countingDB struct {
	nosql.DB
	mu    sync.Mutex
	lists map[string]int
}

func (c *countingDB) List(bucket []byte) ([]*database.Entry, error) {
	c.mu.Lock()
	if c.lists == nil {
		c.lists = map[string]int{}
	}
	c.lists[string(bucket)]++
	c.mu.Unlock()
	return c.DB.List(bucket)
}

// listed returns and resets the counts.
func (c *countingDB) listed() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.lists
	c.lists = nil
	return l
}

type countingScanDB struct{ *countingDB }

func (c countingScanDB) Scan(bucket, start []byte, limit int) ([]*database.Entry, error) {
	return c.DB.(RangeScanner).Scan(bucket, start, limit)
}

// boltUsage reports the file size and the bytes in pages not free.
func boltUsage(t testing.TB, b *Bolt, path string) (file, used int64) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// Pages that hold data: every bucket's branch, leaf and overflow
	// pages (the rest of the file is free pages bbolt reuses).
	var pages int
	err = b.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(_ []byte, bk *bolt.Bucket) error {
			s := bk.Stats()
			pages += s.BranchPageN + s.BranchOverflowN + s.LeafPageN + s.LeafOverflowN
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size(), int64(pages) * int64(b.db.Info().PageSize)
}

// compactedSize copies the store into a fresh file, as bbolt's compact
// does, and returns that file's size: what the data alone takes.
func compactedSize(t testing.TB, b *Bolt) int64 {
	t.Helper()
	path := filepath.Join(t.TempDir(), "compact.db")
	dst, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := bolt.Compact(dst, b.db, 64<<20); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// countEntries counts the entries of the tables an issuance writes to.
func countEntries(t testing.TB, b *Bolt) map[string]int {
	t.Helper()
	out := map[string]int{}
	err := b.db.View(func(tx *bolt.Tx) error {
		for _, tbl := range issuanceTables {
			if bk := tx.Bucket(tbl); bk != nil {
				out[string(tbl)] = bk.Stats().KeyN
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// storeRun is one size measurement: n issuances by workers accounts spread
// evenly over span, each certificate valid for life, data kept for keep
// after expiry.
type storeRun struct {
	n, workers       int
	span, life, keep time.Duration
	// sweepEvery, when set, sweeps during the run as serve does; either
	// way a last pass runs once everything has expired.
	sweepEvery time.Duration
}

type storeFigures struct {
	// peak is the largest file size seen before the last pass; before is
	// the store right before it.
	peak, fileBefore, usedBefore, fileAfter, usedAfter, compactedAfter int64
	write, sweep                                                       time.Duration
	sweeps                                                             int
	// stats is the last pass's; total adds up every pass.
	stats, total Stats
	entriesAfter map[string]int
	listed       map[string]int
}

// measureStore writes a run's issuances into a fresh bbolt file with
// crank-ca's driver (16 writers, as concurrent clients, sharing group
// commits), then runs a last retention pass once everything has expired.
func measureStore(t testing.TB, run storeRun) storeFigures {
	t.Helper()
	path := filepath.Join(t.TempDir(), "crank-ca.db")
	b := openCrankBolt(t, path)
	db := &countingDB{DB: b}
	createTables(t, b)
	is := newIssuer(t, 1)
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	now := start
	r := NewRetainer(RetainerConfig{DB: countingScanDB{db}, Keep: run.keep, Now: func() time.Time { return now }})
	// The first sweep, on the empty store, runs the legacy pass.
	if _, err := r.Sweep(t.Context()); err != nil {
		t.Fatal(err)
	}
	for w := range run.workers {
		if err := b.Update(is.account(t, fmt.Sprint("w", w), start)); err != nil {
			t.Fatal(err)
		}
	}
	step := run.span / time.Duration(run.n)
	at := func(i int) time.Time { return start.Add(time.Duration(i) * step) }
	issue := func(from, to int) {
		work := make(chan int)
		errs := make(chan error, 16)
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				for i := range work {
					iss := &issuance{Worker: fmt.Sprint("w", i%run.workers), At: at(i), Life: run.life}
					if err := b.Update(is.write(t, iss)); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		for i := from; i < to; i++ {
			work <- i
		}
		close(work)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	var f storeFigures
	t0 := time.Now()
	for next := 0; next < run.n; {
		end := run.n
		if run.sweepEvery > 0 {
			now = now.Add(run.sweepEvery)
			for end = next; end < run.n && at(end).Before(now); end++ {
			}
		}
		issue(next, end)
		next = end
		if run.sweepEvery > 0 {
			st, err := r.Sweep(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			f.total = addStats(f.total, st)
			f.sweeps++
		}
		file, _ := boltUsage(t, b, path)
		f.peak = max(f.peak, file)
	}
	f.write = time.Since(t0)
	f.fileBefore, f.usedBefore = boltUsage(t, b, path)
	db.listed()

	// Past the orders' 24h lifetime, the certificates' life and keep.
	now = start.Add(run.span + 24*time.Hour + run.life + run.keep + time.Minute)
	t0 = time.Now()
	st, err := r.Sweep(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	f.sweep, f.stats, f.listed = time.Since(t0), st, db.listed()
	f.total = addStats(f.total, st)
	f.fileAfter, f.usedAfter = boltUsage(t, b, path)
	f.compactedAfter = compactedSize(t, b)
	f.entriesAfter = countEntries(t, b)
	return f
}

func addStats(a, b Stats) Stats {
	return Stats{
		Orders: a.Orders + b.Orders, Authorizations: a.Authorizations + b.Authorizations, Challenges: a.Challenges + b.Challenges,
		Certificates: a.Certificates + b.Certificates, Revocations: a.Revocations + b.Revocations, Nonces: a.Nonces + b.Nonces,
		SpentTokens: a.SpentTokens + b.SpentTokens, Accounts: a.Accounts + b.Accounts, Indexed: a.Indexed + b.Indexed,
	}
}

func mb(n int64) float64 { return float64(n) / (1 << 20) }

// TestRetentionStoreSize writes -retention.issuances short-lived (1h)
// issuances, either all within a day and swept once everything expired, or
// spread over a month and swept hourly as serve does, with the default 24h
// retention. Retention deletes every issuance's data but each account's
// latest order (smallstep's order index still lists it), reads no whole
// table doing so, and leaves the store's data small. It logs the figures:
// file size (bbolt's file never shrinks; freed pages are reused), bytes in
// used pages, size of a compacted copy, pass duration.
func TestRetentionStoreSize(t *testing.T) {
	t.Parallel()
	n := *retentionIssuances
	if testing.Short() {
		n = min(n, 200)
	}
	workers := max(1, min(1000, n/10))
	for _, tc := range []struct {
		name string
		run  storeRun
	}{
		{"all at once", storeRun{n: n, workers: workers, span: 24 * time.Hour, life: time.Hour, keep: 24 * time.Hour}},
		// 100,000 issuances in 30 days.
		{"steady state", storeRun{n: n, workers: workers, span: time.Duration(n) * 26 * time.Second, life: time.Hour, keep: 24 * time.Hour, sweepEvery: time.Hour}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			run := tc.run
			f := measureStore(t, run)
			t.Logf("%d issuances by %d workers over %s, %d sweeps during the run: peak file %.1f MB; before the last pass file %.1f MB, %.1f MB used (%d B/issuance); written in %s",
				n, run.workers, run.span, f.sweeps, mb(f.peak), mb(f.fileBefore), mb(f.usedBefore), f.usedBefore/int64(n), f.write.Round(time.Millisecond))
			t.Logf("last pass: %s (%.1f µs/issuance), stats %+v", f.sweep.Round(time.Millisecond),
				float64(f.sweep.Microseconds())/float64(n), f.stats)
			t.Logf("after: file %.1f MB, %.1f MB used, compacted copy %.1f MB; entries %v",
				mb(f.fileAfter), mb(f.usedAfter), mb(f.compactedAfter), f.entriesAfter)

			want := Stats{Certificates: n, Orders: n - run.workers, Authorizations: n, Challenges: n, SpentTokens: run.workers}
			if f.total != want {
				t.Errorf("deleted %+v in all, want %+v", f.total, want)
			}
			if len(f.listed) != 0 {
				t.Errorf("the pass read whole tables: %v", f.listed)
			}
			for tbl, c := range f.entriesAfter {
				switch tbl {
				case string(ordersTable), string(accountOrdersTable):
					// The accounts' latest orders, listed in their order index.
					if c != run.workers {
						t.Errorf("%s: %d entries left, want %d", tbl, c, run.workers)
					}
				case string(expiryTable):
					// Their rescheduled entries, the accounts' and the state.
					if want := 2*run.workers + 1; c != want {
						t.Errorf("%s: %d entries left, want %d", tbl, c, want)
					}
				default:
					if c != 0 {
						t.Errorf("%s: %d entries left, want none", tbl, c)
					}
				}
			}
			// What is left is accounts and one order each: a few KB per account.
			if limit := int64(64<<10 + run.workers*8<<10); f.compactedAfter > limit {
				t.Errorf("compacted store after the pass is %d bytes, want at most %d", f.compactedAfter, limit)
			}
		})
	}
}

// BenchmarkRetentionSweep measures one retention pass over b.N expired
// issuances (ns/op is the pass's time per issuance) and reports the store
// before and after (MB).
func BenchmarkRetentionSweep(b *testing.B) {
	n := b.N
	run := storeRun{n: n, workers: max(1, min(1000, n/10)), span: 24 * time.Hour, life: time.Hour, keep: 24 * time.Hour}
	f := measureStore(b, run)
	b.ReportMetric(float64(f.sweep.Nanoseconds())/float64(n), "ns/op")
	b.ReportMetric(mb(f.fileBefore), "file-MB-before")
	b.ReportMetric(mb(f.usedBefore), "used-MB-before")
	b.ReportMetric(mb(f.usedAfter), "used-MB-after")
	b.ReportMetric(mb(f.compactedAfter), "compacted-MB-after")
}
