package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/stepca"
	"github.com/crank-platform/crank-ca/internal/store"
)

// operator implements admin.Operator on the running server's state.
type operator struct{ s *Server }

var _ admin.Operator = operator{}

// reasonCodes are the RFC 5280 CRLReason names operators may give.
var reasonCodes = map[string]int{
	"unspecified": 0, "keyCompromise": 1, "cACompromise": 2, "affiliationChanged": 3,
	"superseded": 4, "cessationOfOperation": 5, "certificateHold": 6,
	"privilegeWithdrawn": 9, "aACompromise": 10,
}

func (o operator) MintToken(ctx context.Context, req admin.TokenRequest) (admin.TokenResponse, error) {
	var ttl time.Duration
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			return admin.TokenResponse{}, admin.Errorf(admin.ErrInvalid, "ttl: %v", err)
		}
		ttl = d
	}
	if req.Worker != "" {
		p, err := tokenProvisioner(o.s.cfg, req.Provisioner)
		if err != nil {
			return admin.TokenResponse{}, admin.Errorf(admin.ErrInvalid, "%v", err)
		}
		ws, err := o.s.stepca.Store().Worker(ctx, p.Name, req.Worker)
		if err != nil {
			return admin.TokenResponse{}, err
		}
		if ws.Disabled {
			return admin.TokenResponse{}, admin.Errorf(admin.ErrConflict, "worker %q is disabled; enable it before minting a token", req.Worker)
		}
	}
	tok, err := mintToken(o.s.cfg, o.s.tokenKey, TokenRequest{Provisioner: req.Provisioner, Worker: req.Worker, TTL: ttl, Now: o.s.now()})
	if err != nil {
		return admin.TokenResponse{}, admin.Errorf(admin.ErrInvalid, "%v", err)
	}
	return admin.TokenResponse{KID: tok.KID, HMACKey: tok.HMACKeyString(), Token: tok.Encode(), ExpiresAt: tok.ExpiresAt}, nil
}

func (o operator) Workers(ctx context.Context) ([]admin.Worker, error) {
	st := o.s.stepca.Store()
	now := o.s.now()
	byKey := map[string]*admin.Worker{}
	get := func(prov, name string) *admin.Worker {
		k := prov + "/" + name
		if w := byKey[k]; w != nil {
			return w
		}
		w := &admin.Worker{Provisioner: prov, Name: name}
		byKey[k] = w
		return w
	}
	for i := range o.s.cfg.Provisioners {
		p := &o.s.cfg.Provisioners[i]
		for _, id := range p.Identities {
			get(p.Name, id.Name)
		}
	}
	bindings, err := st.Bindings(ctx)
	if err != nil {
		return nil, err
	}
	for _, b := range bindings {
		if b.Worker != "" {
			get(b.Provisioner, b.Worker).Accounts++
		}
	}
	certs, err := st.Certs(ctx, func(r store.CertRecord) bool { return r.Worker != "" && r.Live(now) })
	if err != nil {
		return nil, err
	}
	for _, c := range certs {
		if !o.s.stepca.IsRevoked(c.Serial) {
			get(c.Provisioner, c.Worker).LiveCertificates++
		}
	}
	states, err := st.Workers(ctx)
	if err != nil {
		return nil, err
	}
	for _, ws := range states {
		w := get(ws.Provisioner, ws.Worker)
		w.Disabled, w.DisabledAt = ws.Disabled, ws.DisabledAt
	}
	out := make([]admin.Worker, 0, len(byKey))
	for _, w := range byKey {
		out = append(out, *w)
	}
	slices.SortFunc(out, func(a, b admin.Worker) int {
		return cmp.Or(cmp.Compare(a.Provisioner, b.Provisioner), cmp.Compare(a.Name, b.Name))
	})
	return out, nil
}

func (o operator) Accounts(ctx context.Context) ([]admin.Account, error) {
	st := o.s.stepca.Store()
	bindings, err := st.Bindings(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]admin.Account, 0, len(bindings))
	for _, b := range bindings {
		usable := true
		if b.Worker != "" {
			ws, err := st.Worker(ctx, b.Provisioner, b.Worker)
			if err != nil {
				return nil, err
			}
			usable = !ws.Disabled && (ws.DisabledAt.IsZero() || b.BoundAt.After(ws.DisabledAt))
		}
		out = append(out, admin.Account{ID: b.AccountID, Provisioner: b.Provisioner, Worker: b.Worker, BoundAt: b.BoundAt, Usable: usable})
	}
	slices.SortFunc(out, func(a, b admin.Account) int { return cmp.Or(a.BoundAt.Compare(b.BoundAt), cmp.Compare(a.ID, b.ID)) })
	return out, nil
}

func (o operator) Certificates(ctx context.Context, f admin.CertFilter) ([]admin.Certificate, error) {
	now := o.s.now()
	recs, err := o.s.stepca.Store().Certs(ctx, func(r store.CertRecord) bool {
		return (f.Worker == "" || r.Worker == f.Worker) && (f.All || r.Live(now))
	})
	if err != nil {
		return nil, err
	}
	out := make([]admin.Certificate, 0, len(recs))
	for _, r := range recs {
		revoked := !r.RevokedAt.IsZero() || o.s.stepca.IsRevoked(r.Serial)
		if revoked && !f.All {
			continue
		}
		out = append(out, admin.Certificate{
			Serial: r.Serial, Provisioner: r.Provisioner, Worker: r.Worker, SPIFFEID: r.SPIFFEID,
			DNSNames: r.DNSNames, IPs: r.IPs, NotBefore: r.NotBefore, NotAfter: r.NotAfter,
			Revoked: revoked, RevokedAt: r.RevokedAt, ReplacedBy: r.ReplacedBy, RenewNow: r.RenewNow,
		})
	}
	// Oldest first; certificates of the same second (notBefore has no
	// finer resolution) in a stable order, so the listing does not shuffle
	// between calls.
	slices.SortFunc(out, func(a, b admin.Certificate) int {
		return cmp.Or(a.NotBefore.Compare(b.NotBefore), strings.Compare(a.Provisioner, b.Provisioner),
			strings.Compare(a.Worker, b.Worker), strings.Compare(a.Serial, b.Serial))
	})
	return out, nil
}

