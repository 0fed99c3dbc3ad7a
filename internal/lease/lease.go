package lease

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultTimeout bounds connecting, pinging and trying the lock.
const DefaultTimeout = 10 * time.Second

// ErrClosed is returned by Run after Close.
var ErrClosed = errors.New("lease: closed")

// Config configures a Lease.
type Config struct {
	// DSN is the PostgreSQL database the replicas share (URL or libpq
	// key=value form). Empty means a local lease, always held: the store is
	// embedded and this process is its only user.
	DSN string
	// Name names the duty, e.g. "crank-ca/retention". Replicas running the
	// same duty must use the same name; different names never exclude each
	// other.
	Name string
	// Logger receives "cluster duty lease acquired" and "... lost" at Info,
	// and skipped runs at Debug. nil discards.
	Logger *slog.Logger
	// Timeout bounds connecting, pinging and trying the lock; zero means
	// DefaultTimeout.
	Timeout time.Duration
}

// Lease decides whether this replica runs a cluster duty. Its methods are
// safe for concurrent use; runs of one Lease are serialized.
type Lease struct {
	dsn     string
	name    string
	key     int64
	log     *slog.Logger
	timeout time.Duration

	mu     sync.Mutex
	conn   *pgx.Conn // PostgreSQL only; nil until the first try
	held   bool
	closed bool
}

// New returns a lease that is not yet held; nothing connects until Run.
func New(cfg Config) *Lease {
	l := &Lease{dsn: cfg.DSN, name: cfg.Name, key: Key(cfg.Name), log: cfg.Logger, timeout: cfg.Timeout}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if l.timeout <= 0 {
		l.timeout = DefaultTimeout
	}
	return l
}

// Key is the advisory lock key of a duty name: its 64-bit FNV-1a hash. In
// pg_locks the lock shows as locktype 'advisory' with classid the upper and
// objid the lower 32 bits of the key.
func Key(name string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(name))
	return int64(h.Sum64()) //nolint:gosec // a bit pattern, not a quantity
}

// Name is the duty name.
func (l *Lease) Name() string { return l.name }

// Held reports whether this replica held the lease at the end of its last
// Run. It does not check the connection.
func (l *Lease) Held() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held
}

// Run runs duty if this replica holds the lease, first trying to win it if
// not, and keeps the lease afterwards. ran reports whether duty ran; err is
// duty's error when it ran, or why the lease could not be tried (the
// database is unreachable) when it did not. Another replica holding the
// lease is not an error: Run returns false, nil.
func (l *Lease) Run(ctx context.Context, duty func(context.Context) error) (ran bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if l.dsn == "" {
		if !l.held {
			l.held = true
			l.log.Info("cluster duty lease acquired", "duty", l.name, "store", "local")
		}
		return true, duty(ctx)
	}
	if l.held {
		if err := l.ping(ctx); err != nil {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			l.drop(ctx)
			l.log.Info("cluster duty lease lost", "duty", l.name, "err", err)
		}
	}
	if !l.held {
		ok, err := l.try(ctx)
		if err != nil {
			return false, err
		}
		if !ok {
			l.log.Debug("cluster duty skipped: another replica holds the lease", "duty", l.name)
			return false, nil
		}
		l.held = true
		l.log.Info("cluster duty lease acquired", "duty", l.name, "backendPID", l.conn.PgConn().PID())
	}
	return true, duty(ctx)
}

// Every runs duty through Run now and then every interval until ctx is
// done. Errors are logged: a failed duty at Error, an unreachable database
// at Warn; the same kind of failure again at Debug, so that a database
// outage does not log once a second, and the first success after failures
// at Info.
func (l *Lease) Every(ctx context.Context, interval time.Duration, duty func(context.Context) error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var last string // the kind of the last failure, "" after a success
	for {
		ran, err := l.Run(ctx, duty)
		kind, level := "", slog.LevelInfo
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			if last != "" {
				l.log.Info("cluster duty working again", "duty", l.name)
			}
		case ran:
			kind, level = "cluster duty failed", slog.LevelError
		default:
			kind, level = "cluster duty lease unavailable", slog.LevelWarn
		}
		if kind != "" {
			if kind == last {
				level = slog.LevelDebug
			}
			l.log.Log(ctx, level, kind, "duty", l.name, "err", err)
		}
		last = kind
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Close releases the lease (ending the session drops the lock) and makes
// further runs fail with ErrClosed. It waits for a run under way.
func (l *Lease) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var err error
	if l.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
		err = l.conn.Close(ctx)
		cancel()
		l.conn = nil
	}
	if l.held {
		l.held = false
		l.log.Info("cluster duty lease released", "duty", l.name)
	}
	if err != nil {
		return fmt.Errorf("lease %s: close: %w", l.name, err)
	}
	return nil
}

// ping checks that the session holding the lock is still alive.
func (l *Lease) ping(ctx context.Context) error {
	if l.conn == nil || l.conn.IsClosed() {
		return errors.New("connection closed")
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	return l.conn.Ping(ctx)
}

// drop forgets the connection and the lease with it.
func (l *Lease) drop(ctx context.Context) {
	l.held = false
	if l.conn != nil {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_ = l.conn.Close(ctx)
		cancel()
		l.conn = nil
	}
}

// try tries the lock once without waiting, connecting first if needed. An
// idle connection the server has dropped is replaced once.
func (l *Lease) try(ctx context.Context) (bool, error) {
	for attempt := 0; ; attempt++ {
		fresh := false
		if l.conn == nil || l.conn.IsClosed() {
			if err := l.connect(ctx); err != nil {
				return false, err
			}
			fresh = true
		}
		tctx, cancel := context.WithTimeout(ctx, l.timeout)
		var ok bool
		err := l.conn.QueryRow(tctx, "SELECT pg_try_advisory_lock($1)", l.key).Scan(&ok)
		cancel()
		if err == nil {
			return ok, nil
		}
		l.drop(ctx)
		if fresh || attempt > 0 || ctx.Err() != nil {
			return false, fmt.Errorf("lease %s: try lock: %w", l.name, err)
		}
	}
}

func (l *Lease) connect(ctx context.Context) error {
	cfg, err := pgx.ParseConfig(l.dsn)
	if err != nil {
		// pgx's parse errors may quote the DSN, password included.
		return fmt.Errorf("lease %s: the storage DSN does not parse", l.name)
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		// Names the holder in pg_stat_activity.
		cfg.RuntimeParams["application_name"] = "crank-ca lease " + l.name
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("lease %s: connect: %w", l.name, err)
	}
	l.conn = conn
	return nil
}
