package store

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/smallstep/nosql/database"
)

// Postgres is crank-ca's nosql driver for PostgreSQL, replacing smallstep's
// (database/sql with its default of two idle connections, so that above two
// concurrent operations every one opened and authenticated a new backend).
// It keeps smallstep's table layout (nkey BYTEA primary key, nvalue BYTEA),
// so databases written by smallstep's driver are read unchanged, and adds:
//   - a pgx pool of a configured size; pgx prepares and caches every
//     statement per connection;
//   - compare-and-swap as one conditional statement, atomic across
//     replicas (smallstep's "from absent" was an upsert both could win);
//   - schema changes under an advisory lock and recorded in crank_schema,
//     so that N replicas starting at once create the tables once and a
//     replica older than the schema refuses to start.
type Postgres struct {
	pool *pgxpool.Pool
	// opTimeout bounds each operation: nosql's interface carries no
	// context, and a request must not hang on a dead database.
	opTimeout time.Duration
	// batchers group-commit InsertNew per bucket and value.
	batchers sync.Map
	// lastFailure is when (Unix ns) a connection to PostgreSQL last
	// failed or broke (connTracer); 0 if never.
	lastFailure atomic.Int64
}

// PostgresConfig configures OpenPostgres.
type PostgresConfig struct {
	// DSN is a libpq URL or key/value string. Several hosts with
	// target_session_attrs=read-write follow a failover to the new primary.
	DSN string
	// MaxConns sizes the pool (per replica).
	MaxConns int32
	// OpTimeout bounds one store operation; zero means 15 s.
	OpTimeout time.Duration
}

// SchemaVersion is the version of crank-ca's PostgreSQL schema this build
// writes. Version 1: smallstep's tables and crank-ca's, each (nkey BYTEA
// PRIMARY KEY, nvalue BYTEA).
const SchemaVersion = 1

// ErrSchemaTooNew is returned when the database was migrated by a newer
// crank-ca: an older replica must not write a schema it does not know.
var ErrSchemaTooNew = errors.New("the database schema is newer than this crank-ca")

// schemaTables are created by migration 1, so that replicas starting at once
// find them instead of racing to create them (CREATE TABLE IF NOT EXISTS is
// not safe against a concurrent CREATE of the same table).
var schemaTables = []string{
	// smallstep's authority (db/db.go)
	"x509_certs", "x509_certs_data", "revoked_x509_certs", "x509_crl", "revoked_ssh_certs",
	"used_ott", "ssh_certs", "ssh_hosts", "ssh_users", "ssh_host_principals",
	// smallstep's ACME (acme/db/nosql)
	"acme_accounts", "acme_keyID_accountID_index", "acme_authzs", "acme_challenges", "nonces",
	"acme_orders", "acme_account_orders_index", "acme_certs", "acme_serial_certs_index",
	"acme_external_account_keys", "acme_external_account_keyID_reference_index",
	"acme_external_account_keyID_provisionerID_index", "wire_acme_dpop_token", "wire_acme_oidc_token",
	// crank-ca's
	string(bindingTable), string(tokenUsesTable), string(certsTable), string(workersTable),
	string(secretsTable), string(spentNoncesTable), string(orderClaimsTable), string(expiryTable),
}

// OpenPostgres connects, creates the database if it does not exist, and
// brings the schema to SchemaVersion.
func OpenPostgres(ctx context.Context, cfg PostgresConfig) (*Postgres, error) {
	pc, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("store: PostgreSQL DSN: %w", redactDSNError(err))
	}
	if cfg.MaxConns > 0 {
		pc.MaxConns = cfg.MaxConns
	}
	pc.MinConns = min(2, pc.MaxConns)
	pc.HealthCheckPeriod = 10 * time.Second
	p := &Postgres{opTimeout: cfg.OpTimeout}
	if p.opTimeout <= 0 {
		p.opTimeout = 15 * time.Second
	}
	pc.ConnConfig.Tracer = connTracer{p}
	pool, err := connect(ctx, pc)
	if err != nil {
		return nil, err
	}
	p.pool = pool
	if err := p.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return p, nil
}

