// Package bench is crank-bench's load generator: it drives a running
// crank-ca over HTTPS with the lego v4 ACME client, as workers do, and
// measures throughput, latency and the CPU both sides spend per issuance.
//
// Several replicas of one CA can be driven at once, every request to the
// next one (replicaTransport), with retries on the next replica after a
// connection error; one replica can be killed mid-run, and afterwards the
// CA can be asked about every certificate the clients received (verify).
//
// Every run is bounded twice, by a count (Config.N) and by a time
// (Config.Timeout), so that a slow or wedged CA ends a run with a report
// instead of hanging it.
package bench

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"

	"github.com/crank-platform/crank-ca/provisioner"
)

// Mode is what a run measures.
type Mode string

const (
	// ModeNewWorker: each issuance is a worker's first start with a
	// pre-minted join token: directory, register with EAB, order,
	// finalize, download.
	ModeNewWorker Mode = "new-worker"
	// ModeRenew: Config.Accounts bound accounts order again and again,
	// each order replacing (ARI "replaces") the account's previous
	// certificate: the steady state of a fleet.
	ModeRenew Mode = "renew"
	// ModeStorm: N bound workers each renew once, their starts spread
	// evenly over Config.Window: a fleet coming back after an outage or a
	// forced rotation. At most Concurrency renewals are in flight; latency
	// counts from each worker's scheduled start.
	ModeStorm Mode = "storm"
)

// Modes lists the modes in the order the standard set runs them (a
// function, so that no caller can change the list for another).
func Modes() []Mode { return []Mode{ModeNewWorker, ModeRenew, ModeStorm} }

// Config is one run.
type Config struct {
	// URL is the CA's base URL, e.g. https://127.0.0.1:9090.
	URL string
	// ReplicaURLs are further servers of the same CA (crank-ca replicas on
	// one PostgreSQL database), base URLs like URL. Every request of every
	// client goes to the next of URL, ReplicaURLs..., round-robin; see
	// replicaTransport. ACME URLs keep naming URL's host.
	ReplicaURLs []string
	// Provisioner is the worker provisioner's name; default "workers".
	Provisioner string
	Mode        Mode
	// N is the number of timed issuances (renewals in renew and storm).
	N int
	// Concurrency is the number of clients working at once; default 16.
	Concurrency int
	// Timeout bounds the whole run, set-up included.
	Timeout time.Duration
	// Window is the storm's spread of renewal starts; default 10s.
	Window time.Duration
	// Accounts is the number of bound accounts that renew mode cycles
	// through; default Concurrency (capped at N).
	Accounts int
	// WorkerPrefix names the workers prefix0001, prefix0002, ...; the
	// names must match the provisioner's worker pattern. Default
	// "bench-<6 random hex>-", so that runs against one CA never reuse a
	// worker name.
	WorkerPrefix string
	// Roots verifies the CA's HTTPS certificate.
	Roots *x509.CertPool
	// ServerPID, when not 0, is the CA's process: its CPU time and peak
	// RSS are read from /proc. In-process tests set it to os.Getpid().
	ServerPID int
	// ServerPIDs are further server processes (replicas): the server CPU
	// per issuance is the sum over ServerPID and all of these.
	ServerPIDs []int
	// DatabasePID, when not 0, is the database server's main process
	// (PostgreSQL's postmaster): the CPU of its whole process tree, the
	// backends it forks included (TreeCPU), is reported as database CPU
	// per issuance, apart from the server's.
	DatabasePID int
	// StorePath, when set, is the store's file or directory; its size
	// after the run is reported.
	StorePath string
	// ProgressEvery is the interval of progress lines; default 5s.
	ProgressEvery time.Duration

	// HTTP01Addr, when set, drives an ordinary ACME provisioner instead
	// of a worker provisioner: accounts register without EAB and prove
	// control of HTTP01Name with http-01, answered by one shared responder
	// listening on this address (":80" for a CA that validates on the
	// standard port). This is how stock step-ca, which has no
	// pre-authorized orders, is measured for comparison.
	HTTP01Addr string
	// HTTP01Name is the DNS name ordered in http-01 mode; the CA must
	// resolve it to this machine. Default "localhost".
	HTTP01Name string

	// MaxRetries bounds how often a request that failed with a connection
	// error is sent again, each time to the next replica; default 3,
	// negative for none. RetryWithin bounds the time from a request's
	// first attempt after which it is not retried; default 10s.
	MaxRetries  int
	RetryWithin time.Duration
	// KillPID, when not 0, is a server process that is sent SIGKILL
	// (Deps.Kill) KillAfter after the timed phase starts, to measure what
	// a crash of one replica costs the clients. Its CPU time and peak RSS
	// are read just before.
	KillPID   int
	KillAfter time.Duration
	// Verify asks the CA, after the timed phase, about every certificate
	// the clients received (set-up included): ARI renewalInfo, which
	// answers 404 for a certificate it has no record of. Each request goes
	// round-robin with retries like the others, so replicas that survived
	// a kill answer. VerifyTimeout bounds it; default 60s.
	Verify        bool
	VerifyTimeout time.Duration
}

