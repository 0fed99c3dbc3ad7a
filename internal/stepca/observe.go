package stepca

import (
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/crank-platform/crank-ca/internal/store"
)

// Store operations as Config.ObserveStore names them.
const (
	StoreGet    = "get"
	StoreSet    = "set"
	StoreCAS    = "cas"
	StoreDelete = "delete"
	StoreList   = "list"
	StoreUpdate = "update"
	StoreTxn    = store.OpTxn   // crank-ca's own: a request's records in one commit
	StoreNonce  = store.OpNonce // crank-ca's own: a nonce spend
)

// observedDB times the operations smallstep's ACME and authority layers
// make on the store. It is handed only to them: crank-ca's own store keeps
// the driver itself, whose concrete type and optional interfaces
// (transactions, range scans) it depends on.
type observedDB struct {
	nosql.DB
	observe func(op string, d time.Duration)
}

// observed wraps db when there is an observer.
func observed(db nosql.DB, observe func(string, time.Duration)) nosql.DB {
	if observe == nil {
		return db
	}
	return &observedDB{DB: db, observe: observe}
}

// observedStore is d with its handle observed (for the authority).
func observedStore(d *storeDB, observe func(string, time.Duration)) *storeDB {
	if observe == nil {
		return d
	}
	return &storeDB{DB: observed(d.DB, observe), ping: d.ping, failedSince: d.failedSince}
}

func (o *observedDB) since(op string, start time.Time) { o.observe(op, time.Since(start)) }

func (o *observedDB) Get(bucket, key []byte) ([]byte, error) {
	defer o.since(StoreGet, time.Now())
	return o.DB.Get(bucket, key)
}

func (o *observedDB) Set(bucket, key, value []byte) error {
	defer o.since(StoreSet, time.Now())
	return o.DB.Set(bucket, key, value)
}

func (o *observedDB) CmpAndSwap(bucket, key, oldValue, newValue []byte) ([]byte, bool, error) {
	defer o.since(StoreCAS, time.Now())
	return o.DB.CmpAndSwap(bucket, key, oldValue, newValue)
}

func (o *observedDB) Del(bucket, key []byte) error {
	defer o.since(StoreDelete, time.Now())
	return o.DB.Del(bucket, key)
}

func (o *observedDB) List(bucket []byte) ([]*database.Entry, error) {
	defer o.since(StoreList, time.Now())
	return o.DB.List(bucket)
}

func (o *observedDB) Update(tx *database.Tx) error {
	defer o.since(StoreUpdate, time.Now())
	return o.DB.Update(tx)
}