// connect opens the pool, creating the database first if PostgreSQL says it
// does not exist (as smallstep's driver did).
func connect(ctx context.Context, pc *pgxpool.Config) (*pgxpool.Pool, error) {
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("store: PostgreSQL: %w", err)
	}
	err = pool.Ping(ctx)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "3D000" {
		pool.Close()
		if err := createDatabase(ctx, pc.ConnConfig); err != nil {
			return nil, err
		}
		if pool, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
			return nil, fmt.Errorf("store: PostgreSQL: %w", err)
		}
		err = pool.Ping(ctx)
	}
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("store: connect to PostgreSQL: %w", err)
	}
	return pool, nil
}

func createDatabase(ctx context.Context, cc *pgx.ConnConfig) error {
	name := cc.Database
	if name == "" {
		name = cc.User
	}
	// Connect to the maintenance database, not to template1: CREATE
	// DATABASE copies template1 and fails (55006) while any other session
	// is connected to it, such as another replica creating the database
	// at the same moment. template1 only where "postgres" was dropped.
	var conn *pgx.Conn
	var err error
	for _, maint := range []string{"postgres", "template1"} {
		tc := cc.Copy()
		tc.Database = maint
		conn, err = pgx.ConnectConfig(ctx, tc)
		var pgErr *pgconn.PgError
		if !(errors.As(err, &pgErr) && pgErr.Code == "3D000") {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("store: connect to PostgreSQL to create database %s: %w", name, err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	// 42P04: it exists; 23505: a concurrent CREATE DATABASE of the same
	// name committed first (pg_database_datname_index).
	if err != nil && !(errors.As(err, &pgErr) && (pgErr.Code == "42P04" || pgErr.Code == "23505")) {
		return fmt.Errorf("store: create database %s: %w", name, err)
	}
	return nil
}

// redactDSNError keeps a DSN parse error from echoing the password: pgx
// quotes the DSN in its message and redacts only the forms it recognises
// (not "password = x", which libpq and pgx accept), so none of its text
// is kept.
func redactDSNError(error) error {
	return errors.New("cannot parse the DSN (see storage.dsn)")
}

// lockKey is the advisory lock key of a name.
func lockKey(name string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(name))
	return int64(h.Sum64()) //nolint:gosec // a lock key, wrapping is fine
}

// migrate brings the schema to SchemaVersion under a transaction-scoped
// advisory lock: replicas starting at once wait for each other, and the
// second finds the work done.
func (p *Postgres) migrate(ctx context.Context) error {
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey("crank-ca/schema")); err != nil {
			return fmt.Errorf("store: lock schema: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS crank_schema (
			version INTEGER PRIMARY KEY,
			applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
			description TEXT NOT NULL)`); err != nil {
			return fmt.Errorf("store: create crank_schema: %w", err)
		}
		var v int
		if err := tx.QueryRow(ctx, "SELECT COALESCE(MAX(version), 0) FROM crank_schema").Scan(&v); err != nil {
			return fmt.Errorf("store: read schema version: %w", err)
		}
		if v > SchemaVersion {
			return fmt.Errorf("store: %w: version %d, this build knows %d; upgrade this replica", ErrSchemaTooNew, v, SchemaVersion)
		}
		if v >= 1 {
			return nil
		}
		for _, t := range schemaTables {
			if _, err := tx.Exec(ctx, createTableSQL(t)); err != nil {
				return fmt.Errorf("store: create table %s: %w", t, err)
			}
		}
		_, err := tx.Exec(ctx, "INSERT INTO crank_schema (version, description) VALUES (1, 'smallstep and crank-ca key/value tables')")
		return err
	})
}

func ident(bucket []byte) string { return pgx.Identifier{string(bucket)}.Sanitize() }

func createTableSQL(t string) string {
	return "CREATE TABLE IF NOT EXISTS " + pgx.Identifier{t}.Sanitize() +
		" (nkey BYTEA CHECK (octet_length(nkey) <= 255), nvalue BYTEA, PRIMARY KEY (nkey))"
}

func (p *Postgres) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), p.opTimeout)
}

// Open is part of nosql.DB; a Postgres store is opened by OpenPostgres.
func (p *Postgres) Open(string, ...database.Option) error {
	return errors.New("store: a Postgres store is opened with OpenPostgres")
}

// Close closes the pool.
func (p *Postgres) Close() error {
	p.pool.Close()
	return nil
}

// Ping checks that the database answers.
func (p *Postgres) Ping(ctx context.Context) error { return p.pool.Ping(ctx) }

// querier is what a pool and a transaction share.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func get(ctx context.Context, q querier, bucket, key []byte) ([]byte, error) {
	var v []byte
	err := q.QueryRow(ctx, "SELECT nvalue FROM "+ident(bucket)+" WHERE nkey = $1", key).Scan(&v)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("store: %s/%s: %w", bucket, key, database.ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("store: read %s: %w", bucket, err)
	}
	if v == nil {
		v = []byte{}
	}
	return v, nil
}

// setSQL upserts one key ($1) and value ($2) of a table.
func setSQL(bucket []byte) string {
	return "INSERT INTO " + ident(bucket) + " (nkey, nvalue) VALUES ($1, $2) ON CONFLICT (nkey) DO UPDATE SET nvalue = excluded.nvalue"
}

// delSQL deletes one key ($1) of a table.
func delSQL(bucket []byte) string { return "DELETE FROM " + ident(bucket) + " WHERE nkey = $1" }

func set(ctx context.Context, q querier, bucket, key, value []byte) error {
	_, err := q.Exec(ctx, setSQL(bucket), key, value)
	if err != nil {
		return fmt.Errorf("store: write %s: %w", bucket, err)
	}
	return nil
}

func del(ctx context.Context, q querier, bucket, key []byte) error {
	if _, err := q.Exec(ctx, delSQL(bucket), key); err != nil {
		return fmt.Errorf("store: delete from %s: %w", bucket, err)
	}
	return nil
}

// cas is one conditional statement: the row lock PostgreSQL takes makes it
// atomic against every other replica.
func cas(ctx context.Context, q querier, bucket, key, oldValue, newValue []byte) ([]byte, bool, error) {
	var tag pgconn.CommandTag
	var err error
	if len(oldValue) == 0 {
		tag, err = q.Exec(ctx, "INSERT INTO "+ident(bucket)+" AS t (nkey, nvalue) VALUES ($1, $2) ON CONFLICT (nkey) DO UPDATE SET nvalue = excluded.nvalue WHERE COALESCE(octet_length(t.nvalue), 0) = 0", key, newValue)
	} else {
		tag, err = q.Exec(ctx, "UPDATE "+ident(bucket)+" SET nvalue = $3 WHERE nkey = $1 AND nvalue = $2", key, oldValue, newValue)
	}
	if err != nil {
		return nil, false, fmt.Errorf("store: compare-and-swap %s: %w", bucket, err)
	}
	if tag.RowsAffected() == 1 {
		return newValue, true, nil
	}
	cur, err := get(ctx, q, bucket, key)
	switch {
	case errors.Is(err, database.ErrNotFound):
		return nil, false, nil
	case err != nil:
		return nil, false, err
	}
	return cur, false, nil
}

// Get returns the value, or an error matching database.ErrNotFound.
func (p *Postgres) Get(bucket, key []byte) ([]byte, error) {
	ctx, cancel := p.ctx()
	defer cancel()
	return get(ctx, p.pool, bucket, key)
}

// Set writes a value.
func (p *Postgres) Set(bucket, key, value []byte) error {
	ctx, cancel := p.ctx()
	defer cancel()
	return set(ctx, p.pool, bucket, key, value)
}

// Del deletes a key.
func (p *Postgres) Del(bucket, key []byte) error {
	ctx, cancel := p.ctx()
	defer cancel()
	return del(ctx, p.pool, bucket, key)
}

// CmpAndSwap writes newValue if the stored value equals oldValue (empty:
// absent), atomically across replicas.
func (p *Postgres) CmpAndSwap(bucket, key, oldValue, newValue []byte) ([]byte, bool, error) {
	ctx, cancel := p.ctx()
	defer cancel()
	return cas(ctx, p.pool, bucket, key, oldValue, newValue)
}

// List returns every entry of a table.
func (p *Postgres) List(bucket []byte) ([]*database.Entry, error) {
	return p.Scan(bucket, nil, 0)
}

// Scan returns entries with keys >= start in key order (bytea compares
// bytewise), at most limit of them (0: all).
func (p *Postgres) Scan(bucket, start []byte, limit int) ([]*database.Entry, error) {
	ctx, cancel := p.ctx()
	defer cancel()
	q := "SELECT nkey, nvalue FROM " + ident(bucket) + " WHERE nkey >= $1 ORDER BY nkey"
	args := []any{start}
	if start == nil {
		args[0] = []byte{}
	}
	if limit > 0 {
		q += " LIMIT $2"
		args = append(args, limit)
	}
	rows, err := p.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("store: list %s: %w", bucket, err)
	}
	var out []*database.Entry
	for rows.Next() {
		e := &database.Entry{Bucket: bucket}
		if err := rows.Scan(&e.Key, &e.Value); err != nil {
			rows.Close()
			return nil, fmt.Errorf("store: list %s: %w", bucket, err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list %s: %w", bucket, err)
	}
	return out, nil
}

// Update runs nosql operations in one transaction.
func (p *Postgres) Update(t *database.Tx) error {
	ctx, cancel := p.ctx()
	defer cancel()
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		for _, q := range t.Operations {
			var err error
			switch q.Cmd {
			case database.CreateTable:
				err = p.createTable(ctx, tx, q.Bucket)
			case database.DeleteTable:
				_, err = tx.Exec(ctx, "DROP TABLE "+ident(q.Bucket))
			case database.Get:
				q.Result, err = get(ctx, tx, q.Bucket, q.Key)
			case database.Set:
				err = set(ctx, tx, q.Bucket, q.Key, q.Value)
			case database.Delete:
				err = del(ctx, tx, q.Bucket, q.Key)
			case database.CmpAndSwap:
				q.Result, q.Swapped, err = cas(ctx, tx, q.Bucket, q.Key, q.CmpValue, q.Value)
			default:
				err = fmt.Errorf("store: operation %s is not supported", q.Cmd)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// createTable creates a table under the schema lock (see migrate).
func (p *Postgres) createTable(ctx context.Context, tx pgx.Tx, bucket []byte) error {
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey("crank-ca/schema")); err != nil {
		return fmt.Errorf("store: lock schema: %w", err)
	}
	if _, err := tx.Exec(ctx, createTableSQL(string(bucket))); err != nil {
		return fmt.Errorf("store: create table %s: %w", bucket, err)
	}
	return nil
}

// CreateTable creates a table if it does not exist.
func (p *Postgres) CreateTable(bucket []byte) error {
	ctx, cancel := p.ctx()
	defer cancel()
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error { return p.createTable(ctx, tx, bucket) })
}

// DeleteTable drops a table.
func (p *Postgres) DeleteTable(bucket []byte) error {
	ctx, cancel := p.ctx()
	defer cancel()
	_, err := p.pool.Exec(ctx, "DROP TABLE "+ident(bucket))
	return err
}

// FailedSince reports whether a connection to PostgreSQL failed or broke
// at or after t: a request that started at t and failed then met the
// outage, even if the database answers again by the time anyone asks (a
// failover completing within milliseconds).
func (p *Postgres) FailedSince(t time.Time) bool {
	n := p.lastFailure.Load()
	return n != 0 && n >= t.UnixNano()
}

// connTracer notes connection failures for FailedSince: a connection that
// could not be made, and a statement after which its connection is closed
// or whose error says the server is going away, in recovery or read-only
// (a standby not yet promoted).
type connTracer struct{ p *Postgres }

func (t connTracer) TraceConnectStart(ctx context.Context, _ pgx.TraceConnectStartData) context.Context {
	return ctx
}

func (t connTracer) TraceConnectEnd(_ context.Context, data pgx.TraceConnectEndData) {
	if data.Err != nil {
		t.p.lastFailure.Store(time.Now().UnixNano())
	}
}

func (t connTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (t connTracer) TraceQueryEnd(_ context.Context, conn *pgx.Conn, data pgx.TraceQueryEndData) {
	if data.Err != nil && (conn.IsClosed() || unavailableCode(data.Err)) {
		t.p.lastFailure.Store(time.Now().UnixNano())
	}
}

// unavailableCode reports SQLSTATEs of a server that cannot serve now:
// class 08 (connection exception), 57P01-57P03 (shutdown, crash
// recovery, cannot connect now) and 25006 (read-only transaction: a
// standby).
func unavailableCode(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	return strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "57P0") || pe.Code == "25006"
}
