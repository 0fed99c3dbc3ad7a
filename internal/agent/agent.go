package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/crank-platform/crank-ca/internal/paths"
	"github.com/crank-platform/crank-ca/provisioner"
)

// Defaults for Config's zero values.
const (
	DefaultProvisioner = "workers"
	DefaultRenewAt     = 2.0 / 3.0
	DefaultJitter      = 0.1
	DefaultRetryMin    = time.Second
	DefaultRetryMax    = time.Minute
	DefaultHTTPTimeout = 30 * time.Second
)

// Config configures an Agent. Flags and environment are read by cmd/, which
// fills this in.
type Config struct {
	// CAURL is the CA's base URL, e.g. https://127.0.0.1:9090.
	CAURL string
	// Provisioner is the worker-attestation provisioner; default "workers".
	Provisioner string
	// Fingerprint pins the CA's root (hex SHA-256 of its DER). Required
	// unless the state directory already holds the root.
	Fingerprint string
	// Token is the compact join token; needed only while the state
	// directory holds no account.
	Token string
	// JWTFile, instead of Token, names a file holding a JWT the platform
	// gives the worker (a Kubernetes projected service-account token, an
	// OIDC identity token). The agent reads it afresh at every attestation
	// (the platform rotates it) and exchanges it at POST
	// <CAURL>/attest/<Provisioner> for one-time EAB credentials, with which
	// it registers an account and orders the attested names. When the CA no
	// longer accepts that account (maxBindingAge, or the identity was
	// disabled and enabled), the agent attests again and registers a new
	// account, serving the current certificate meanwhile. Exclusive with
	// Token.
	JWTFile string
	// Worker is the worker's name. With JWTFile it may be empty (the CA
	// decides the identity); when set, a JWT attesting another plain worker
	// name is refused. Kubernetes identities (ns/<ns>/sa/<sa>) are not
	// worker names, and Worker is then only the name in logs.
	Worker string
	// StateDir holds the account, certificate, key and root across
	// restarts (see internal/paths for where it defaults to).
	StateDir string
	Logger   *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// RenewAt is the fraction of the lifetime after which to renew when the
	// CA offers no ARI; Jitter spreads it by ±Jitter of that point.
	RenewAt, Jitter float64
	// RetryMin and RetryMax bound the exponential backoff while the CA
	// cannot be reached.
	RetryMin, RetryMax time.Duration
	// HTTPTimeout bounds every request to the CA.
	HTTPTimeout time.Duration
	// CRLInterval is how often RunCRL fetches the CA's CRL; zero means
	// DefaultCRLInterval. It bounds how long a revoked peer can still
	// connect, so it is short, while a CRL is small and cheap to serve.
	CRLInterval time.Duration
	// Observer, if set, hears of every renewal attempt and renewalInfo
	// answer (metrics).
	Observer Observer
}

// Agent obtains and renews one worker's certificate.
type Agent struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	// lastErr is the error of the last renewal attempt (nil after a
	// success); see LastError.
	errMu   sync.Mutex
	lastErr error

	cur  atomic.Pointer[Identity]
	next atomic.Pointer[time.Time]
	// pollOnly marks a planned wake-up that only asks ARI again.
	pollOnly atomic.Bool
	// wake cuts the current wait of Run short (our certificate was found
	// in the CRL).
	wake chan struct{}

	mu     sync.Mutex // serialises CA interactions and guards the fields below
	root   *x509.Certificate
	acct   *account
	client *acmeClient
	// pending are attested credentials not yet registered because the CA
	// could not be reached in between; see clientLocked.
	pending *attestation

	subMu sync.Mutex
	subs  []chan struct{}

	// crl is the last good CRL (see crl.go), nil before the first fetch.
	crl atomic.Pointer[crlSet]
}

