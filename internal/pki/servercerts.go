package pki

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for ServerCertsConfig.
const (
	DefaultServerLifetime = 24 * time.Hour
	DefaultRenewAt        = 2.0 / 3.0
)

// Retry and wake-up bounds for ServerCerts.Run.
const (
	minRetryBackoff = time.Second
	maxRetryBackoff = time.Minute
	// maxSleep caps how long Run sleeps before re-checking. Timers follow the
	// monotonic clock, which may stop during suspend or disagree with a
	// stepped wall clock; waking periodically keeps renewal close to plan.
	maxSleep = 15 * time.Minute
)

// ServerCertsConfig configures NewServerCerts.
type ServerCertsConfig struct {
	// CA signs the server certificates; required.
	CA *CA
	// DNSNames and IPs become the certificate's SANs; at least one is
	// required. They are copied, so later changes to the slices have no effect.
	DNSNames []string
	IPs      []net.IP
	// Lifetime of each certificate; 0 means DefaultServerLifetime. Short
	// lifetimes are the point: the certificate is reissued automatically, so
	// a leaked server key is only useful for a day.
	Lifetime time.Duration
	// RenewAt is the fraction of a certificate's lifetime after which a new
	// one is issued; 0 means DefaultRenewAt. Must be in (0, 1) so there is
	// always slack to retry before expiry.
	RenewAt float64
	// Now is the clock; nil means time.Now. Injected for tests.
	Now func() time.Time
	// Logger receives issuance events (serial, notAfter, names; never keys).
	// nil discards.
	Logger *slog.Logger
}

// ServerCerts issues and renews the certificate that crank-ca's own HTTPS
// listener presents, signed by the intermediate. It is safe for concurrent
// use. Wire it up as tls.Config.GetCertificate and leave
// tls.Config.Certificates empty: crypto/tls prefers Certificates[0] over
// GetCertificate for clients that send no SNI (e.g. connecting by IP).
type ServerCerts struct {
	ca       *CA
	dnsNames []string
	ips      []net.IP
	lifetime time.Duration
	renewAt  float64
	now      func() time.Time
	log      *slog.Logger

	// cur holds the current certificate; readers never block on it.
	cur atomic.Pointer[serverCert]
	// issueMu serialises issuance so concurrent handshakes that all notice
	// the certificate is due trigger exactly one new certificate.
	issueMu sync.Mutex
	// issue creates a certificate valid from the given time. A field so
	// tests can inject failures; always s.issueCert in production.
	issue func(now time.Time) (*serverCert, error)
	// backoffMin/backoffMax bound Run's retry delay; fields so tests can
	// shrink them.
	backoffMin, backoffMax time.Duration
}

// serverCert is an issued certificate with its renewal schedule.
type serverCert struct {
	cert     *tls.Certificate
	renewAt  time.Time // after this, a new certificate should be issued
	notAfter time.Time // after this, the certificate is useless
}

// NewServerCerts validates cfg and issues the first certificate immediately,
// so that a misconfiguration (e.g. an expired intermediate) is reported at
// startup rather than on the first TLS handshake.
func NewServerCerts(cfg ServerCertsConfig) (*ServerCerts, error) {
	if cfg.CA == nil || cfg.CA.Intermediate == nil || cfg.CA.IntermediateKey == nil {
		return nil, errors.New("pki: ServerCertsConfig.CA with intermediate certificate and key is required")
	}
	if len(cfg.DNSNames) == 0 && len(cfg.IPs) == 0 {
		return nil, errors.New("pki: ServerCertsConfig needs at least one DNS name or IP")
	}
	if cfg.Lifetime == 0 {
		cfg.Lifetime = DefaultServerLifetime
	}
	if cfg.Lifetime < 0 {
		return nil, fmt.Errorf("pki: ServerCertsConfig.Lifetime %s must be positive", cfg.Lifetime)
	}
	if cfg.RenewAt == 0 {
		cfg.RenewAt = DefaultRenewAt
	}
	if !(cfg.RenewAt > 0 && cfg.RenewAt < 1) {
		return nil, fmt.Errorf("pki: ServerCertsConfig.RenewAt %v must be in (0, 1)", cfg.RenewAt)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &ServerCerts{
		ca:         cfg.CA,
		dnsNames:   slices.Clone(cfg.DNSNames),
		lifetime:   cfg.Lifetime,
		renewAt:    cfg.RenewAt,
		now:        cfg.Now,
		log:        cfg.Logger,
		backoffMin: minRetryBackoff,
		backoffMax: maxRetryBackoff,
	}
	for _, ip := range cfg.IPs {
		s.ips = append(s.ips, slices.Clone(ip))
	}
	s.issue = s.issueCert
	sc, err := s.issue(s.now())
	if err != nil {
		return nil, err
	}
	s.cur.Store(sc)
	return s, nil
}

// Current returns the current certificate without renewing it.
func (s *ServerCerts) Current() *tls.Certificate { return s.cur.Load().cert }

// GetCertificate is meant for tls.Config.GetCertificate. It returns the
// current certificate, first issuing a new one if the current one is past its
// renewal point. Only one issuance runs at a time; concurrent callers wait for
// it and then share the result. If renewal fails but the current certificate
// has not expired yet, the failure is logged and the current certificate is
// served, because a still-valid certificate beats a failed handshake.
func (s *ServerCerts) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	now := s.now()
	sc := s.cur.Load()
	if now.Before(sc.renewAt) {
		return sc.cert, nil
	}
	sc, err := s.renewIfDue(now)
	if err != nil {
		if now.Before(sc.notAfter) {
			s.log.Warn("pki: server certificate renewal failed; serving current certificate",
				"error", err, "not_after", sc.notAfter)
			return sc.cert, nil
		}
		return nil, err
	}
	return sc.cert, nil
}

