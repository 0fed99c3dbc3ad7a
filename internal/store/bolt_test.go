package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
	bolt "go.etcd.io/bbolt"
)

// contractDB is what crank-ca's drivers (Bolt, Postgres) offer: nosql.DB
// and the key-range Scan retention and nonce pruning read with.
type contractDB interface {
	nosql.DB
	Scan(bucket, start []byte, limit int) ([]*database.Entry, error)
}

// Both drivers meet the contract.
var (
	_ contractDB = (*Bolt)(nil)
	_ contractDB = (*Postgres)(nil)
)

// kv is one expected entry.
type kv struct{ Key, Value string }

func entries(es []*database.Entry) []kv {
	out := make([]kv, 0, len(es))
	for _, e := range es {
		out = append(out, kv{string(e.Key), string(e.Value)})
	}
	return out
}

func mustSet(t *testing.T, db nosql.DB, table []byte, key, value string) {
	t.Helper()
	if err := db.Set(table, []byte(key), []byte(value)); err != nil {
		t.Fatalf("Set %s/%q: %v", table, key, err)
	}
}

func wantValue(t *testing.T, db nosql.DB, table []byte, key, want string) {
	t.Helper()
	got, err := db.Get(table, []byte(key))
	if err != nil {
		t.Fatalf("Get %s/%q: %v", table, key, err)
	}
	if string(got) != want {
		t.Errorf("Get %s/%q = %q, want %q", table, key, got, want)
	}
}

func wantNotFound(t *testing.T, db nosql.DB, table []byte, key string) {
	t.Helper()
	if v, err := db.Get(table, []byte(key)); !errors.Is(err, database.ErrNotFound) {
		t.Errorf("Get %s/%q = %q, %v; want ErrNotFound", table, key, v, err)
	}
}

func wantCAS(t *testing.T, db nosql.DB, table []byte, key string, old, new []byte, wantCur []byte, wantSwapped bool) {
	t.Helper()
	cur, swapped, err := db.CmpAndSwap(table, []byte(key), old, new)
	if err != nil {
		t.Fatalf("CmpAndSwap %s/%q %q→%q: %v", table, key, old, new, err)
	}
	if swapped != wantSwapped || !bytes.Equal(cur, wantCur) {
		t.Errorf("CmpAndSwap %s/%q %q→%q = %q, %v; want %q, %v", table, key, old, new, cur, swapped, wantCur, wantSwapped)
	}
}