// Deps are what a run needs from outside.
type Deps struct {
	// Mint returns a join token for a worker name (crank-bench mints with
	// the CA's token key, so no operator step is needed). Not used in
	// http-01 mode.
	Mint func(worker string) (provisioner.Token, error)
	// Progress receives a progress line every ProgressEvery; nil for none.
	Progress io.Writer
	// Kill ends a server process for Config.KillPID; default SIGKILL.
	Kill func(pid int) error
}

func (c *Config) defaults() error {
	if c.Provisioner == "" {
		c.Provisioner = "workers"
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 16
	}
	if c.Window <= 0 {
		c.Window = 10 * time.Second
	}
	if c.Accounts <= 0 {
		c.Accounts = c.Concurrency
	}
	if c.Accounts > c.N {
		c.Accounts = c.N
	}
	if c.HTTP01Addr != "" && c.HTTP01Name == "" {
		c.HTTP01Name = "localhost"
	}
	if c.ProgressEvery <= 0 {
		c.ProgressEvery = 5 * time.Second
	}
	if c.VerifyTimeout <= 0 {
		c.VerifyTimeout = time.Minute
	}
	if c.WorkerPrefix == "" {
		b := make([]byte, 3)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		c.WorkerPrefix = "bench-" + hex.EncodeToString(b) + "-"
	}
	switch {
	case c.URL == "":
		return errors.New("bench: URL is required")
	case c.N <= 0:
		return errors.New("bench: N must be at least 1")
	case c.Timeout <= 0:
		return errors.New("bench: Timeout must be positive")
	case c.KillPID < 0 || c.KillAfter < 0:
		return errors.New("bench: KillPID and KillAfter must not be negative")
	}
	switch c.Mode {
	case ModeNewWorker, ModeRenew, ModeStorm:
	default:
		return fmt.Errorf("bench: unknown mode %q (want new-worker, renew or storm)", c.Mode)
	}
	return nil
}

