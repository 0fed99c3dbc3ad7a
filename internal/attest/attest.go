package attest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/crank-platform/crank-ca/internal/limit"
	"github.com/crank-platform/crank-ca/provisioner"
)

// Prefix is where the handler is mounted.
const Prefix = "/attest/"

// Bounds of a request.
const (
	maxBody = 64 << 10
	// CredentialTTL is the lifetime of the EAB credentials an attestation
	// returns: long enough for a client to register at once, short enough
	// that a leaked answer is soon useless.
	CredentialTTL = 5 * time.Minute
)

// Provisioner is one worker-attestation provisioner with attestors.
type Provisioner struct {
	Name      string
	Attestors []*provisioner.JWTAttestor
	// AttemptsPerMinute bounds attestations per client address.
	AttemptsPerMinute int
}

// Deps are what the handler needs.
type Deps struct {
	Provisioners []Provisioner
	// Mint makes the EAB credentials of an attested identity.
	Mint func(provisioner.TokenClaims) (provisioner.Token, error)
	// SpendJTI records a token id as used; it returns an error wrapping
	// ErrReplay when it was used before.
	SpendJTI func(ctx context.Context, issuer, jti string, expires time.Time) error
	// Disabled reports whether a worker of a provisioner is disabled.
	Disabled func(ctx context.Context, provisioner, worker string) (bool, error)
	// Directory returns the ACME directory URL of a provisioner for a
	// request (host as the client reached the CA).
	Directory func(r *http.Request, provisioner string) string
	Logger    *slog.Logger
	// Audit receives one line per attestation decision.
	Audit *slog.Logger
	Now   func() time.Time
}

// ErrReplay marks a token whose jti was seen before.
var ErrReplay = errors.New("token replayed")

// Handler serves POST /attest/<provisioner>.
type Handler struct {
	deps  Deps
	provs map[string]Provisioner
	rates *limit.Rates
}

