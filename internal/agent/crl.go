package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"time"
)

// DefaultCRLInterval is Config.CRLInterval's default. Worker certificates
// live for minutes to hours, so a revocation only matters if it is seen
// within a comparable time.
const DefaultCRLInterval = time.Minute

// maxCRLSize bounds the CRL download. Revoked entries stay in the CRL only
// until the certificate expires, so for short-lived certificates it stays
// small; this only stops a misbehaving server from exhausting memory.
const maxCRLSize = 16 << 20

// ErrCRLRejected: the CA answered with a CRL that cannot be used (it does
// not parse, is not signed by the issuer of our own certificate, or is older
// than the one we hold). The previous CRL stays in force.
var ErrCRLRejected = errors.New("the CA's CRL was rejected")

// CRLNumberError reports a CRL whose number is lower than that of the CRL
// already held, e.g. one served by a lagging replica or replayed. It is an
// ErrCRLRejected: accepting it would forget newer revocations.
type CRLNumberError struct {
	Have, Got *big.Int
}

func (e *CRLNumberError) Error() string {
	return fmt.Sprintf("%v: CRL number %v is older than the %v already held", ErrCRLRejected, e.Got, e.Have)
}

// Is makes errors.Is(err, ErrCRLRejected) hold.
func (e *CRLNumberError) Is(target error) bool { return target == ErrCRLRejected }

// crlSet is one verified CRL reduced to what a handshake needs. It is never
// modified after it is published, so readers need no lock.
type crlSet struct {
	number *big.Int
	// issuer is the DER of the certificate that signed the CRL: CRL numbers
	// are only comparable between CRLs of the same issuer, and a new
	// intermediate starts counting afresh.
	issuer  []byte
	serials map[string]struct{} // big.Int.Text(16) of each revoked serial
}

func serialKey(n *big.Int) string { return n.Text(16) }

// Revoked reports whether serial is listed in the last good CRL. It is safe
// for concurrent use and cheap enough to call on every handshake.
//
// It fails open: before the first CRL has been fetched nothing is revoked,
// so that a worker starts and serves while the CA is down, as it does with a
// certificate from its state directory. After that the last good CRL stays
// in force for as long as fetching fails (revocations are never forgotten
// because the CA is unreachable, and peers are never all refused because a
// CRL has gone stale); it is only replaced by a newer CRL from the same
// issuer, or by one from the issuer of a rotated certificate.
func (a *Agent) Revoked(serial *big.Int) bool {
	s := a.crl.Load()
	if s == nil || serial == nil {
		return false
	}
	_, ok := s.serials[serialKey(serial)]
	return ok
}

// CRLNumber is the number of the CRL in force, nil before the first
// successful fetch. It is for logs and tests.
func (a *Agent) CRLNumber() *big.Int {
	s := a.crl.Load()
	if s == nil {
		return nil
	}
	return new(big.Int).Set(s.number)
}

// RunCRL fetches <CAURL>/crl now and then every Config.CRLInterval until ctx
// is done, and returns ctx.Err(). Start must have succeeded. Failures are
// logged and the previous CRL kept (see Revoked); they never end the loop,
// since a CA that is down for a while must not take its workers with it.
func (a *Agent) RunCRL(ctx context.Context) error {
	id := a.Current()
	if id == nil {
		return errors.New("agent: RunCRL before a successful Start")
	}
	interval := a.cfg.CRLInterval
	if interval <= 0 {
		interval = DefaultCRLInterval
	}
	// The pinned root never changes while the agent runs (Start sets it once
	// and every identity chains to it), so one client serves all fetches and
	// keeps its connection alive between them.
	client := crlClient(id.Roots, a.cfg.HTTPTimeout)
	defer client.CloseIdleConnections()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := a.refreshCRL(ctx, client); err != nil && ctx.Err() == nil {
			have := a.CRLNumber()
			a.log.Warn("CRL not updated; keeping the previous one", "err", err, "crlNumber", have, "haveCRL", have != nil)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// crlClient trusts the pinned roots and nothing else, like the ACME client:
// a CRL is only as good as the channel that says it is the latest one.
func crlClient(roots []*x509.Certificate, timeout time.Duration) *http.Client {
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:           http.ProxyFromEnvironment,
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			IdleConnTimeout: 90 * time.Second,
		},
	}
}