// Run performs one bounded run and reports on it. An error means the run
// could not be set up (tokens, set-up issuances); failures of timed
// issuances are counted in the report instead.
func Run(ctx context.Context, cfg Config, deps Deps) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if deps.Mint == nil && cfg.HTTP01Addr == "" {
		return nil, errors.New("bench: Deps.Mint is required")
	}
	if deps.Kill == nil {
		deps.Kill = func(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
	}
	runCtx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	r := &runner{cfg: cfg, deps: deps, ctx: runCtx}
	// One transport for all clients: connections are kept alive and
	// reused, as a long-lived worker's would be (a new TLS connection per
	// issuance would cost the server more than the issuance); its pool is
	// per host, so per replica.
	replicas := append([]string{cfg.URL}, cfg.ReplicaURLs...)
	base := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: cfg.Roots, MinVersion: tls.VersionTLS12},
		MaxIdleConns:        4 * cfg.Concurrency * len(replicas),
		MaxIdleConnsPerHost: 4 * cfg.Concurrency,
		IdleConnTimeout:     time.Minute,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
	}
	defer base.CloseIdleConnections()
	var err error
	if r.transport, err = newReplicaTransport(base, replicas, cfg.MaxRetries, cfg.RetryWithin); err != nil {
		return nil, err
	}
	if cfg.HTTP01Addr != "" {
		r.solver = &http01Solver{keyAuths: map[string]string{}}
		ln, err := net.Listen("tcp", cfg.HTTP01Addr)
		if err != nil {
			return nil, fmt.Errorf("bench: http-01 responder: %w", err)
		}
		hs := &http.Server{Handler: r.solver, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = hs.Serve(ln) }()
		defer hs.Close()
	}
	rep, err := r.run()
	if err != nil || !cfg.Verify {
		return rep, err
	}
	// The check has its own deadline: a run cut off by its timeout still
	// gets its certificates checked.
	vctx, vcancel := context.WithTimeout(ctx, cfg.VerifyTimeout)
	defer vcancel()
	r.mu.Lock()
	ids := slices.Clone(r.certIDs)
	r.mu.Unlock()
	rep.Verify = r.verify(vctx, ids)
	return rep, nil
}

type runner struct {
	cfg  Config
	deps Deps
	ctx  context.Context
	// transport is shared; each lego client gets its own http.Client
	// around it because lego.NewClient rewrites the client's Transport.
	transport *replicaTransport
	solver    *http01Solver // http-01 mode only

	mu        sync.Mutex
	latencies []time.Duration
	failures  map[string]int
	samples   map[string]string
	done      atomic.Int64
	failed    atomic.Int64
	// reorders counts issuances ordered again after orderNotReady (issue).
	reorders atomic.Int64
	// certIDs are the ARI certIDs of every certificate received.
	certIDs []string
}

// account is a bound worker: its ACME client and the certificate it holds.
type account struct {
	name   string
	cl     *lego.Client
	key    crypto.Signer // the certificate key, reused across renewals
	csr    *x509.CertificateRequest
	certID string // ARI certID of the current certificate
}

type legoUser struct {
	key crypto.PrivateKey
	reg *registration.Resource
}

func (u *legoUser) GetEmail() string                        { return "" }
func (u *legoUser) GetRegistration() *registration.Resource { return u.reg }
func (u *legoUser) GetPrivateKey() crypto.PrivateKey        { return u.key }

func (r *runner) worker(i int) string { return fmt.Sprintf("%s%04d", r.cfg.WorkerPrefix, i+1) }