// Run renews the certificate proactively, so that handshakes normally never
// pay for issuance: it sleeps until the current certificate's renewal point,
// issues a new one, and repeats. Failed issuance is retried with exponential
// backoff from 1s up to 1m (retries continue until success or ctx is done;
// GetCertificate keeps serving the still-valid certificate meanwhile). Run
// returns ctx.Err() when ctx is done.
func (s *ServerCerts) Run(ctx context.Context) error {
	var backoff time.Duration // 0 = not retrying
	timer := time.NewTimer(maxSleep)
	timer.Stop() // armed by Reset below; since Go 1.23 no drain is needed
	defer timer.Stop()
	for {
		wait := backoff
		if wait == 0 {
			wait = max(s.cur.Load().renewAt.Sub(s.now()), 0)
		}
		timer.Reset(min(wait, maxSleep))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
		if _, err := s.renewIfDue(s.now()); err != nil {
			backoff = min(max(2*backoff, s.backoffMin), s.backoffMax)
			s.log.Error("pki: server certificate renewal failed; will retry",
				"error", err, "retry_in", backoff)
			continue
		}
		backoff = 0
	}
}

// renewIfDue issues a new certificate if the current one is due at now and
// returns the certificate that is current afterwards. On error it returns
// the unchanged current certificate along with the error.
func (s *ServerCerts) renewIfDue(now time.Time) (*serverCert, error) {
	s.issueMu.Lock()
	defer s.issueMu.Unlock()
	sc := s.cur.Load()
	if now.Before(sc.renewAt) {
		return sc, nil // someone else renewed while we waited for the lock
	}
	next, err := s.issue(now)
	if err != nil {
		return sc, err
	}
	s.cur.Store(next)
	return next, nil
}

// issueCert creates a new key and certificate valid from now. The validity is
// clamped to the intermediate's NotAfter because a chain is only as valid as
// its shortest-lived link.
func (s *ServerCerts) issueCert(now time.Time) (*serverCert, error) {
	inter := s.ca.Intermediate
	notAfter := minTime(now.Add(s.lifetime), inter.NotAfter)
	if !notAfter.After(now) {
		return nil, fmt.Errorf("pki: cannot issue server certificate: intermediate %q expired at %s",
			inter.Subject.CommonName, inter.NotAfter.UTC().Format(time.RFC3339))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate server key: %w", err)
	}
	var cn string
	if len(s.dnsNames) > 0 {
		cn = s.dnsNames[0]
	} else {
		cn = s.ips[0].String()
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		DNSNames:              s.dnsNames,
		IPAddresses:           s.ips,
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	leaf, err := sign(tmpl, inter, &key.PublicKey, s.ca.IntermediateKey)
	if err != nil {
		return nil, fmt.Errorf("pki: sign server certificate: %w", err)
	}
	// Schedule renewal relative to the issuance time rather than the
	// backdated NotBefore, so the backdate does not eat into the lifetime.
	renewAt := now.Add(time.Duration(float64(notAfter.Sub(now)) * s.renewAt))
	s.log.Info("pki: issued server certificate",
		"serial", leaf.SerialNumber.Text(16),
		"not_after", leaf.NotAfter,
		"renew_at", renewAt,
		"dns_names", leaf.DNSNames,
		"ips", leaf.IPAddresses)
	return &serverCert{
		cert: &tls.Certificate{
			Certificate: [][]byte{leaf.Raw, inter.Raw},
			PrivateKey:  key,
			Leaf:        leaf,
		},
		renewAt:  renewAt,
		notAfter: leaf.NotAfter,
	}, nil
}
