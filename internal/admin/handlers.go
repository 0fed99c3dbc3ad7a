package admin

import (
	"net/http"
)

// mintToken serves POST /tokens. The response carries secrets, so only
// what was asked for and when it expires is audited. A controller's request
// is completed with its defaults and authorized before the Operator sees
// it, and the audit record shows the completed request.
func (a *API) mintToken(r *http.Request) (int, any, error) {
	var req TokenRequest
	if err := decodeJSON(r, &req); err != nil {
		return 0, nil, err
	}
	ctx := r.Context()
	p := principalOf(ctx)
	if p.ctl != nil {
		req = p.ctl.complete(req)
	}
	note(ctx, "provisioner", req.Provisioner, "worker", req.Worker, "ttl", req.TTL)
	if err := a.authorize(p, action{route: mintRoute, token: &req}); err != nil {
		return 0, nil, err
	}
	resp, err := a.op.MintToken(ctx, req)
	if err != nil {
		return 0, nil, err
	}
	note(ctx, "expires_at", resp.ExpiresAt)
	return http.StatusCreated, resp, nil
}

// workers serves GET /workers.
func (a *API) workers(r *http.Request) (int, any, error) {
	ws, err := a.op.Workers(r.Context())
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, nonNil(ws), nil
}

// setDisabled serves POST /workers/{provisioner}/{name}/disable and /enable.
func (a *API) setDisabled(disabled bool) endpoint {
	return func(r *http.Request) (int, any, error) {
		prov, name := r.PathValue("provisioner"), r.PathValue("name")
		ctx := r.Context()
		note(ctx, "provisioner", prov, "worker", name, "disabled", disabled)
		w, err := a.op.SetWorkerDisabled(ctx, prov, name, disabled)
		if err != nil {
			return 0, nil, err
		}
		return http.StatusOK, w, nil
	}
}

// accounts serves GET /accounts.
func (a *API) accounts(r *http.Request) (int, any, error) {
	as, err := a.op.Accounts(r.Context())
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, nonNil(as), nil
}

// certificates serves GET /certificates?worker=NAME&all=true.
func (a *API) certificates(r *http.Request) (int, any, error) {
	q, err := queryParams(r, "worker", "all")
	if err != nil {
		return 0, nil, err
	}
	all, err := parseBool(q, "all")
	if err != nil {
		return 0, nil, err
	}
	f := CertFilter{Worker: q["worker"], All: all}
	cs, err := a.op.Certificates(r.Context(), f)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, nonNil(cs), nil
}

// revoke serves POST /revoke.
func (a *API) revoke(r *http.Request) (int, any, error) {
	var req RevokeRequest
	if err := decodeJSON(r, &req); err != nil {
		return 0, nil, err
	}
	ctx := r.Context()
	note(ctx, "serial", req.Serial, "worker", req.Worker, "reason", req.Reason)
	res, err := a.op.Revoke(ctx, req)
	if err != nil {
		return 0, nil, err
	}
	res.Revoked = nonNil(res.Revoked)
	note(ctx, "revoked", res.Revoked)
	return http.StatusOK, res, nil
}

// rotate serves POST /rotate.
func (a *API) rotate(r *http.Request) (int, any, error) {
	var req RotateRequest
	if err := decodeJSON(r, &req); err != nil {
		return 0, nil, err
	}
	ctx := r.Context()
	note(ctx, "worker", req.Worker, "all", req.All)
	if req.IssuedBefore != nil {
		note(ctx, "issued_before", *req.IssuedBefore)
	}
	res, err := a.op.Rotate(ctx, req)
	if err != nil {
		return 0, nil, err
	}
	res.Rotated = nonNil(res.Rotated)
	note(ctx, "rotated", res.Rotated)
	return http.StatusOK, res, nil
}

// nonNil makes empty lists encode as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
