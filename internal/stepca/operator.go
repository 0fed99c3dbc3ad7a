package stepca

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/smallstep/certificates/authority"
	steppro "github.com/smallstep/certificates/authority/provisioner"
	stepdb "github.com/smallstep/certificates/db"

	"github.com/crank-platform/crank-ca/internal/store"
)

// Errors of the operator operations.
var (
	ErrUnknownCertificate = errors.New("no certificate with this serial was issued here")
	ErrAlreadyRevoked     = errors.New("certificate already revoked")
)

// Revoke revokes a certificate: smallstep records it and regenerates the
// CRL, and crank-ca's record moves its ARI window to now.
func (c *CA) Revoke(ctx context.Context, serial string, reasonCode int, reason string) error {
	cert, err := c.auth.GetDatabase().GetCertificate(serial)
	if err != nil || cert == nil {
		return fmt.Errorf("%w: %s", ErrUnknownCertificate, serial)
	}
	if revoked, _ := c.auth.IsRevoked(serial); revoked {
		return fmt.Errorf("%w: %s", ErrAlreadyRevoked, serial)
	}
	rctx := steppro.NewContextWithMethod(ctx, steppro.RevokeMethod)
	if err := c.auth.Revoke(rctx, &authority.RevokeOptions{Serial: serial, ReasonCode: reasonCode, Reason: reason, ACME: true, Crt: cert}); err != nil {
		if errors.Is(err, stepdb.ErrAlreadyExists) {
			return fmt.Errorf("%w: %s", ErrAlreadyRevoked, serial)
		}
		return fmt.Errorf("revoke %s: %w", serial, err)
	}
	if err := c.store.IndexRevocation(ctx, serial, cert.NotAfter); err != nil {
		c.log.Warn("indexing a revocation for retention", "serial", serial, "err", err)
	}
	now := c.now().UTC()
	if _, err := c.store.UpdateCert(ctx, serial, func(r *store.CertRecord) error {
		r.RevokedAt, r.Reason = now, reason
		if r.RenewNow.IsZero() {
			r.RenewNow = now
		}
		return nil
	}); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("revoke %s: record: %w", serial, err)
	}
	c.audit.Warn("certificate revoked", "serial", serial, "reason", reason, "reasonCode", reasonCode)
	return nil
}

// IsRevoked reports whether smallstep has the serial as revoked.
func (c *CA) IsRevoked(serial string) bool {
	r, _ := c.auth.IsRevoked(serial)
	return r
}

// CRL returns the stored CRL (DER), signed by the intermediate, read from
// the database so that every replica serves the same one. When a
// revocation is missing from it, it first waits, bounded, for the CRL lease
// holder to store one that lists it (see crl.go).
func (c *CA) CRL(ctx context.Context) ([]byte, error) {
	return c.serveCRL(ctx)
}

// recordACMERevocation marks crank-ca's record of a certificate named by an
// ACME revokeCert request, if smallstep has it as revoked now (a refused
// request changes nothing).
func (d *acmeDB) recordACMERevocation(ctx context.Context, body []byte) {
	var req struct {
		Certificate string `json:"certificate"`
		Reason      int    `json:"reason"`
	}
	if json.Unmarshal(unverifiedPayload(body), &req) != nil {
		return
	}
	der, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(req.Certificate, "="))
	if err != nil {
		return
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return
	}
	serial := cert.SerialNumber.String()
	if !d.isRevoked(serial) {
		return
	}
	if err := d.store.IndexRevocation(ctx, serial, cert.NotAfter); err != nil {
		d.log.Warn("indexing a revocation for retention", "serial", serial, "err", err)
	}
	recorded := false
	now := d.now().UTC()
	if _, err := d.store.UpdateCert(ctx, serial, func(r *store.CertRecord) error {
		recorded = r.RevokedAt.IsZero()
		if r.RevokedAt.IsZero() {
			r.RevokedAt, r.Reason = now, "acme revokeCert"
		}
		if r.RenewNow.IsZero() {
			r.RenewNow = now
		}
		return nil
	}); err != nil && !errors.Is(err, store.ErrNotFound) {
		d.log.Error("recording an ACME revocation", "serial", serial, "err", err)
	}
	if recorded {
		d.audit.Warn("certificate revoked", "serial", serial, "reasonCode", req.Reason, "via", "acme revokeCert")
	}
}
