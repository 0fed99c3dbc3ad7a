package stepca

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"time"

	authconfig "github.com/smallstep/certificates/authority/config"
	steppro "github.com/smallstep/certificates/authority/provisioner"
	stepdb "github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql/database"
)

// CRL generation is crank-ca's, not smallstep's. smallstep's generator
// cannot be coordinated across replicas: with the CRL enabled, every
// authority generates one at start-up, on its own ticker and on every
// revocation, each numbering its CRL one above the stored one and
// overwriting it unconditionally, so two replicas could publish different
// CRLs under one number. crank-ca therefore hands smallstep a CRL
// configuration that is switched off (crlConfig) and generates the CRL here:
//
//   - RefreshCRL is the cluster duty: the server calls it every
//     CRLCheckInterval at the replica holding the CRL lease only (one at a
//     time across replicas). It generates a CRL when none is stored, when a
//     revoked certificate is missing from the stored one (a revocation at
//     any replica), or when 2/3 of its validity has passed.
//   - Every CRL is numbered one above the stored CRL it was built from and
//     stored by compare-and-swap against exactly that stored value, so even
//     two generators at once (a holder whose lease was lost mid-run) cannot
//     store two CRLs under one number: CRL numbers strictly increase.
//   - CRL serves the stored CRL, read from the database on every request
//     (never a per-replica copy). When it finds a revocation missing, it
//     waits (at most crlServeWait) for the holder to store one that has it.
//
// So a revocation made at any replica is in the CRL every replica serves
// within CRLCheckInterval plus one generation, while some replica holds the
// lease; a request arriving in between waits for it.

// CRLCheckInterval is how often the lease holder checks whether the CRL
// needs regenerating. It bounds how long a revocation can be missing from
// the served CRL (plus one generation, a few milliseconds).
const CRLCheckInterval = time.Second

// crlServeWait bounds how long CRL waits for a CRL that lists a revocation
// it found missing, before serving the stored one anyway.
const crlServeWait = 3 * CRLCheckInterval

// crlPoll is how often a waiting CRL request rereads the stored CRL.
const crlPoll = 100 * time.Millisecond

// smallstep's CRL table and key (unexported in its db package); crank-ca
// keeps its format so that the stored CRL reads the same either way.
var (
	crlTable     = []byte("x509_crl")
	crlKey       = []byte("crl")
	revokedTable = []byte("revoked_x509_certs")
)

// oidIssuingDistributionPoint is RFC 5280 section 5.2.5.
var oidIssuingDistributionPoint = asn1.ObjectIdentifier{2, 5, 29, 28}

// Errors of CRL generation.
var (
	// ErrCRLRaced: another generator stored a CRL between our read and our
	// write; ours was discarded.
	ErrCRLRaced = errors.New("crl: another CRL was stored meanwhile")
	// ErrNoCRL: no CRL has been generated yet.
	ErrNoCRL = errors.New("crl: none generated yet")
)

// Reasons RefreshCRL generates a CRL.
const (
	CRLReasonNone       = "none stored"
	CRLReasonRevocation = "revocation"
	CRLReasonDue        = "due"
	CRLReasonExpired    = "expired"
)

// CRLRefresh reports what RefreshCRL did.
type CRLRefresh struct {
	// Reason is why a CRL was generated (one of the CRLReason constants),
	// empty when the stored one was still good.
	Reason string
	// Number, ThisUpdate, NextUpdate and Revoked describe the CRL
	// generated (zero when none was).
	Number                 int64
	ThisUpdate, NextUpdate time.Time
	Revoked                int
}

// crlConfig is the CRL configuration handed to smallstep: generation off
// (no start-up CRL, no ticker, no regeneration inside Revoke), with
// crank-ca's own settings kept in it for crlSettings to read back.
func crlConfig(cfg Config) *authconfig.CRLConfig {
	crl := &authconfig.CRLConfig{Enabled: false, IDPurl: cfg.CRLURL}
	if cfg.CRLInterval > 0 {
		crl.CacheDuration = &steppro.Duration{Duration: cfg.CRLInterval}
	}
	return crl
}

// crlSettings reads back what crlConfig kept: the validity of each CRL
// (smallstep's default of 24h when unset) and its issuing distribution
// point.
func (c *CA) crlSettings() (time.Duration, string) {
	validity := authconfig.DefaultCRLCacheDuration.Duration
	var idp string
	if crl := c.auth.GetConfig().CRL; crl != nil {
		if crl.CacheDuration != nil && crl.CacheDuration.Duration > 0 {
			validity = crl.CacheDuration.Duration
		}
		idp = crl.IDPurl
	}
	return validity, idp
}