func (o operator) Revoke(ctx context.Context, req admin.RevokeRequest) (admin.RevokeResult, error) {
	if (req.Serial == "") == (req.Worker == "") {
		return admin.RevokeResult{}, admin.Errorf(admin.ErrInvalid, "give exactly one of serial or worker")
	}
	reason := cmp.Or(req.Reason, "unspecified")
	code, ok := reasonCodes[reason]
	if !ok {
		return admin.RevokeResult{}, admin.Errorf(admin.ErrInvalid, "reason %q is not an RFC 5280 reason name", req.Reason)
	}
	var serials []string
	if req.Serial != "" {
		serial, err := admin.ParseSerial(req.Serial)
		if err != nil {
			return admin.RevokeResult{}, admin.Errorf(admin.ErrInvalid, "%v", err)
		}
		serials = []string{serial}
	}
	if req.Worker != "" {
		live, err := o.Certificates(ctx, admin.CertFilter{Worker: req.Worker})
		if err != nil {
			return admin.RevokeResult{}, err
		}
		serials = serials[:0]
		for _, c := range live {
			serials = append(serials, c.Serial)
		}
	}
	res := admin.RevokeResult{Revoked: []string{}}
	for _, s := range serials {
		err := o.s.stepca.Revoke(ctx, s, code, reason)
		switch {
		case errors.Is(err, stepca.ErrUnknownCertificate):
			return res, admin.Errorf(admin.ErrNotFound, "%v", err)
		case errors.Is(err, stepca.ErrAlreadyRevoked) && req.Serial != "":
			return res, admin.Errorf(admin.ErrConflict, "%v", err)
		case errors.Is(err, stepca.ErrAlreadyRevoked):
			continue
		case err != nil:
			return res, err
		}
		res.Revoked = append(res.Revoked, s)
	}
	return res, nil
}

func (o operator) Rotate(ctx context.Context, req admin.RotateRequest) (admin.RotateResult, error) {
	if (req.Worker == "") == !req.All {
		return admin.RotateResult{}, admin.Errorf(admin.ErrInvalid, "give exactly one of worker or all")
	}
	now := o.s.now().UTC()
	st := o.s.stepca.Store()
	recs, err := st.Certs(ctx, func(r store.CertRecord) bool {
		return r.Live(now) && (req.All || r.Worker == req.Worker) && (req.IssuedBefore == nil || r.NotBefore.Before(*req.IssuedBefore))
	})
	if err != nil {
		return admin.RotateResult{}, err
	}
	res := admin.RotateResult{Rotated: []string{}}
	for _, r := range recs {
		if _, err := st.UpdateCert(ctx, r.Serial, func(c *store.CertRecord) error {
			if c.RenewNow.IsZero() || c.RenewNow.After(now) {
				c.RenewNow = now
			}
			return nil
		}); err != nil {
			return res, err
		}
		res.Rotated = append(res.Rotated, r.Serial)
	}
	return res, nil
}

func (o operator) SetWorkerDisabled(ctx context.Context, prov, worker string, disabled bool) (admin.Worker, error) {
	p, ok := o.s.cfg.Provisioner(prov)
	if !ok || p.Type != config.TypeWorkerAttestation {
		return admin.Worker{}, admin.Errorf(admin.ErrNotFound, "no worker-attestation provisioner %q", prov)
	}
	ids, err := Identities(o.s.cfg, p)
	if err != nil {
		return admin.Worker{}, err
	}
	if _, err := ids.Lookup(worker); err != nil && !attestedName(p, worker) {
		return admin.Worker{}, admin.Errorf(admin.ErrNotFound, "%v", err)
	}
	if _, err := o.s.stepca.Store().SetWorkerDisabled(ctx, prov, worker, disabled); err != nil {
		return admin.Worker{}, err
	}
	if disabled {
		// Its certificates stop working now, not when they expire.
		if _, err := o.Revoke(ctx, admin.RevokeRequest{Worker: worker, Reason: "privilegeWithdrawn"}); err != nil {
			return admin.Worker{}, err
		}
	}
	all, err := o.Workers(ctx)
	if err != nil {
		return admin.Worker{}, err
	}
	for _, w := range all {
		if w.Provisioner == prov && w.Name == worker {
			return w, nil
		}
	}
	return admin.Worker{}, fmt.Errorf("worker %s/%s vanished from the listing", prov, worker)
}

// attestedName reports whether worker is the name of an identity a
// Kubernetes attestor of p can attest ("ns/<namespace>/sa/<name>"), so that
// an operator can disable it, also before it first attests.
func attestedName(p *config.Provisioner, worker string) bool {
	parts := strings.Split(worker, "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" || parts[1] == "" || parts[3] == "" {
		return false
	}
	for _, a := range p.Attestors {
		if a.Type != config.AttestorKubernetes {
			continue
		}
		for _, r := range a.Allow {
			if r.Namespace == parts[1] && (r.ServiceAccount == "*" || r.ServiceAccount == parts[3]) {
				return true
			}
		}
	}
	return false
}
