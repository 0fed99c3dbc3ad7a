package stepca

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	steppro "github.com/smallstep/certificates/authority/provisioner"
	stepdb "github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"

	"github.com/crank-platform/crank-ca/internal/store"
)

// boltLockTimeout bounds the wait for a bbolt file another process holds:
// long enough for a predecessor that is exiting to let go of it, short
// enough that a second `serve` on one configuration fails at once with
// store.ErrStoreInUse instead of stalling.
const boltLockTimeout = time.Second

// authorityTables are the tables smallstep's db.New creates; with a storeDB
// handed over by crank-ca, the authority expects them to exist.
var authorityTables = []string{
	"revoked_x509_certs", "x509_certs", "used_ott", "ssh_certs", "ssh_hosts", "ssh_host_principals",
	"ssh_users", "revoked_ssh_certs", "x509_certs_data", "x509_crl",
}

// storeDB is the opened store: the nosql handle smallstep and crank-ca
// share, and how to probe and close it.
type storeDB struct {
	nosql.DB
	ping func(context.Context) error
	// failedSince reports a connection failure at or after a time (nil:
	// the driver cannot tell, as for bbolt, which has no connection).
	failedSince func(time.Time) bool
}

// openDatabase opens crank-ca's own driver for bbolt and PostgreSQL (group
// commit; a sized pgx pool), or smallstep's for other types (measurements
// only), and creates the authority's tables.
func openDatabase(ctx context.Context, st Storage) (*storeDB, error) {
	var d *storeDB
	switch st.Type {
	case "bbolt":
		b, err := store.OpenBolt(store.BoltConfig{Path: st.DataSource, Timeout: boltLockTimeout})
		if err != nil {
			return nil, fmt.Errorf("stepca: %w", err)
		}
		d = &storeDB{DB: b, ping: func(context.Context) error { return b.Ping() }}
	case "postgresql":
		p, err := store.OpenPostgres(ctx, store.PostgresConfig{DSN: st.DataSource, MaxConns: st.MaxConns})
		if err != nil {
			return nil, fmt.Errorf("stepca: %w", err)
		}
		d = &storeDB{DB: p, ping: p.Ping, failedSince: p.FailedSince}
	default:
		db, err := nosql.New(st.Type, st.DataSource)
		if err != nil {
			return nil, fmt.Errorf("stepca: open %s store: %w", st.Type, err)
		}
		d = &storeDB{DB: db, ping: func(context.Context) error { return nil }}
	}
	for _, t := range authorityTables {
		if err := d.CreateTable([]byte(t)); err != nil {
			_ = d.Close()
			return nil, fmt.Errorf("stepca: create table %s: %w", t, err)
		}
	}
	return d, nil
}

// authorityDB hands the store to smallstep's authority. Its zero "up" flag
// makes the authority's Shutdown leave the store open: crank-ca closes it
// after the authority.
func (d *storeDB) authorityDB() *stepdb.DB { return &stepdb.DB{DB: d.DB} }

// Tables of the authority's record of every signed certificate.
var (
	x509CertsTable     = []byte("x509_certs")
	x509CertsDataTable = []byte("x509_certs_data")
)

// heldDB is the authority's database with one change: the record of a
// signed certificate (x509_certs and x509_certs_data, written by smallstep
// in its own transaction right after signing) is held in memory until the
// finalize that asked for the certificate writes it in its one
// transaction (see holdCertificate). A record nobody takes is written
// alone by flushStale, so every signed certificate is recorded.
type heldDB struct {
	*stepdb.DB
	mu   sync.Mutex
	held map[string]heldCert // by decimal serial
}

type heldCert struct {
	der, data []byte
	notAfter  time.Time
	at        time.Time
}

func newHeldDB(d *storeDB) *heldDB {
	return &heldDB{DB: d.authorityDB(), held: map[string]heldCert{}}
}

// StoreCertificateChain holds the record (smallstep's shape, db/db.go).
func (h *heldDB) StoreCertificateChain(p steppro.Interface, chain ...*x509.Certificate) error {
	data := &stepdb.CertificateData{}
	if p != nil {
		data.Provisioner = &stepdb.ProvisionerData{ID: p.GetID(), Name: p.GetName(), Type: p.GetType().String()}
	}
	b, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("stepca: encode certificate data: %w", err)
	}
	h.mu.Lock()
	h.held[chain[0].SerialNumber.String()] = heldCert{der: chain[0].Raw, data: b, notAfter: chain[0].NotAfter, at: time.Now()}
	h.mu.Unlock()
	return nil
}

// take removes and returns the held record of a serial.
func (h *heldDB) take(serial string) (heldCert, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, ok := h.held[serial]
	delete(h.held, serial)
	return c, ok
}

// put writes an authority record inside a transaction.
func (c heldCert) put(kv store.KV, serial string) error {
	if err := kv.Set(x509CertsTable, []byte(serial), c.der); err != nil {
		return err
	}
	if err := kv.Set(x509CertsDataTable, []byte(serial), c.data); err != nil {
		return err
	}
	// A finalize indexes the certificate again, naming its ACME record.
	return store.IndexCertificateIn(kv, serial, "", c.notAfter)
}

// flush writes one held record alone.
func (h *heldDB) flush(ctx context.Context, st *store.Store, serial string, c heldCert) error {
	return st.Txn(ctx, func(kv store.KV) error { return c.put(kv, serial) })
}

// flushStale writes records held longer than age (a signature no finalize
// took); it runs periodically.
func (h *heldDB) flushStale(ctx context.Context, st *store.Store, age time.Duration, log *slog.Logger) {
	h.mu.Lock()
	var due []string
	for serial, c := range h.held {
		if time.Since(c.at) > age {
			due = append(due, serial)
		}
	}
	h.mu.Unlock()
	for _, serial := range due {
		if c, ok := h.take(serial); ok {
			if err := h.flush(ctx, st, serial, c); err != nil {
				log.Error("recording a signed certificate", "serial", serial, "err", err)
				h.mu.Lock()
				h.held[serial] = c
				h.mu.Unlock()
			}
		}
	}
}
