package stepca

import (
	"context"
	"fmt"
	"time"

	stepdb "github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"

	"github.com/crank-platform/crank-ca/internal/store"
)

// boltLockTimeout bounds the wait for a bbolt file another process holds.
const boltLockTimeout = 5 * time.Second

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
		d = &storeDB{DB: p, ping: p.Ping}
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
