package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"time"

	legoacme "github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"
	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"

	"github.com/crank-platform/crank-ca/provisioner"
)

// acmeClient is the lego client of one agent, built lazily so that a worker
// whose certificate is still valid starts without contacting the CA.
type acmeClient struct {
	lego *lego.Client
}

type legoUser struct {
	key crypto.PrivateKey
	reg *registration.Resource
}

func (u *legoUser) GetEmail() string                        { return "" }
func (u *legoUser) GetRegistration() *registration.Resource { return u.reg }
func (u *legoUser) GetPrivateKey() crypto.PrivateKey        { return u.key }

// errNoAccount: there is no account and the caller may not register one.
var errNoAccount = errors.New("no account")

// clientLocked returns the lego client of the current account. Without an
// account it registers one if register is set: with the join token, or with
// the one-time credentials the CA gives for the JWT file (a new account key
// either way). a.mu is held.
func (a *Agent) clientLocked(ctx context.Context, register bool) (_ *acmeClient, err error) {
	if a.client != nil {
		return a.client, nil
	}
	acc := a.acct
	var att *attestation
	if acc == nil {
		if !register {
			return nil, errNoAccount
		}
		switch {
		case a.cfg.JWTFile != "":
			// Credentials from an attempt the CA could not complete are
			// used while they last: the JWT that bought them is spent.
			if att, a.pending = a.pending, nil; att == nil || !a.now().Before(att.ExpiresAt) {
				if att, err = a.attest(ctx); err != nil {
					return nil, err
				}
			}
			defer func() {
				if errors.Is(err, ErrCAUnreachable) {
					a.pending = att
				}
			}()
		case a.cfg.Token == "":
			return nil, ErrNoToken
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		acc = &account{key: key, CAURL: a.cfg.CAURL, Provisioner: a.cfg.Provisioner}
	}
	user := &legoUser{key: acc.key}
	if acc.URI != "" {
		user.reg = &registration.Resource{URI: acc.URI}
	}
	cfg := lego.NewConfig(user)
	cfg.CADirURL = a.cfg.CAURL + "/acme/" + a.cfg.Provisioner + "/directory"
	cfg.UserAgent = "crank-agent"
	cfg.HTTPClient = a.caHTTPClient()
	cfg.Certificate.KeyType = certcrypto.EC256
	// lego sleeps 1s/OverallRequestLimit before each authorization fetch.
	cfg.Certificate.OverallRequestLimit = 1000
	cl, err := lego.NewClient(cfg)
	if err != nil {
		return nil, classify(err, ErrCAUnreachable)
	}
	if acc.URI == "" {
		var opts registration.RegisterEABOptions
		onProblem := ErrTokenRejected
		if att != nil {
			opts = registration.RegisterEABOptions{TermsOfServiceAgreed: true, Kid: att.KID, HmacEncoded: att.HMACKey}
			onProblem = ErrAttestationRefused
		} else {
			kid, hmacKey, err := provisioner.ParseToken(a.cfg.Token)
			if err != nil {
				return nil, fmt.Errorf("--token: %w", err)
			}
			opts = registration.RegisterEABOptions{TermsOfServiceAgreed: true, Kid: kid, HmacEncoded: b64(hmacKey)}
		}
		reg, err := cl.Registration.RegisterWithExternalAccountBinding(opts)
		if err != nil {
			if att != nil {
				return nil, fmt.Errorf("registering with the attested credentials: %w", classify(err, onProblem))
			}
			return nil, classify(err, onProblem)
		}
		acc.URI = reg.URI
		acc.KID = opts.Kid
		user.reg = reg
		if att != nil {
			acc.Attested, acc.Worker, acc.SPIFFEID = true, att.Worker, att.SPIFFEID
			acc.DNSNames, acc.IPs = att.DNSNames, att.IPs
		}
		if err := a.saveAccount(acc); err != nil {
			return nil, err
		}
		if att != nil {
			a.log.Info("account registered by attestation", "account", reg.URI, "attested", att.Worker, "spiffeID", att.SPIFFEID)
		} else {
			a.log.Info("account registered with the join token", "account", reg.URI)
		}
	}
	a.acct = acc
	a.client = &acmeClient{lego: cl}
	return a.client, nil
}

// obtain orders a certificate for the names with key and returns the chain.
func (c *acmeClient) obtain(key *ecdsa.PrivateKey, dns, ips []string, replaces *x509.Certificate) ([]*x509.Certificate, error) {
	tmpl := &x509.CertificateRequest{DNSNames: dns}
	for _, s := range ips {
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
	req := certificate.ObtainForCSRRequest{CSR: csr, PrivateKey: key, Bundle: true}
	if replaces != nil {
		// lego sends it only when the CA advertises renewalInfo.
		if id, err := certificate.MakeARICertID(replaces); err == nil {
			req.ReplacesCertID = id
		}
	}
	res, err := c.lego.Certificate.ObtainForCSR(req)
	if err != nil {
		return nil, classify(err, ErrCertificateRejected)
	}
	return parseCerts(res.Certificate)
}

// classify maps a lego error to the agent's errors: an account the CA no
// longer knows or accepts, a refusal (onProblem), or an unreachable CA.
func classify(err error, onProblem error) error {
	var pd *legoacme.ProblemDetails
	if errors.As(err, &pd) {
		switch pd.Type {
		case legoacme.BadNonceErr:
			return fmt.Errorf("%w: %v", ErrCAUnreachable, err)
		case "urn:ietf:params:acme:error:accountDoesNotExist":
			return fmt.Errorf("%w: %s", ErrAccountRejected, pd.Detail)
		case "urn:ietf:params:acme:error:unauthorized":
			if onProblem == ErrCertificateRejected {
				return fmt.Errorf("%w: %s", ErrAccountRejected, pd.Detail)
			}
		}
		if pd.HTTPStatus >= 500 {
			return fmt.Errorf("%w: %s", ErrCAUnreachable, pd.Detail)
		}
		return fmt.Errorf("%w: %s (%s)", onProblem, pd.Detail, pd.Type)
	}
	return fmt.Errorf("%w: %v", ErrCAUnreachable, err)
}

// ariTime asks the CA's renewalInfo when to renew (RFC 9773). ok is false
// when the CA offers no ARI, cannot be reached, or answers a window that
// makes no sense for this certificate: lego v4 turns any non-200 answer into
// a zero window ("renew now"), which must not cause a renewal storm.
func (a *Agent) ariTime(ctx context.Context, id *Identity) (time.Time, bool) {
	a.mu.Lock()
	cl, err := a.clientLocked(ctx, false)
	a.mu.Unlock()
	if err != nil {
		return time.Time{}, false
	}
	info, err := cl.lego.Certificate.GetRenewalInfo(certificate.RenewalInfoRequest{Cert: id.Leaf()})
	if err != nil {
		if !errors.Is(err, api.ErrNoARI) {
			a.log.Warn("renewalInfo unavailable; renewing on schedule", "err", err)
		}
		return time.Time{}, false
	}
	a.renewalInfoPolled()
	w := info.SuggestedWindow
	leaf := id.Leaf()
	// A window that closed before this certificate was even received
	// cannot be about it (a CA computing from a backdated NotBefore would
	// send one): renewing on it would renew in a loop.
	stale := !id.obtained.IsZero() && w.End.Before(id.obtained)
	if w.Start.IsZero() || w.End.IsZero() || !w.End.After(w.Start) || w.Start.Before(leaf.NotBefore.Add(-time.Hour)) || w.End.After(leaf.NotAfter.Add(time.Hour)) || stale {
		a.log.Warn("ignoring an implausible ARI window", "start", w.Start, "end", w.End)
		return time.Time{}, false
	}
	t := w.Start
	if span := w.End.Sub(w.Start); span > 0 {
		t = t.Add(time.Duration(randInt63n(int64(span))))
	}
	now := a.now()
	if t.Before(now) {
		t = now
	}
	// Poll again after Retry-After if the window is later than that: the CA
	// may move it (revocation, forced rotation).
	if ra := info.RetryAfter; ra > 0 && t.After(now.Add(ra)) {
		a.pollOnly.Store(true)
		return now.Add(ra), true
	}
	return t, true
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func randInt63n(n int64) int64 { return mrand.Int64N(n) }
