package admin

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Version prefix of every admin route.
const Prefix = "/admin/v1"

// Operator is what the admin API needs from the CA. internal/server
// implements it; tests may fake it.
type Operator interface {
	MintToken(ctx context.Context, req TokenRequest) (TokenResponse, error)
	Workers(ctx context.Context) ([]Worker, error)
	Accounts(ctx context.Context) ([]Account, error)
	Certificates(ctx context.Context, f CertFilter) ([]Certificate, error)
	Revoke(ctx context.Context, req RevokeRequest) (RevokeResult, error)
	Rotate(ctx context.Context, req RotateRequest) (RotateResult, error)
	SetWorkerDisabled(ctx context.Context, provisioner, worker string, disabled bool) (Worker, error)
}

// Domain errors an Operator returns; the API turns them into problem
// documents (400, 404, 409).
var (
	ErrInvalid  = errors.New("invalid request")
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

// Errorf returns an error of kind (ErrInvalid, ErrNotFound or ErrConflict)
// whose message, which API clients see as the problem detail, is the
// formatted text alone: the kind is already the problem's type and title.
func Errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

// TokenRequest mints a join token (Worker set) or EAB credentials for an
// ACME provisioner that requires them (Worker empty).
type TokenRequest struct {
	Provisioner string `json:"provisioner,omitempty"` // default: the first worker-attestation provisioner
	Worker      string `json:"worker,omitempty"`
	TTL         string `json:"ttl,omitempty"` // Go duration; default from the provisioner
}

// TokenResponse carries the secret credentials, as `token create --json`.
type TokenResponse struct {
	KID       string    `json:"kid"`
	HMACKey   string    `json:"hmacKey"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// Worker is one worker identity as the CA knows it.
type Worker struct {
	Provisioner      string    `json:"provisioner"`
	Name             string    `json:"name"`
	Disabled         bool      `json:"disabled"`
	DisabledAt       time.Time `json:"disabledAt,omitzero"`
	Accounts         int       `json:"accounts"`
	LiveCertificates int       `json:"liveCertificates"`
}

// Account is an ACME account bound to an identity.
type Account struct {
	ID          string    `json:"id"`
	Provisioner string    `json:"provisioner"`
	Worker      string    `json:"worker,omitempty"`
	BoundAt     time.Time `json:"boundAt"`
	Usable      bool      `json:"usable"` // false once its worker was disabled
}

// Certificate is an issued certificate with the CA's decisions about it.
type Certificate struct {
	Serial      string    `json:"serial"`
	Provisioner string    `json:"provisioner"`
	Worker      string    `json:"worker,omitempty"`
	SPIFFEID    string    `json:"spiffeID,omitempty"`
	DNSNames    []string  `json:"dnsNames,omitempty"`
	IPs         []string  `json:"ips,omitempty"`
	NotBefore   time.Time `json:"notBefore"`
	NotAfter    time.Time `json:"notAfter"`
	Revoked     bool      `json:"revoked"`
	RevokedAt   time.Time `json:"revokedAt,omitzero"`
	ReplacedBy  string    `json:"replacedBy,omitempty"`
	RenewNow    time.Time `json:"renewNow,omitzero"`
}

// CertFilter selects certificates; zero value: all live ones.
type CertFilter struct {
	Worker string `json:"worker,omitempty"`
	// All includes expired and revoked certificates.
	All bool `json:"all,omitempty"`
}

// RevokeRequest revokes one certificate (Serial) or every live certificate
// of a worker (Worker). Reason is an RFC 5280 reason name (unspecified,
// keyCompromise, cACompromise, affiliationChanged, superseded,
// cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise);
// default unspecified.
type RevokeRequest struct {
	Serial string `json:"serial,omitempty"`
	Worker string `json:"worker,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// RevokeResult lists the serials revoked.
type RevokeResult struct {
	Revoked []string `json:"revoked"`
}

// RotateRequest forces renewal: the ARI windows of matching live
// certificates move to now. Exactly one of Worker or All.
type RotateRequest struct {
	Worker       string     `json:"worker,omitempty"`
	All          bool       `json:"all,omitempty"`
	IssuedBefore *time.Time `json:"issuedBefore,omitempty"`
}

// RotateResult lists the serials whose window moved.
type RotateResult struct {
	Rotated []string `json:"rotated"`
}
