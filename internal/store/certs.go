package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/smallstep/nosql/database"
)

var certsTable = []byte("crank_certificates")

// ErrAlreadyReplaced is returned by an UpdateCert callback when a
// certificate was already replaced by another order (RFC 9773 section 5).
var ErrAlreadyReplaced = errors.New("certificate already replaced")

// CertRecord is crank-ca's view of an issued certificate: who it belongs to
// and what the CA decided about its renewal. smallstep keeps the certificate
// itself; this record is what ARI, revocation, forced rotation and the admin
// listing read.
type CertRecord struct {
	Serial      string    `json:"serial"` // decimal
	Provisioner string    `json:"provisioner"`
	Worker      string    `json:"worker,omitempty"`
	AccountID   string    `json:"accountID"`
	OrderID     string    `json:"orderID"`
	SPIFFEID    string    `json:"spiffeID,omitempty"`
	DNSNames    []string  `json:"dnsNames,omitempty"`
	IPs         []string  `json:"ips,omitempty"`
	NotBefore   time.Time `json:"notBefore"`
	NotAfter    time.Time `json:"notAfter"`
	// IssuedAt is when the CA signed it. NotBefore is backdated for clock
	// skew (a minute), which for minute-long certificates is a large part
	// of the lifetime; renewal windows are placed from IssuedAt.
	IssuedAt time.Time `json:"issuedAt,omitzero"`
	// AKI is the authority key identifier (hex), checked against ARI
	// certIDs.
	AKI string `json:"aki"`
	// RenewNow, when set, moves the ARI window to that instant (forced
	// rotation, revocation, disabled worker).
	RenewNow time.Time `json:"renewNow,omitzero"`
	// ReplacedBy is the order that replaced this certificate.
	ReplacedBy string    `json:"replacedBy,omitempty"`
	RevokedAt  time.Time `json:"revokedAt,omitzero"`
	Reason     string    `json:"reason,omitempty"`
}

// Start is where the certificate's useful life begins: IssuedAt when known
// and after NotBefore, else NotBefore.
func (r CertRecord) Start() time.Time {
	if r.IssuedAt.After(r.NotBefore) && r.IssuedAt.Before(r.NotAfter) {
		return r.IssuedAt
	}
	return r.NotBefore
}

// Live reports whether the certificate is unexpired and not revoked.
func (r CertRecord) Live(now time.Time) bool {
	return now.Before(r.NotAfter) && r.RevokedAt.IsZero()
}

// PutCert stores a new record.
func (s *Store) PutCert(_ context.Context, r CertRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := s.db.Set(certsTable, []byte(r.Serial), b); err != nil {
		return fmt.Errorf("store: write certificate %s: %w", r.Serial, err)
	}
	return nil
}

// Cert returns the record of a serial, or ErrNotFound.
func (s *Store) Cert(_ context.Context, serial string) (CertRecord, error) {
	r, _, err := s.readCert(serial)
	return r, err
}

// readCert returns a record and its stored bytes (for compare-and-swap).
func (s *Store) readCert(serial string) (CertRecord, []byte, error) {
	b, err := s.db.Get(certsTable, []byte(serial))
	switch {
	case database.IsErrNotFound(err):
		return CertRecord{}, nil, ErrNotFound
	case err != nil:
		return CertRecord{}, nil, fmt.Errorf("store: read certificate %s: %w", serial, err)
	}
	var r CertRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return CertRecord{}, nil, fmt.Errorf("store: decode certificate %s: %w", serial, err)
	}
	return r, b, nil
}

// Certs returns the records keep accepts (all when keep is nil).
func (s *Store) Certs(_ context.Context, keep func(CertRecord) bool) ([]CertRecord, error) {
	es, err := s.db.List(certsTable)
	if database.IsErrNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: list certificates: %w", err)
	}
	var out []CertRecord
	for _, e := range es {
		var r CertRecord
		if json.Unmarshal(e.Value, &r) != nil {
			continue
		}
		if keep == nil || keep(r) {
			out = append(out, r)
		}
	}
	return out, nil
}

// UpdateCert applies fn to a record with compare-and-swap, retrying on
// concurrent changes, so that two replicas marking the same certificate do
// not lose either change. fn may return an error to abort.
func (s *Store) UpdateCert(_ context.Context, serial string, fn func(*CertRecord) error) (CertRecord, error) {
	for range 10 {
		r, old, err := s.readCert(serial)
		if err != nil {
			return CertRecord{}, err
		}
		if err := fn(&r); err != nil {
			return r, err
		}
		nu, err := json.Marshal(r)
		if err != nil {
			return CertRecord{}, err
		}
		_, swapped, err := s.db.CmpAndSwap(certsTable, []byte(serial), old, nu)
		if err != nil {
			return CertRecord{}, fmt.Errorf("store: update certificate %s: %w", serial, err)
		}
		if swapped {
			return r, nil
		}
	}
	return CertRecord{}, fmt.Errorf("store: certificate %s kept changing", serial)
}

// ErrOtherAccount is returned when a certificate belongs to another account.
var ErrOtherAccount = errors.New("certificate was issued to another account")

// PutCertIn writes a new record inside a transaction.
func PutCertIn(kv KV, r CertRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := kv.Set(certsTable, []byte(r.Serial), b); err != nil {
		return fmt.Errorf("store: write certificate %s: %w", r.Serial, err)
	}
	return nil
}

// ClaimReplacementIn marks, inside a transaction, the certificate serial as
// replaced by an account's new order (RFC 9773): ErrNotFound,
// ErrOtherAccount or ErrAlreadyReplaced refuse it. Holding the record for
// update makes two orders replacing one certificate exclusive, at every
// replica.
func ClaimReplacementIn(kv KV, serial, accountID, orderID string) error {
	b, err := kv.GetForUpdate(certsTable, []byte(serial))
	switch {
	case IsNotFound(err):
		return ErrNotFound
	case err != nil:
		return fmt.Errorf("store: read certificate %s: %w", serial, err)
	}
	var r CertRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("store: decode certificate %s: %w", serial, err)
	}
	switch {
	case r.AccountID != accountID:
		return ErrOtherAccount
	case r.ReplacedBy != "":
		return ErrAlreadyReplaced
	}
	r.ReplacedBy = orderID
	return PutCertIn(kv, r)
}