// refreshCRL fetches and checks one CRL and publishes it if it is newer than
// the one held. Errors wrap ErrCAUnreachable or ErrCRLRejected.
func (a *Agent) refreshCRL(ctx context.Context, client *http.Client) error {
	id := a.Current()
	issuer := issuerOf(id)
	if issuer == nil {
		return fmt.Errorf("%w: cannot tell which CA issued our own certificate (serial %s)", ErrCRLRejected, id.Serial())
	}
	der, err := getCRL(ctx, client, a.cfg.CAURL+"/crl")
	if err != nil {
		return err
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCRLRejected, err)
	}
	// The CRL must come from the CA that issues our peers' certificates,
	// which is the one that issued ours: signed by its key, not just named.
	if !bytes.Equal(crl.RawIssuer, issuer.RawSubject) {
		return fmt.Errorf("%w: issued by %q, want %q", ErrCRLRejected, crl.Issuer, issuer.Subject)
	}
	if err := crl.CheckSignatureFrom(issuer); err != nil {
		return fmt.Errorf("%w: signature does not verify against %q: %v", ErrCRLRejected, issuer.Subject, err)
	}
	if crl.Number == nil {
		return fmt.Errorf("%w: no CRL number", ErrCRLRejected)
	}
	prev := a.crl.Load()
	sameIssuer := prev != nil && bytes.Equal(prev.issuer, issuer.Raw)
	if sameIssuer {
		switch crl.Number.Cmp(prev.number) {
		case -1:
			return &CRLNumberError{Have: new(big.Int).Set(prev.number), Got: crl.Number}
		case 0:
			// The same CRL again; RFC 5280 numbers are unique per issuer.
			a.log.Debug("CRL unchanged", "crlNumber", crl.Number)
			return nil
		}
	}
	set := &crlSet{
		number:  crl.Number,
		issuer:  issuer.Raw,
		serials: make(map[string]struct{}, len(crl.RevokedCertificateEntries)),
	}
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber != nil {
			set.serials[serialKey(e.SerialNumber)] = struct{}{}
		}
	}
	a.crl.Store(set)
	args := []any{"crlNumber", crl.Number, "revoked", len(set.serials), "thisUpdate", crl.ThisUpdate, "nextUpdate", crl.NextUpdate}
	if !crl.NextUpdate.IsZero() && a.now().After(crl.NextUpdate) {
		// Still newer than what we had, so still used; the CA is behind.
		a.log.Warn("CRL updated, but it is past its nextUpdate", args...)
	} else {
		a.log.Info("CRL updated", args...)
	}
	if a.Revoked(id.Leaf().SerialNumber) {
		// Our own certificate was revoked: renew now rather than at the
		// next ARI poll, which may be an hour away.
		a.log.Warn("our certificate is in the CRL; renewing now", "serial", id.Serial())
		a.wakeUp()
	}
	return nil
}

// issuerOf is the certificate that signed our leaf: the first intermediate,
// or, for a chain without one, the pinned root that verifies the leaf.
func issuerOf(id *Identity) *x509.Certificate {
	if len(id.Chain) > 1 {
		return id.Chain[1]
	}
	for _, r := range id.Roots {
		if id.Leaf().CheckSignatureFrom(r) == nil {
			return r
		}
	}
	return nil
}

func getCRL(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCAUnreachable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: GET /crl answered %s", ErrCAUnreachable, resp.Status)
	}
	der, err := io.ReadAll(io.LimitReader(resp.Body, maxCRLSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading the CRL: %v", ErrCAUnreachable, err)
	}
	if len(der) > maxCRLSize {
		return nil, fmt.Errorf("%w: the CRL exceeds %d bytes", ErrCRLRejected, maxCRLSize)
	}
	return der, nil
}