// contractCases is the nosql driver contract crank-ca relies on (the
// smallstep drivers' behaviour, plus Scan). Each case gets its own table.
var contractCases = []struct {
	name string
	run  func(t *testing.T, db contractDB, table []byte)
}{
	{"set get overwrite", func(t *testing.T, db contractDB, table []byte) {
		mustSet(t, db, table, "k", "v1")
		wantValue(t, db, table, "k", "v1")
		mustSet(t, db, table, "k", "v2")
		wantValue(t, db, table, "k", "v2")
		long := strings.Repeat("x", 1<<20)
		mustSet(t, db, table, "big", long)
		wantValue(t, db, table, "big", long)
		binKey := "\x00\xff\x01 k"
		mustSet(t, db, table, binKey, "\x00\x01")
		wantValue(t, db, table, binKey, "\x00\x01")
	}},
	{"get missing key", func(t *testing.T, db contractDB, table []byte) {
		wantNotFound(t, db, table, "absent")
		mustSet(t, db, table, "k", "v")
		wantNotFound(t, db, table, "k\x00")
		wantNotFound(t, db, table, "K")
	}},
	{"empty value", func(t *testing.T, db contractDB, table []byte) {
		mustSet(t, db, table, "k", "")
		got, err := db.Get(table, []byte("k"))
		if err != nil || len(got) != 0 {
			t.Errorf("Get of an empty value = %q, %v; want empty, nil", got, err)
		}
	}},
	{"del", func(t *testing.T, db contractDB, table []byte) {
		mustSet(t, db, table, "k", "v")
		mustSet(t, db, table, "other", "v")
		if err := db.Del(table, []byte("k")); err != nil {
			t.Fatal(err)
		}
		wantNotFound(t, db, table, "k")
		wantValue(t, db, table, "other", "v")
		if err := db.Del(table, []byte("k")); err != nil {
			t.Errorf("Del of an absent key: %v", err)
		}
	}},
	{"list in key order", func(t *testing.T, db contractDB, table []byte) {
		es, err := db.List(table)
		if err != nil || len(es) != 0 {
			t.Fatalf("List of an empty table = %v, %v", entries(es), err)
		}
		for _, k := range []string{"b", "a", "a\x00", "\xff", "\x00", "ab", "B", "a\xff"} {
			mustSet(t, db, table, k, "v-"+k)
		}
		es, err = db.List(table)
		if err != nil {
			t.Fatal(err)
		}
		want := []kv{{"\x00", "v-\x00"}, {"B", "v-B"}, {"a", "v-a"}, {"a\x00", "v-a\x00"}, {"ab", "v-ab"}, {"a\xff", "v-a\xff"}, {"b", "v-b"}, {"\xff", "v-\xff"}}
		if diff := cmp.Diff(want, entries(es)); diff != "" {
			t.Errorf("List (-want +got):\n%s", diff)
		}
		for _, e := range es {
			if !bytes.Equal(e.Bucket, table) {
				t.Errorf("entry %q has bucket %q, want %q", e.Key, e.Bucket, table)
			}
		}
	}},
	{"scan", func(t *testing.T, db contractDB, table []byte) {
		var all []kv
		for i := range 10 {
			k := "k" + strconv.Itoa(i)
			mustSet(t, db, table, k, "v"+k)
			all = append(all, kv{k, "v" + k})
		}
		for _, sc := range []struct {
			name  string
			start []byte
			limit int
			want  []kv
		}{
			{"all", nil, 0, all},
			{"empty start", []byte{}, 0, all},
			{"negative limit", nil, -1, all},
			{"from a key", []byte("k3"), 0, all[3:]},
			{"from between keys", []byte("k35"), 0, all[4:]},
			{"from before all", []byte("a"), 0, all},
			{"from after all", []byte("z"), 0, nil},
			{"limit", nil, 3, all[:3]},
			{"from a key with limit", []byte("k3"), 2, all[3:5]},
			{"limit past the end", []byte("k8"), 5, all[8:]},
			{"limit above count", nil, 100, all},
		} {
			es, err := db.Scan(table, sc.start, sc.limit)
			if err != nil {
				t.Fatalf("%s: %v", sc.name, err)
			}
			if diff := cmp.Diff(sc.want, entries(es), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("%s: Scan(%q, %d) (-want +got):\n%s", sc.name, sc.start, sc.limit, diff)
			}
		}
		// Paging with start = last key + 0x00 visits every entry once.
		var paged []kv
		var start []byte
		for range 20 {
			es, err := db.Scan(table, start, 3)
			if err != nil {
				t.Fatal(err)
			}
			paged = append(paged, entries(es)...)
			if len(es) < 3 {
				break
			}
			start = append(bytes.Clone(es[len(es)-1].Key), 0)
		}
		if diff := cmp.Diff(all, paged); diff != "" {
			t.Errorf("paged Scan (-want +got):\n%s", diff)
		}
	}},
	{"compare and swap", func(t *testing.T, db contractDB, table []byte) {
		v1, v2, v3 := []byte("v1"), []byte("v2"), []byte("v3")
		// absent → value
		wantCAS(t, db, table, "k", nil, v1, v1, true)
		wantValue(t, db, table, "k", "v1")
		// value → value
		wantCAS(t, db, table, "k", v1, v2, v2, true)
		wantValue(t, db, table, "k", "v2")
		// mismatch: the current value, no write
		wantCAS(t, db, table, "k", v1, v3, v2, false)
		wantCAS(t, db, table, "k", nil, v3, v2, false)
		wantCAS(t, db, table, "k", []byte("v"), v3, v2, false)
		wantCAS(t, db, table, "k", []byte("v2\x00"), v3, v2, false)
		wantValue(t, db, table, "k", "v2")
		// absent with a value expected: nothing, no write
		wantCAS(t, db, table, "absent", v1, v3, nil, false)
		wantNotFound(t, db, table, "absent")
		// an empty old value means absent too
		wantCAS(t, db, table, "k2", []byte{}, v1, v1, true)
		wantValue(t, db, table, "k2", "v1")
	}},
	{"update with every op kind", func(t *testing.T, db contractDB, table []byte) {
		side := append(bytes.Clone(table), "_side"...)
		mustSet(t, db, table, "old", "x")
		tx := &database.Tx{Operations: []*database.TxEntry{
			{Cmd: database.CreateTable, Bucket: side},
			{Cmd: database.CreateTable, Bucket: side}, // idempotent
			{Cmd: database.Set, Bucket: side, Key: []byte("s"), Value: []byte("side")},
			{Cmd: database.Set, Bucket: table, Key: []byte("k"), Value: []byte("v1")},
			{Cmd: database.Get, Bucket: table, Key: []byte("k")},                                                     // 4: sees the Set above
			{Cmd: database.CmpAndSwap, Bucket: table, Key: []byte("k"), CmpValue: []byte("v1"), Value: []byte("v2")}, // 5: swaps
			{Cmd: database.CmpAndSwap, Bucket: table, Key: []byte("k"), CmpValue: []byte("v1"), Value: []byte("v3")}, // 6: mismatch
			{Cmd: database.CmpAndSwap, Bucket: table, Key: []byte("new"), CmpValue: nil, Value: []byte("n")},         // 7: from absent
			{Cmd: database.Delete, Bucket: table, Key: []byte("old")},
			{Cmd: database.Delete, Bucket: table, Key: []byte("never-existed")},
			{Cmd: database.Get, Bucket: side, Key: []byte("s")}, // 10
		}}
		if err := db.Update(tx); err != nil {
			t.Fatal(err)
		}
		ops := tx.Operations
		for _, c := range []struct {
			i       int
			result  string
			swapped bool
		}{{4, "v1", false}, {5, "v2", true}, {6, "v2", false}, {7, "n", true}, {10, "side", false}} {
			if string(ops[c.i].Result) != c.result || ops[c.i].Swapped != c.swapped {
				t.Errorf("op %d (%s): Result %q, Swapped %v; want %q, %v", c.i, ops[c.i].Cmd, ops[c.i].Result, ops[c.i].Swapped, c.result, c.swapped)
			}
		}
		wantValue(t, db, table, "k", "v2")
		wantValue(t, db, table, "new", "n")
		wantNotFound(t, db, table, "old")
		wantValue(t, db, side, "s", "side")

		if err := db.Update(&database.Tx{Operations: []*database.TxEntry{{Cmd: database.DeleteTable, Bucket: side}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Get(side, []byte("s")); err == nil {
			t.Error("Get from a table deleted in Update succeeded")
		}
	}},
	{"update is all or nothing", func(t *testing.T, db contractDB, table []byte) {
		mustSet(t, db, table, "k", "before")
		for _, bad := range []*database.TxEntry{
			{Cmd: database.Get, Bucket: table, Key: []byte("absent")},
			{Cmd: database.Set, Bucket: []byte(string(table) + "_missing"), Key: []byte("k"), Value: []byte("v")},
			{Cmd: database.DeleteTable, Bucket: []byte(string(table) + "_missing")},
			{Cmd: database.CmpOrRollback, Bucket: table, Key: []byte("k"), Value: []byte("before")},
			{Cmd: database.TxCmd(99), Bucket: table, Key: []byte("k")},
		} {
			err := db.Update(&database.Tx{Operations: []*database.TxEntry{
				{Cmd: database.Set, Bucket: table, Key: []byte("k"), Value: []byte("after")},
				{Cmd: database.Set, Bucket: table, Key: []byte("added"), Value: []byte("x")},
				bad,
			}})
			if err == nil {
				t.Errorf("Update with a failing %s op succeeded", bad.Cmd)
			}
			wantValue(t, db, table, "k", "before")
			wantNotFound(t, db, table, "added")
		}
	}},
	{"missing table", func(t *testing.T, db contractDB, table []byte) {
		missing := append(bytes.Clone(table), "_missing"...)
		k, v := []byte("k"), []byte("v")
		for name, op := range map[string]func() error{
			"Get":  func() error { _, err := db.Get(missing, k); return err },
			"Set":  func() error { return db.Set(missing, k, v) },
			"Del":  func() error { return db.Del(missing, k) },
			"CAS":  func() error { _, _, err := db.CmpAndSwap(missing, k, nil, v); return err },
			"List": func() error { _, err := db.List(missing); return err },
			"Scan": func() error { _, err := db.Scan(missing, nil, 10); return err },
		} {
			if err := op(); err == nil {
				t.Errorf("%s on a missing table succeeded", name)
			}
		}
	}},
	{"values are copies", func(t *testing.T, db contractDB, table []byte) {
		in := []byte("value")
		if err := db.Set(table, []byte("k"), in); err != nil {
			t.Fatal(err)
		}
		in[0] = 'X' // the caller reuses its buffer
		wantValue(t, db, table, "k", "value")

		got, err := db.Get(table, []byte("k"))
		if err != nil {
			t.Fatal(err)
		}
		clear(got)
		wantValue(t, db, table, "k", "value")

		es, err := db.List(table)
		if err != nil || len(es) != 1 {
			t.Fatalf("List = %v, %v", es, err)
		}
		clear(es[0].Key)
		clear(es[0].Value)
		es, err = db.Scan(table, nil, 1)
		if err != nil || len(es) != 1 {
			t.Fatalf("Scan = %v, %v", es, err)
		}
		clear(es[0].Value)
		wantValue(t, db, table, "k", "value")

		cur, swapped, err := db.CmpAndSwap(table, []byte("k"), []byte("nope"), []byte("v2"))
		if err != nil || swapped {
			t.Fatalf("CmpAndSwap = %q, %v, %v", cur, swapped, err)
		}
		clear(cur)
		newV := []byte("v2")
		if _, _, err := db.CmpAndSwap(table, []byte("k"), []byte("value"), newV); err != nil {
			t.Fatal(err)
		}
		newV[0] = 'X'
		wantValue(t, db, table, "k", "v2")

		tx := &database.Tx{Operations: []*database.TxEntry{{Cmd: database.Get, Bucket: table, Key: []byte("k")}}}
		if err := db.Update(tx); err != nil {
			t.Fatal(err)
		}
		clear(tx.Operations[0].Result)
		wantValue(t, db, table, "k", "v2")
	}},
	{"create and delete table", func(t *testing.T, db contractDB, table []byte) {
		mustSet(t, db, table, "k", "v")
		if err := db.CreateTable(table); err != nil {
			t.Fatalf("CreateTable of an existing table: %v", err)
		}
		wantValue(t, db, table, "k", "v")
		if err := db.DeleteTable(table); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Get(table, []byte("k")); err == nil {
			t.Error("Get from a deleted table succeeded")
		}
		if err := db.DeleteTable(table); err == nil {
			t.Error("DeleteTable of a missing table succeeded")
		}
		if err := db.CreateTable(table); err != nil {
			t.Fatal(err)
		}
		wantNotFound(t, db, table, "k")
	}},
	{"concurrent compare-and-swap counter", func(t *testing.T, db contractDB, table []byte) {
		const workers, each = 64, 4
		var wg sync.WaitGroup
		var mu sync.Mutex
		retries := 0
		errs := make(chan error, workers)
		for range workers {
			wg.Go(func() {
				for range each {
					for {
						old, err := db.Get(table, []byte("n"))
						if errors.Is(err, database.ErrNotFound) {
							old, err = nil, nil
						}
						if err != nil {
							errs <- err
							return
						}
						n, _ := strconv.Atoi(string(old))
						_, swapped, err := db.CmpAndSwap(table, []byte("n"), old, []byte(strconv.Itoa(n+1)))
						if err != nil {
							errs <- err
							return
						}
						if swapped {
							break
						}
						mu.Lock()
						retries++
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		wantValue(t, db, table, "n", strconv.Itoa(workers*each))
		t.Logf("%d increments, %d retries", workers*each, retries)
	}},
}

// testDriverContract runs the contract on db, each case on a table of its
// own, in parallel.
func testDriverContract(t *testing.T, db contractDB) {
	t.Helper()
	for _, c := range contractCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			table := []byte("contract_" + strings.ReplaceAll(c.name, " ", "_"))
			if err := db.CreateTable(table); err != nil {
				t.Fatal(err)
			}
			c.run(t, db, table)
		})
	}
}

func openTestBolt(t *testing.T, path string) *Bolt {
	t.Helper()
	b, err := OpenBolt(BoltConfig{Path: path, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func TestBoltContract(t *testing.T) {
	t.Parallel()
	testDriverContract(t, openTestBolt(t, filepath.Join(t.TempDir(), "ca.db")))
}

func TestBoltOpen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "ca.db")
	b := openTestBolt(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("database file mode %v, want 0600", fi.Mode().Perm())
	}
	if err := b.Ping(); err != nil {
		t.Errorf("Ping: %v", err)
	}
	if err := b.Open(path); err == nil {
		t.Error("Open succeeded: a Bolt is opened with OpenBolt")
	}
	// A second process (here: a second handle) waits for the file lock,
	// then gives up naming the file.
	start := time.Now()
	if b2, err := OpenBolt(BoltConfig{Path: path, Timeout: 100 * time.Millisecond}); err == nil {
		_ = b2.Close()
		t.Error("a second OpenBolt of a locked file succeeded")
	} else if !strings.Contains(err.Error(), path) {
		t.Errorf("lock error %q does not name the file", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("OpenBolt waited %v for the lock, Timeout was 100ms", d)
	}
	if _, err := OpenBolt(BoltConfig{Path: filepath.Join(dir, "missing", "ca.db")}); err == nil {
		t.Error("OpenBolt in a missing directory succeeded")
	}
}

// TestBoltSmallstepFiles: a file smallstep's bbolt driver wrote opens with
// OpenBolt and reads the same, and the reverse.
func TestBoltSmallstepFiles(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "ca.db")
	table := []byte("acme_accounts")
	sdb, err := nosql.New("bbolt", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := sdb.CreateTable(table); err != nil {
		t.Fatal(err)
	}
	mustSet(t, sdb, table, "by-smallstep", "1")
	if err := sdb.Close(); err != nil {
		t.Fatal(err)
	}

	b, err := OpenBolt(BoltConfig{Path: path, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	wantValue(t, b, table, "by-smallstep", "1")
	mustSet(t, b, table, "by-crank", "2")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	sdb, err = nosql.New("bbolt", path)
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	es, err := sdb.List(table)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]kv{{"by-crank", "2"}, {"by-smallstep", "1"}}, entries(es)); diff != "" {
		t.Errorf("smallstep's view (-want +got):\n%s", diff)
	}
}

// queued waits until n writers wait in b's queue behind a running commit.
func queued(t *testing.T, b *Bolt, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b.mu.Lock()
		got := len(b.queue)
		b.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writers queued after 10s, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestBoltGroupCommitFailure holds a commit open until a batch of writers
// has queued behind it: good writes, writes to a missing table, and an
// Update that writes and then fails. The failing ones get their own error,
// the others succeed in one shared transaction, the failed Update's first
// write is not committed, and after reopening the file everything
// acknowledged is there.
func TestBoltGroupCommitFailure(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "ca.db")
	b, err := OpenBolt(BoltConfig{Path: path, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	good, missing := []byte("good"), []byte("missing")
	if err := b.CreateTable(good); err != nil {
		t.Fatal(err)
	}

	entered, release := make(chan struct{}), make(chan struct{})
	leader := make(chan error, 1)
	go func() {
		leader <- b.write(func(tx *bolt.Tx) error {
			close(entered)
			<-release
			return tx.Bucket(good).Put([]byte("leader"), []byte("L"))
		})
	}()
	<-entered

	type result struct {
		name string
		err  error
	}
	const goodSets, probes = 16, 4
	results := make(chan result, 64)
	var wg sync.WaitGroup
	var txMu sync.Mutex
	txIDs := map[int]bool{}
	for i := range goodSets {
		wg.Go(func() {
			k := "set-" + strconv.Itoa(i)
			results <- result{k, b.Set(good, []byte(k), []byte("v"+strconv.Itoa(i)))}
		})
	}
	for i := range probes {
		wg.Go(func() {
			k := "probe-" + strconv.Itoa(i)
			results <- result{k, b.write(func(tx *bolt.Tx) error {
				txMu.Lock()
				txIDs[tx.ID()] = true
				txMu.Unlock()
				return tx.Bucket(good).Put([]byte(k), []byte("p"))
			})}
		})
	}
	failing := map[string]func() error{
		"fail-set":    func() error { return b.Set(missing, []byte("k"), []byte("v")) },
		"fail-del":    func() error { return b.Del(missing, []byte("k")) },
		"fail-cas":    func() error { _, _, err := b.CmpAndSwap(missing, []byte("k"), nil, []byte("v")); return err },
		"fail-update": func() error { return b.Update(partialUpdate(good, missing)) },
	}
	for name, op := range failing {
		wg.Go(func() { results <- result{name, op()} })
	}
	queued(t, b, goodSets+probes+len(failing))
	close(release)
	if err := <-leader; err != nil {
		t.Fatalf("leader: %v", err)
	}
	wg.Wait()
	close(results)
	for r := range results {
		if _, ok := failing[r.name]; ok {
			if !errors.Is(r.err, database.ErrNotFound) {
				t.Errorf("%s = %v, want its own missing-table error", r.name, r.err)
			}
		} else if r.err != nil {
			t.Errorf("%s = %v, want success beside the failing writers", r.name, r.err)
		}
	}
	// Rolled-back attempts get the same bbolt txid as the one that
	// commits, so one ID means one shared commit.
	if len(txIDs) != 1 {
		t.Errorf("the queued writers ran in transactions %v, want one", txIDs)
	}

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = openTestBolt(t, path)
	wantValue(t, b, good, "leader", "L")
	for i := range goodSets {
		wantValue(t, b, good, "set-"+strconv.Itoa(i), "v"+strconv.Itoa(i))
	}
	for i := range probes {
		wantValue(t, b, good, "probe-"+strconv.Itoa(i), "p")
	}
	wantNotFound(t, b, good, "partial")
	if es, err := b.List(good); err != nil || len(es) != 1+goodSets+probes {
		t.Errorf("after reopening: %d entries, %v; want %d", len(es), err, 1+goodSets+probes)
	}
}

// partialUpdate writes to good, then fails on missing.
func partialUpdate(good, missing []byte) *database.Tx {
	return &database.Tx{Operations: []*database.TxEntry{
		{Cmd: database.Set, Bucket: good, Key: []byte("partial"), Value: []byte("half")},
		{Cmd: database.Set, Bucket: missing, Key: []byte("k"), Value: []byte("v")},
	}}
}

// TestBoltConcurrentWritersWithFailures is the same without holding a
// commit: 64 writers, every eighth to a missing table.
func TestBoltConcurrentWritersWithFailures(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "ca.db")
	b, err := OpenBolt(BoltConfig{Path: path, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	good, missing := []byte("good"), []byte("missing")
	if err := b.CreateTable(good); err != nil {
		t.Fatal(err)
	}
	errs := make([]error, 64)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() {
			k := []byte("k" + strconv.Itoa(i))
			switch {
			case i%8 == 0:
				errs[i] = b.Set(missing, k, k)
			case i%8 == 1:
				errs[i] = b.Update(partialUpdate(good, missing))
			default:
				errs[i] = b.Set(good, k, k)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if fails := i%8 <= 1; fails != (err != nil) {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = openTestBolt(t, path)
	for i := range errs {
		if i%8 > 1 {
			wantValue(t, b, good, "k"+strconv.Itoa(i), "k"+strconv.Itoa(i))
		}
	}
	wantNotFound(t, b, good, "partial")
}

// TestBoltLeaderReturnsAfterItsCommit: the writer that leads a group
// commit returns once its own transaction is on disk; it must not keep
// committing for writers that queued after it. Under steady load the
// queue is never empty, and the leading request would never return.
func TestBoltLeaderReturnsAfterItsCommit(t *testing.T) {
	t.Parallel()
	b := openTestBolt(t, filepath.Join(t.TempDir(), "ca.db"))
	if err := b.CreateTable([]byte("t")); err != nil {
		t.Fatal(err)
	}
	put := func(k string, entered, release chan struct{}) func(*bolt.Tx) error {
		return func(tx *bolt.Tx) error {
			close(entered)
			<-release
			return tx.Bucket([]byte("t")).Put([]byte(k), []byte(k))
		}
	}
	enteredA, releaseA := make(chan struct{}), make(chan struct{})
	enteredB, releaseB := make(chan struct{}), make(chan struct{})
	doneA, doneB := make(chan error, 1), make(chan error, 1)
	go func() { doneA <- b.write(put("a", enteredA, releaseA)) }()
	<-enteredA
	go func() { doneB <- b.write(put("b", enteredB, releaseB)) }()
	queued(t, b, 1)
	close(releaseA) // A's transaction commits; B's starts and blocks
	<-enteredB
	var errA error
	select {
	case errA = <-doneA:
	case <-time.After(5 * time.Second):
		t.Error("A's write did not return while a later writer's commit was running: the leader commits for others until the queue is empty")
		close(releaseB)
		errA = <-doneA
		releaseB = nil
	}
	if releaseB != nil {
		close(releaseB)
	}
	if errA != nil {
		t.Errorf("A: %v", errA)
	}
	if err := <-doneB; err != nil {
		t.Errorf("B: %v", err)
	}
	wantValue(t, b, []byte("t"), "a", "a")
	wantValue(t, b, []byte("t"), "b", "b")
}