func (r *runner) run() (*Report, error) {
	n := r.cfg.N
	setupCount := 0
	switch r.cfg.Mode {
	case ModeNewWorker:
		setupCount = n
	case ModeRenew:
		setupCount = r.cfg.Accounts
	case ModeStorm:
		setupCount = n
	}
	// Tokens are minted before anything is timed: minting is the
	// operator's side, not the CA's.
	toks := make([]provisioner.Token, setupCount)
	for i := range toks {
		if r.solver != nil {
			break // http-01 accounts register without a token
		}
		t, err := r.deps.Mint(r.worker(i))
		if err != nil {
			return nil, fmt.Errorf("bench: mint token for %s: %w", r.worker(i), err)
		}
		toks[i] = t
	}
	var accts []*account
	if r.cfg.Mode != ModeNewWorker {
		// Renew and storm need bound accounts holding a certificate; their
		// making is not timed.
		accts = make([]*account, setupCount)
		var firstErr error
		var once sync.Once
		r.pool(setupCount, func(i int) {
			a, err := r.newWorker(r.worker(i), toks[i])
			if err != nil {
				once.Do(func() { firstErr = fmt.Errorf("bench: set-up of %s: %w", r.worker(i), err) })
				return
			}
			accts[i] = a
		})
		if firstErr != nil {
			return nil, firstErr
		}
		if err := r.ctx.Err(); err != nil {
			return nil, fmt.Errorf("bench: set-up did not finish within the timeout: %w", err)
		}
	}

	m, err := r.startMeasure()
	if err != nil {
		return nil, err
	}
	stopProgress := r.progress(m.start)
	stopKill := r.scheduleKill(m)
	switch r.cfg.Mode {
	case ModeNewWorker:
		r.pool(n, func(i int) {
			t0 := time.Now()
			_, err := r.newWorker(r.worker(i), toks[i])
			r.record(time.Since(t0), err)
		})
	case ModeRenew:
		free := make(chan *account, len(accts))
		for _, a := range accts {
			free <- a
		}
		r.pool(n, func(int) {
			a := <-free
			defer func() { free <- a }()
			t0 := time.Now()
			err := r.issue(a)
			r.record(time.Since(t0), err)
		})
	case ModeStorm:
		step := r.cfg.Window / time.Duration(n)
		r.pool(n, func(i int) {
			// Latency counts from the worker's scheduled start, so that a
			// storm the CA (or the client pool: raise Concurrency) cannot
			// keep up with shows as waiting, not as a longer run.
			due := m.start.Add(time.Duration(i) * step)
			if !sleepUntil(r.ctx, due) {
				return
			}
			err := r.issue(accts[i])
			r.record(time.Since(due), err)
		})
	}
	stopKill()
	stopProgress()
	return r.report(m), nil
}

// pool runs fn(0..n-1) on Concurrency goroutines and stops handing out
// indices once the run's context is done.
func (r *runner) pool(n int, fn func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(r.cfg.Concurrency, n) {
		wg.Go(func() {
			for i := range next {
				fn(i)
			}
		})
	}
	for i := range n {
		if r.ctx.Err() != nil {
			break
		}
		select {
		case next <- i:
		case <-r.ctx.Done():
		}
	}
	close(next)
	wg.Wait()
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// newWorker is a worker's first start: a fresh account key, the
// directory, registration with the join token as EAB, then one issuance.
func (r *runner) newWorker(name string, tok provisioner.Token) (*account, error) {
	accKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	u := &legoUser{key: accKey}
	lc := lego.NewConfig(u)
	lc.CADirURL = strings.TrimSuffix(r.cfg.URL, "/") + "/acme/" + r.cfg.Provisioner + "/directory"
	lc.HTTPClient = &http.Client{Timeout: 30 * time.Second, Transport: ctxTransport{ctx: r.ctx, base: r.transport}}
	lc.Certificate.KeyType = certcrypto.EC256
	// lego otherwise sleeps 1s/18 before every authorization fetch
	// (docs/performance.md), which would dominate the latency.
	lc.Certificate.OverallRequestLimit = 1000
	cl, err := lego.NewClient(lc)
	if err != nil {
		return nil, err
	}
	var reg *registration.Resource
	tmpl := &x509.CertificateRequest{DNSNames: tok.Claims.DNSNames}
	if r.solver != nil {
		if err := cl.Challenge.SetHTTP01Provider(r.solver); err != nil {
			return nil, err
		}
		reg, err = cl.Registration.Register(registration.RegisterOptions{TermsOfServiceAgreed: true})
		tmpl.DNSNames = []string{r.cfg.HTTP01Name}
	} else {
		reg, err = cl.Registration.RegisterWithExternalAccountBinding(registration.RegisterEABOptions{
			TermsOfServiceAgreed: true, Kid: tok.KID, HmacEncoded: tok.HMACKeyString(),
		})
	}
	if err != nil {
		return nil, err
	}
	u.reg = reg
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	for _, s := range tok.Claims.IPs {
		if ip := net.ParseIP(s); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, err
	}
	a := &account{name: name, cl: cl, key: key, csr: csr}
	return a, r.issue(a)
}

// issue orders, finalizes and downloads one certificate for a, replacing
// the account's previous one when it has one.
//
// A client that retries on another replica (Config.MaxRetries >= 0) also
// orders once more when finalize answers orderNotReady: that is a finalize
// a killed replica had already processed, replayed at the survivor, which
// must refuse it (RFC 8555 section 7.4). lego does not fetch the order
// then, so the client orders again, as a worker's retry loop would; the
// new order does not name the certificate it replaces, since the lost
// order had claimed that. Report.Reorders counts these.
func (r *runner) issue(a *account) error {
	res, err := a.cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{
		CSR: a.csr, PrivateKey: a.key, ReplacesCertID: a.certID,
	})
	if err != nil && r.transport.maxRetries > 0 && Classify(err) == "orderNotReady" && r.ctx.Err() == nil {
		r.reorders.Add(1)
		res, err = a.cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: a.csr, PrivateKey: a.key})
	}
	if err != nil {
		return err
	}
	certs, err := certcrypto.ParsePEMBundle(res.Certificate)
	if err != nil {
		return fmt.Errorf("bench: certificate of %s: %w", a.name, err)
	}
	id, err := certificate.MakeARICertID(certs[0])
	if err != nil {
		return fmt.Errorf("bench: ARI certID of %s: %w", a.name, err)
	}
	a.certID = id
	r.mu.Lock()
	r.certIDs = append(r.certIDs, id)
	r.mu.Unlock()
	return nil
}