// New returns the handler.
func New(d Deps) (*Handler, error) {
	if d.Mint == nil || d.SpendJTI == nil || d.Disabled == nil || d.Directory == nil {
		return nil, errors.New("attest: Mint, SpendJTI, Disabled and Directory are required")
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Audit == nil {
		d.Audit = slog.New(slog.DiscardHandler)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	h := &Handler{deps: d, provs: make(map[string]Provisioner, len(d.Provisioners)), rates: limit.NewRates(d.Now)}
	for _, p := range d.Provisioners {
		h.provs[p.Name] = p
	}
	return h, nil
}

// Credentials is the answer to a successful attestation.
type Credentials struct {
	KID       string    `json:"kid"`
	HMACKey   string    `json:"hmacKey"`
	ExpiresAt time.Time `json:"expiresAt"`
	Directory string    `json:"directory"`
	Worker    string    `json:"worker"`
	SPIFFEID  string    `json:"spiffeID"`
	DNSNames  []string  `json:"dnsNames,omitempty"`
	IPs       []string  `json:"ips,omitempty"`
}

// problem is an RFC 7807 / RFC 8555 problem document.
type problem struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
	Status int    `json:"status"`
	// Check names the attestation check that failed, for machines.
	Check string `json:"check,omitempty"`
}

const problemPrefix = "urn:ietf:params:acme:error:"

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, Prefix), "/")
	p, ok := h.provs[name]
	if !ok || strings.TrimPrefix(r.URL.Path, Prefix) != name {
		writeProblem(w, http.StatusNotFound, problem{Type: problemPrefix + "malformed", Detail: fmt.Sprintf("no provisioner with attestors named %q", truncate(name))})
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeProblem(w, http.StatusMethodNotAllowed, problem{Type: problemPrefix + "malformed", Detail: "attestation is a POST of {\"jwt\": ...}"})
		return
	}
	client := limit.ClientKey(r.RemoteAddr)
	if ok, wait := h.rates.Allow(p.Name+"|"+client, p.AttemptsPerMinute); !ok {
		secs := int((wait + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		writeProblem(w, http.StatusTooManyRequests, problem{Type: problemPrefix + "rateLimited", Detail: fmt.Sprintf("too many attestations from this address; retry after %d s", secs)})
		return
	}
	creds, att, err := h.attest(r.Context(), r, p)
	attrs := []any{"provisioner", p.Name, "remote", client}
	if att.Attestor != "" {
		attrs = append(attrs, "attestor", att.Attestor, "subject", att.Subject)
	}
	if att.PodName != "" {
		attrs = append(attrs, "pod", att.PodName, "podUID", att.PodUID)
	}
	if err != nil {
		pb := toProblem(err)
		if pb.Status >= 500 {
			h.deps.Logger.Error("attestation failed", "provisioner", p.Name, "err", err)
		}
		h.deps.Audit.Warn("attestation", append(attrs, "outcome", "refused", "check", pb.Check, "reason", pb.Detail)...)
		writeProblem(w, pb.Status, pb)
		return
	}
	h.deps.Audit.Info("attestation", append(attrs, "outcome", "accepted", "worker", creds.Worker, "spiffeID", creds.SPIFFEID)...)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(creds)
}

// requestError is a refusal of the request itself (not of the token).
type requestError struct {
	status int
	typ    string
	detail string
}

func (e *requestError) Error() string { return e.detail }

func (h *Handler) attest(ctx context.Context, r *http.Request, p Provisioner) (Credentials, provisioner.Attestation, error) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return Credentials{}, provisioner.Attestation{}, &requestError{http.StatusUnsupportedMediaType, "malformed", "Content-Type must be application/json"}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		return Credentials{}, provisioner.Attestation{}, &requestError{http.StatusRequestEntityTooLarge, "malformed", fmt.Sprintf("the request body must be at most %d bytes", maxBody)}
	}
	var req struct {
		JWT string `json:"jwt"`
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.More() || req.JWT == "" {
		return Credentials{}, provisioner.Attestation{}, &requestError{http.StatusBadRequest, "malformed", `the body must be {"jwt": "<token>"} and nothing else`}
	}
	iss, err := provisioner.PeekIssuer(req.JWT)
	if err != nil {
		return Credentials{}, provisioner.Attestation{}, err
	}
	var (
		att     provisioner.Attestation
		lastErr error = &provisioner.AttestationError{Check: "issuer", Reason: fmt.Sprintf("no attestor of provisioner %q trusts issuer %q", p.Name, truncate(iss))}
	)
	for _, a := range p.Attestors {
		if a.Issuer() != iss {
			continue
		}
		if att, lastErr = a.Attest(ctx, req.JWT); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		return Credentials{}, att, lastErr
	}
	// A refused identity does not spend the token: the worker may present
	// it again once the identity is enabled.
	id := att.Identity
	disabled, err := h.deps.Disabled(ctx, p.Name, id.Worker)
	if err != nil {
		return Credentials{}, att, err
	}
	if disabled {
		return Credentials{}, att, &provisioner.AttestationError{Check: "disabled", Reason: fmt.Sprintf("worker %q is disabled", id.Worker)}
	}
	if att.JTI != "" {
		if err := h.deps.SpendJTI(ctx, iss, att.JTI, att.ExpiresAt); err != nil {
			if errors.Is(err, ErrReplay) {
				return Credentials{}, att, &provisioner.AttestationError{Check: "jti", Reason: "the token was already used to attest; present a fresh one"}
			}
			return Credentials{}, att, err
		}
	}
	claims := provisioner.TokenClaims{
		Provisioner: p.Name, Worker: id.Worker, ExpiresAt: h.deps.Now().Add(CredentialTTL), IssuedAt: h.deps.Now(),
		DNSNames: id.DNSNames, SPIFFEID: id.SPIFFEID.String(), Attestor: att.Attestor,
		PodName: att.PodName, PodUID: att.PodUID,
	}
	for _, ip := range id.IPs {
		claims.IPs = append(claims.IPs, ip.String())
	}
	tok, err := h.deps.Mint(claims)
	if err != nil {
		return Credentials{}, att, fmt.Errorf("mint credentials: %w", err)
	}
	return Credentials{
		KID: tok.KID, HMACKey: tok.HMACKeyString(), ExpiresAt: tok.ExpiresAt,
		Directory: h.deps.Directory(r, p.Name), Worker: id.Worker, SPIFFEID: claims.SPIFFEID,
		DNSNames: claims.DNSNames, IPs: claims.IPs,
	}, att, nil
}

// toProblem turns an error into the answer: attestation refusals are 401
// unauthorized and name the failed check; request errors are as they say;
// anything else is a server fault whose cause is not shown.
func toProblem(err error) problem {
	var re *requestError
	if errors.As(err, &re) {
		return problem{Type: problemPrefix + re.typ, Detail: re.detail, Status: re.status}
	}
	var ae *provisioner.AttestationError
	if errors.As(err, &ae) {
		return problem{Type: problemPrefix + "unauthorized", Detail: "attestation refused: " + ae.Error(), Status: http.StatusUnauthorized, Check: ae.Check}
	}
	return problem{Type: problemPrefix + "serverInternal", Detail: "the attestation could not be completed; retry later", Status: http.StatusServiceUnavailable}
}

func writeProblem(w http.ResponseWriter, status int, p problem) {
	p.Status = status
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(p)
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