// storedCRL is the CRL in the database and what it lists.
type storedCRL struct {
	raw  []byte // as stored: the compare-and-swap's old value; nil if none
	info *stepdb.CertificateRevocationListInfo
	crl  *x509.RevocationList
}

func (c *CA) readStoredCRL() (*storedCRL, error) {
	raw, err := c.nosql.Get(crlTable, crlKey)
	if database.IsErrNotFound(err) || err == nil && len(raw) == 0 {
		return &storedCRL{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("crl: read: %w", err)
	}
	var info stepdb.CertificateRevocationListInfo
	if err := json.Unmarshal(raw, &info); err != nil {
		return nil, fmt.Errorf("crl: decode stored CRL: %w", err)
	}
	crl, err := x509.ParseRevocationList(info.DER)
	if err != nil {
		return nil, fmt.Errorf("crl: parse stored CRL %d: %w", info.Number, err)
	}
	return &storedCRL{raw: raw, info: &info, crl: crl}, nil
}

// listable are the revoked certificates a CRL generated at now lists:
// smallstep's rule, every revocation except of certificates expired for
// longer than DefaultCRLExpiredDuration.
func (c *CA) listable(now time.Time) ([]x509.RevocationListEntry, error) {
	es, err := c.nosql.List(revokedTable)
	if database.IsErrNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("crl: list revocations: %w", err)
	}
	cutoff := now.Add(-authconfig.DefaultCRLExpiredDuration)
	out := make([]x509.RevocationListEntry, 0, len(es))
	for _, e := range es {
		var r stepdb.RevokedCertificateInfo
		if err := json.Unmarshal(e.Value, &r); err != nil {
			return nil, fmt.Errorf("crl: decode revocation %s: %w", e.Key, err)
		}
		sn, ok := new(big.Int).SetString(r.Serial, 10)
		if !ok || !r.ExpiresAt.IsZero() && r.ExpiresAt.Before(cutoff) {
			continue
		}
		out = append(out, x509.RevocationListEntry{SerialNumber: sn, RevocationTime: r.RevokedAt, ReasonCode: r.ReasonCode})
	}
	return out, nil
}

// missing counts the entries the stored CRL does not list.
func (s *storedCRL) missing(entries []x509.RevocationListEntry) int {
	if s.crl == nil {
		return len(entries)
	}
	listed := make(map[string]bool, len(s.crl.RevokedCertificateEntries))
	for _, e := range s.crl.RevokedCertificateEntries {
		if e.SerialNumber != nil {
			listed[e.SerialNumber.String()] = true
		}
	}
	n := 0
	for _, e := range entries {
		if !listed[e.SerialNumber.String()] {
			n++
		}
	}
	return n
}

// RefreshCRL generates a CRL if one is needed: none is stored, a
// revocation is missing from the stored one, or 2/3 of its validity has
// passed. It is the CRL cluster duty, to be run every CRLCheckInterval at
// the one replica holding the CRL lease; a concurrent generator elsewhere
// makes it return ErrCRLRaced, storing nothing.
func (c *CA) RefreshCRL(ctx context.Context) (CRLRefresh, error) {
	if err := ctx.Err(); err != nil {
		return CRLRefresh{}, err
	}
	now := c.now()
	validity, idp := c.crlSettings()
	stored, err := c.readStoredCRL()
	if err != nil {
		return CRLRefresh{}, err
	}
	entries, err := c.listable(now)
	if err != nil {
		return CRLRefresh{}, err
	}
	var reason string
	switch {
	case stored.info == nil:
		reason = CRLReasonNone
	case stored.missing(entries) > 0:
		reason = CRLReasonRevocation
	case !now.Before(stored.info.ExpiresAt):
		reason = CRLReasonExpired
	case !now.Before(stored.info.ExpiresAt.Add(-validity / 3)):
		reason = CRLReasonDue
	default:
		return CRLRefresh{}, nil
	}
	r, err := c.generateCRL(stored, entries, now, validity, idp)
	if err != nil {
		return CRLRefresh{}, err
	}
	r.Reason = reason
	return r, nil
}