func (r *runner) record(d time.Duration, err error) {
	if err != nil && r.ctx.Err() != nil {
		// Cut off by the run's deadline: not the CA's failure, but not a
		// success either; report() counts it as not completed.
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		r.latencies = append(r.latencies, d)
		r.done.Add(1)
		return
	}
	k := Classify(err)
	if r.failures == nil {
		r.failures, r.samples = map[string]int{}, map[string]string{}
	}
	r.failures[k]++
	if _, ok := r.samples[k]; !ok {
		r.samples[k] = truncate(err.Error(), 300)
	}
	r.failed.Add(1)
	r.done.Add(1)
}

// Classify names the kind of a failure for the report: the ACME problem
// type when the CA answered with one, else the transport's failure.
func Classify(err error) string {
	var pd *acme.ProblemDetails
	if errors.As(err, &pd) {
		if pd.Type != "" {
			return strings.TrimPrefix(pd.Type, "urn:ietf:params:acme:error:")
		}
		return fmt.Sprintf("http-%d", pd.HTTPStatus)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return "timeout"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		switch {
		case ue.Timeout():
			return "timeout"
		case IsConnError(ue):
			return "connection"
		}
		return "transport"
	}
	return "other"
}

// progress prints a line every ProgressEvery until the returned func is
// called.
func (r *runner) progress(start time.Time) (stop func()) {
	if r.deps.Progress == nil {
		return func() {}
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(r.cfg.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				el := time.Since(start)
				d, f := r.done.Load(), r.failed.Load()
				fmt.Fprintf(r.deps.Progress, "crank-bench: %s %d/%d done, %d failed, %d retries, %.1fs, %.1f/s\n",
					r.cfg.Mode, d, r.cfg.N, f, r.transport.retries.Load(), el.Seconds(), Rate(int(d-f), el))
			}
		}
	})
	return func() { close(quit); wg.Wait() }
}

// http01Solver answers http-01 challenges for every client of a run from
// one listener: lego's own provider server binds the port per client.
type http01Solver struct {
	mu       sync.Mutex
	keyAuths map[string]string // token -> key authorization
}

func (s *http01Solver) Present(_, token, keyAuth string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keyAuths[token] = keyAuth
	return nil
}

func (s *http01Solver) CleanUp(_, token, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.keyAuths, token)
	return nil
}

func (s *http01Solver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	token, ok := strings.CutPrefix(req.URL.Path, "/.well-known/acme-challenge/")
	s.mu.Lock()
	ka, found := s.keyAuths[token]
	s.mu.Unlock()
	if !ok || !found {
		http.NotFound(w, req)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	_, _ = io.WriteString(w, ka)
}