// New checks the configuration; it does no I/O.
func New(cfg Config) (*Agent, error) {
	if cfg.Provisioner == "" {
		cfg.Provisioner = DefaultProvisioner
	}
	if cfg.RenewAt == 0 {
		cfg.RenewAt = DefaultRenewAt
	}
	if cfg.Jitter == 0 {
		cfg.Jitter = DefaultJitter
	}
	if cfg.RetryMin == 0 {
		cfg.RetryMin = DefaultRetryMin
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = DefaultRetryMax
	}
	if cfg.HTTPTimeout == 0 {
		cfg.HTTPTimeout = DefaultHTTPTimeout
	}
	var errs []error
	if !strings.HasPrefix(cfg.CAURL, "https://") {
		errs = append(errs, fmt.Errorf("--ca-url %q must be an https URL", cfg.CAURL))
	}
	cfg.CAURL = strings.TrimRight(cfg.CAURL, "/")
	if !paths.ValidWorker(cfg.Worker) && (cfg.Worker != "" || cfg.JWTFile == "") {
		errs = append(errs, fmt.Errorf("--worker %q is not a valid worker name", cfg.Worker))
	}
	if cfg.Token != "" && cfg.JWTFile != "" {
		errs = append(errs, errors.New("--token and --jwt-file are mutually exclusive: a worker joins with a join token or with a JWT, not both"))
	}
	if cfg.StateDir == "" {
		errs = append(errs, errors.New("a state directory is required"))
	}
	if cfg.Fingerprint != "" {
		fp, err := NormalizeFingerprint(cfg.Fingerprint)
		if err != nil {
			errs = append(errs, fmt.Errorf("--fingerprint: %w", err))
		}
		cfg.Fingerprint = fp
	}
	if cfg.Token != "" && cfg.JWTFile == "" {
		c, err := provisioner.ReadClaims(cfg.Token)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("--token: %w", err))
		case c.Worker != cfg.Worker:
			errs = append(errs, fmt.Errorf("--token was minted for worker %q, not %q", c.Worker, cfg.Worker))
		case c.Provisioner != cfg.Provisioner:
			errs = append(errs, fmt.Errorf("--token was minted for provisioner %q, not %q", c.Provisioner, cfg.Provisioner))
		}
	}
	if !(0 < cfg.RenewAt && cfg.RenewAt < 1) || cfg.Jitter < 0 || cfg.RenewAt*(1+cfg.Jitter) >= 1 {
		errs = append(errs, errors.New("renewal must happen before expiry: 0 < renewAt*(1+jitter) < 1"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, now: cfg.Now, wake: make(chan struct{}, 1)}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.now == nil {
		a.now = time.Now
	}
	if cfg.Worker != "" {
		a.log = a.log.With("worker", cfg.Worker)
	}
	return a, nil
}

// Current returns the certificate to present now. It is nil before Start
// succeeded and never nil after.
func (a *Agent) Current() *Identity { return a.cur.Load() }

// NextRenewal is when the agent plans its next renewal attempt.
func (a *Agent) NextRenewal() time.Time {
	if t := a.next.Load(); t != nil {
		return *t
	}
	return time.Time{}
}

// Subscribe returns a channel that receives a value after every rotation.
// Rotations that happen while the receiver is busy are coalesced.
func (a *Agent) Subscribe() <-chan struct{} {
	ch := make(chan struct{}, 1)
	a.subMu.Lock()
	a.subs = append(a.subs, ch)
	a.subMu.Unlock()
	return ch
}

// publish swaps in a new identity (handshakes use it from now on) and tells
// subscribers.
func (a *Agent) publish(id *Identity) {
	a.cur.Store(id)
	a.notify()
}

func (a *Agent) notify() {
	a.subMu.Lock()
	defer a.subMu.Unlock()
	for _, ch := range a.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Start makes the agent ready to serve. A still-valid certificate in the
// state directory is used as it is, without contacting the CA, so a worker
// starts while the CA is down. Otherwise it bootstraps trust, registers with
// the join token (or by attesting the JWT file) if there is no account yet,
// and obtains a certificate.
func (a *Agent) Start(ctx context.Context) error {
	if err := paths.Ensure(a.cfg.StateDir); err != nil {
		return err
	}
	st, err := loadState(a.cfg.StateDir)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if st.root != nil && (a.cfg.Fingerprint == "" || fingerprint(st.root) == a.cfg.Fingerprint) {
		a.root = st.root
	}
	if acc := st.account; acc != nil && acc.CAURL == a.cfg.CAURL && acc.Provisioner == a.cfg.Provisioner {
		a.acct = acc
		if kid := tokenKID(a.cfg.Token); a.cfg.JWTFile == "" && kid != "" && kid != acc.KID {
			// A new token means the operator re-enrolled this worker
			// (for example after disabling and enabling it): register
			// anew instead of reusing an account the CA may refuse.
			a.log.Info("a new join token was given; registering a new account")
			a.acct = nil
			st.identity = nil
		}
	}
	if id := st.identity; id != nil && a.root != nil && id.Roots[0].Equal(a.root) && a.now().Before(id.NotAfter()) && id.SPIFFEID.Path() != "" {
		a.publish(id)
		a.log.Info("using certificate from state", "serial", id.Serial(), "notAfter", id.NotAfter(), "spiffeID", id.SPIFFEID.String())
		return nil
	}
	if a.acct == nil && a.cfg.Token == "" && a.cfg.JWTFile == "" {
		return ErrNoToken
	}
	if a.root == nil {
		if a.cfg.Fingerprint == "" {
			return errors.New("--fingerprint is required until the state directory holds the CA's root")
		}
		root, err := fetchRoot(ctx, a.cfg.CAURL, a.cfg.Fingerprint, a.cfg.HTTPTimeout)
		if err != nil {
			return err
		}
		if err := a.saveRoot(root); err != nil {
			return err
		}
		a.root = root
		a.log.Info("pinned the CA root", "fingerprint", a.cfg.Fingerprint)
	}
	names, ips := a.firstNames(st.identity)
	if a.cfg.JWTFile != "" && a.acct != nil && !a.acct.Attested && len(names)+len(ips) == 0 {
		// An account from a join token, and no certificate to take the
		// names from: attestation tells the names.
		a.log.Info("no names known for the account in state; attesting for a new account")
		a.acct = nil
	}
	id, err := a.obtainOrReattestLocked(ctx, names, ips, nil)
	if err != nil {
		return err
	}
	a.publish(id)
	return nil
}

func tokenKID(token string) string {
	if token == "" {
		return ""
	}
	kid, _, err := provisioner.ParseToken(token)
	if err != nil {
		return ""
	}
	return kid
}

// firstNames are the names of the first order at start-up: those the token
// carries, else those of the (expired) certificate in state, so a worker
// stopped past its certificate's expiry restarts without a token.
func (a *Agent) firstNames(expired *Identity) ([]string, []string) {
	if a.cfg.Token != "" {
		if c, err := provisioner.ReadClaims(a.cfg.Token); err == nil && len(c.DNSNames)+len(c.IPs) > 0 {
			return c.DNSNames, c.IPs
		}
	}
	if expired == nil {
		return nil, nil
	}
	var ips []string
	for _, ip := range expired.Leaf().IPAddresses {
		ips = append(ips, ip.String())
	}
	return expired.Leaf().DNSNames, ips
}

// Run renews the certificate until ctx is done and returns ctx.Err(). Start
// must have succeeded.
func (a *Agent) Run(ctx context.Context) error {
	if a.Current() == nil {
		return errors.New("agent: Run before a successful Start")
	}
	backoff := time.Duration(0)
	at := a.planNext(ctx)
	for {
		woken, err := a.sleepUntil(ctx, at)
		if err != nil {
			return err
		}
		if backoff == 0 && a.pollOnly.Swap(false) && !woken {
			at = a.planNext(ctx)
			continue
		}
		err = a.renew(ctx)
		a.renewalDone(err)
		if err == nil {
			backoff = 0
			// Subscribers hear at once (files, signals); planning may wait
			// for the CA's renewalInfo.
			a.notify()
			at = a.planNext(ctx)
			continue
		}
		backoff = a.nextBackoff(backoff)
		// The CA asked for a pause (429, 503): not sooner than that.
		var ra *retryAfterError
		if errors.As(err, &ra) && ra.after > backoff {
			backoff = min(ra.after, maxRetryAfter)
		}
		at = a.now().Add(backoff)
		a.next.Store(&at)
		cur := a.Current()
		var ae *AttestationError
		if errors.As(err, &ae) {
			// Says exactly why, for the operator who must fix the token
			// (or the CA's attestor) before renewals resume.
			a.log.Error("renewal stopped: the CA refused the attestation; still serving the current certificate",
				"check", ae.Check, "detail", ae.Detail, "status", ae.Status, "jwtFile", a.cfg.JWTFile,
				"serial", cur.Serial(), "notAfter", cur.NotAfter(), "retryIn", backoff.Round(time.Millisecond),
				"expired", !a.now().Before(cur.NotAfter()))
			continue
		}
		a.log.Error("renewal failed; still serving the current certificate", "err", err,
			"serial", cur.Serial(), "notAfter", cur.NotAfter(), "retryIn", backoff.Round(time.Millisecond),
			"expired", !a.now().Before(cur.NotAfter()))
	}
}

// maxRetryAfter bounds how long a Retry-After from the CA may delay the
// next attempt.
const maxRetryAfter = time.Hour

// LastError is the error of the last renewal attempt: nil before any and
// after a success. While a JWT-file agent cannot renew because the CA
// refuses its JWT, it is an *AttestationError (errors.As) naming the CA's
// check and detail.
func (a *Agent) LastError() error {
	a.errMu.Lock()
	defer a.errMu.Unlock()
	return a.lastErr
}

func (a *Agent) setLastError(err error) {
	a.errMu.Lock()
	a.lastErr = err
	a.errMu.Unlock()
}

// planNext plans, records and logs the next renewal (or, when the CA's
// window is further than its Retry-After, the next renewalInfo poll).
func (a *Agent) planNext(ctx context.Context) time.Time {
	at := a.plan(ctx)
	a.next.Store(&at)
	if a.pollOnly.Load() {
		a.log.Debug("renewalInfo poll planned", "at", at, "serial", a.Current().Serial())
	} else {
		a.log.Info("renewal planned", "at", at, "serial", a.Current().Serial(), "notAfter", a.Current().NotAfter())
	}
	return at
}

// nextBackoff doubles up to RetryMax with ±20% jitter.
func (a *Agent) nextBackoff(prev time.Duration) time.Duration {
	d := prev * 2
	if d < a.cfg.RetryMin {
		d = a.cfg.RetryMin
	}
	if d > a.cfg.RetryMax {
		d = a.cfg.RetryMax
	}
	return time.Duration(float64(d) * (0.8 + 0.4*mrand.Float64()))
}

// plan picks the next renewal time: the CA's ARI window when it offers one
// and it is sane, else RenewAt of the lifetime with jitter.
func (a *Agent) plan(ctx context.Context) time.Time {
	a.pollOnly.Store(false)
	id := a.Current()
	if t, ok := a.ariTime(ctx, id); ok {
		return t
	}
	nb, na := id.Leaf().NotBefore, id.NotAfter()
	if id.obtained.After(nb) && id.obtained.Before(na) {
		nb = id.obtained
	}
	life := na.Sub(nb)
	f := a.cfg.RenewAt * (1 + a.cfg.Jitter*(2*mrand.Float64()-1))
	return nb.Add(time.Duration(float64(life) * f))
}

// sleepUntil waits until at, or until wakeUp is called (woken is true).
func (a *Agent) sleepUntil(ctx context.Context, at time.Time) (woken bool, err error) {
	d := at.Sub(a.now())
	if d <= 0 {
		return false, ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false, ctx.Err()
	case <-t.C:
		return false, nil
	case <-a.wake:
		return true, nil
	}
}

// wakeUp makes Run attempt a renewal now.
func (a *Agent) wakeUp() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// RenewNow makes one renewal attempt immediately, outside the schedule (an
// operator's nudge, or a test). Start must have succeeded.
func (a *Agent) RenewNow(ctx context.Context) error {
	if a.Current() == nil {
		return errors.New("agent: RenewNow before a successful Start")
	}
	err := a.renew(ctx)
	a.renewalDone(err)
	if err != nil {
		return err
	}
	a.notify()
	return nil
}

// renew obtains a new certificate for the current one's names (an attested
// account's names, if it has them).
func (a *Agent) renew(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	old := a.Current()
	var ips []string
	for _, ip := range old.Leaf().IPAddresses {
		ips = append(ips, ip.String())
	}
	id, err := a.obtainOrReattestLocked(ctx, old.Leaf().DNSNames, ips, old.Leaf())
	if err != nil {
		return err
	}
	// Swap in now; the caller notifies subscribers.
	a.cur.Store(id)
	return nil
}

// obtainOrReattestLocked obtains a certificate. When the CA no longer
// accepts the account of a JWT-file agent (maxBindingAge passed, the
// identity was disabled and enabled again), it attests again with a fresh
// read of the file, registers a new account with a new key, and orders with
// that; the old account is never used again. The current certificate stays
// in service whatever happens here. a.mu is held.
func (a *Agent) obtainOrReattestLocked(ctx context.Context, dns, ips []string, replaces *x509.Certificate) (*Identity, error) {
	had := a.acct
	id, err := a.obtainLocked(ctx, dns, ips, replaces)
	if err == nil || a.cfg.JWTFile == "" || had == nil || a.acct != had || !errors.Is(err, ErrAccountRejected) {
		return id, err
	}
	// The error's own advice (a new join token) is not for this agent.
	reason := strings.TrimPrefix(err.Error(), ErrAccountRejected.Error()+": ")
	a.log.Warn("the CA no longer accepts the account; attesting again with the JWT file", "account", had.URI, "reason", reason)
	a.acct, a.client = nil, nil
	// The replaced certificate belongs to the old account: the new one may
	// not name it.
	return a.obtainLocked(ctx, nil, nil, nil)
}

// obtainLocked registers if needed and obtains a certificate with a fresh
// P-256 key; a.mu is held. An account registered by attestation orders the
// attested names, whatever dns and ips say.
func (a *Agent) obtainLocked(ctx context.Context, dns, ips []string, replaces *x509.Certificate) (*Identity, error) {
	cl, err := a.clientLocked(ctx, true)
	if err != nil {
		return nil, err
	}
	if acc := a.acct; acc.Attested && len(acc.DNSNames)+len(acc.IPs) > 0 {
		dns, ips = acc.DNSNames, acc.IPs
	}
	if len(dns)+len(ips) == 0 {
		return nil, errors.New("no names to order: the join token carries none (mint it with a current crank-ca)")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	start := a.now()
	chain, err := cl.obtain(key, dns, ips, replaces)
	if replaces != nil && errors.Is(err, ErrAccountRejected) {
		// The CA refuses to let an account replace a certificate another
		// account obtained (unauthorized, as for a dead account): ask
		// once more without naming it before concluding anything.
		chain, err = cl.obtain(key, dns, ips, nil)
	}
	if err != nil {
		return nil, err
	}
	id, err := newIdentity(chain, key, []*x509.Certificate{a.root})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCertificateRejected, err)
	}
	if want := a.acct.SPIFFEID; want != "" && id.SPIFFEID.String() != want {
		return nil, fmt.Errorf("%w: the certificate names %s, but the CA attested %s", ErrCertificateRejected, id.SPIFFEID, want)
	}
	id.obtained = start
	if err := a.saveIdentity(id); err != nil {
		return nil, err
	}
	verb := "certificate obtained"
	if replaces != nil {
		verb = "certificate renewed"
	}
	a.log.Info(verb, "serial", id.Serial(), "notAfter", id.NotAfter(), "spiffeID", id.SPIFFEID.String(), "took", a.now().Sub(start).Round(time.Millisecond))
	return id, nil
}