// generateCRL signs a CRL numbered one above prev (0 for the first) and
// stores it if prev is still the stored CRL.
func (c *CA) generateCRL(prev *storedCRL, entries []x509.RevocationListEntry, now time.Time, validity time.Duration, idp string) (CRLRefresh, error) {
	issuer := c.auth.GetIntermediateCertificate()
	if issuer == nil {
		return CRLRefresh{}, errors.New("crl: the authority has no intermediate")
	}
	signer, err := c.auth.GetX509Signer()
	if err != nil {
		return CRLRefresh{}, fmt.Errorf("crl: signer: %w", err)
	}
	var number int64
	if prev.info != nil {
		number = prev.info.Number + 1
	}
	thisUpdate := now.Truncate(time.Second).UTC()
	tmpl := &x509.RevocationList{
		Number:                    big.NewInt(number),
		ThisUpdate:                thisUpdate,
		NextUpdate:                thisUpdate.Add(validity),
		RevokedCertificateEntries: entries,
	}
	if idp != "" {
		b, err := marshalIssuingDistributionPoint(idp)
		if err != nil {
			return CRLRefresh{}, fmt.Errorf("crl: issuing distribution point: %w", err)
		}
		tmpl.ExtraExtensions = []pkix.Extension{{Id: oidIssuingDistributionPoint, Critical: true, Value: b}}
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, issuer, signer)
	if err != nil {
		return CRLRefresh{}, fmt.Errorf("crl: sign: %w", err)
	}
	val, err := json.Marshal(stepdb.CertificateRevocationListInfo{Number: number, ExpiresAt: tmpl.NextUpdate, Duration: validity, DER: der})
	if err != nil {
		return CRLRefresh{}, fmt.Errorf("crl: encode: %w", err)
	}
	_, swapped, err := c.nosql.CmpAndSwap(crlTable, crlKey, prev.raw, val)
	if err != nil {
		return CRLRefresh{}, fmt.Errorf("crl: store: %w", err)
	}
	if !swapped {
		return CRLRefresh{}, fmt.Errorf("%w (CRL %d not stored)", ErrCRLRaced, number)
	}
	return CRLRefresh{Number: number, ThisUpdate: tmpl.ThisUpdate, NextUpdate: tmpl.NextUpdate, Revoked: len(entries)}, nil
}

// serveCRL returns the stored CRL. When a revocation is missing from it, it
// waits, at most crlServeWait, for the lease holder to store one that lists
// it, then serves the stored CRL in any case; with none stored yet it waits
// as long for the first.
func (c *CA) serveCRL(ctx context.Context) ([]byte, error) {
	stored, err := c.readStoredCRL()
	if err != nil {
		return nil, err
	}
	if stored.info != nil {
		entries, err := c.listable(c.now())
		if err != nil {
			return nil, err
		}
		if stored.missing(entries) == 0 {
			return stored.info.DER, nil
		}
	}
	t := time.NewTicker(crlPoll)
	defer t.Stop()
	deadline := time.After(crlServeWait)
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline:
			if stored.info == nil {
				return nil, ErrNoCRL
			}
			c.log.Warn("serving a CRL that misses a revocation: no replica stored a newer one in time", "crlNumber", stored.info.Number, "waited", crlServeWait)
			return stored.info.DER, nil
		case <-t.C:
		}
		raw, err := c.nosql.Get(crlTable, crlKey)
		if err != nil && !database.IsErrNotFound(err) {
			return nil, fmt.Errorf("crl: read: %w", err)
		}
		if err != nil || bytes.Equal(raw, stored.raw) {
			continue // not (re)generated yet
		}
		if stored, err = c.readStoredCRL(); err != nil {
			return nil, err
		}
		entries, err := c.listable(c.now())
		if err != nil {
			return nil, err
		}
		if stored.info != nil && stored.missing(entries) == 0 {
			return stored.info.DER, nil
		}
	}
}

// RFC 5280 section 5.2.5, the distribution point only (smallstep's
// marshalDistributionPoint, unexported there).
type issuingDistributionPoint struct {
	DistributionPoint distributionPointName `asn1:"optional,tag:0"`
}

type distributionPointName struct {
	FullName []asn1.RawValue `asn1:"optional,tag:0"`
}

func marshalIssuingDistributionPoint(uri string) ([]byte, error) {
	return asn1.Marshal(issuingDistributionPoint{
		DistributionPoint: distributionPointName{
			FullName: []asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(uri)}},
		},
	})
}
