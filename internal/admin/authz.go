package admin

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Controller is a restricted client of the API: it may only mint join
// tokens, for one worker-attestation provisioner and for worker names that
// match a pattern, with a bounded TTL. It exists so that a launcher (the
// Crank controller) can hand each worker it starts a token with no operator
// in the loop, while its credential cannot mint for anything else.
type Controller struct {
	// ID is the SPIFFE ID its client certificate must carry; it must not
	// also be an admin.
	ID spiffeid.ID
	// Provisioner is the worker-attestation provisioner it mints for. A
	// request that names no provisioner means this one.
	Provisioner string
	// WorkerPattern is a Go regexp over worker names. New anchors it
	// (^(?:pattern)$), so a pattern can never match part of a name.
	WorkerPattern string
	// MaxTTL bounds the token lifetime; required.
	MaxTTL time.Duration
	// DefaultTTL is the lifetime of a token requested without a TTL, at
	// most MaxTTL. Zero means MaxTTL. The API always passes the Operator an
	// explicit TTL for a controller, because the Operator's own default
	// could exceed MaxTTL.
	DefaultTTL time.Duration
}

// controller is a validated Controller.
type controller struct {
	Controller
	pattern *regexp.Regexp // anchored
}

// mintRoute is the one route a controller may use, as the ServeMux pattern
// that routes it.
const mintRoute = http.MethodPost + " " + Prefix + "/tokens"

// newControllers validates cfgs, keyed by SPIFFE ID string.
func newControllers(cfgs []Controller, admins map[string]struct{}) (map[string]*controller, error) {
	var errs []error
	out := make(map[string]*controller, len(cfgs))
	for i, c := range cfgs {
		at := fmt.Sprintf("admin: Config.Controllers[%d]", i)
		var bad []error
		if c.ID.IsZero() {
			bad = append(bad, fmt.Errorf("%s: ID is empty", at))
		} else if _, ok := admins[c.ID.String()]; ok {
			bad = append(bad, fmt.Errorf("%s: %s is also an admin; a credential has one role", at, c.ID))
		} else if _, dup := out[c.ID.String()]; dup {
			bad = append(bad, fmt.Errorf("%s: duplicate controller %s", at, c.ID))
		}
		if c.Provisioner == "" {
			bad = append(bad, fmt.Errorf("%s: Provisioner is required", at))
		}
		var re *regexp.Regexp
		if c.WorkerPattern == "" {
			bad = append(bad, fmt.Errorf("%s: WorkerPattern is required", at))
		} else if r, err := regexp.Compile("^(?:" + c.WorkerPattern + ")$"); err != nil {
			bad = append(bad, fmt.Errorf("%s: WorkerPattern: %w", at, err))
		} else {
			re = r
		}
		if c.MaxTTL <= 0 {
			bad = append(bad, fmt.Errorf("%s: MaxTTL must be positive", at))
		}
		if c.DefaultTTL < 0 || c.DefaultTTL > c.MaxTTL {
			bad = append(bad, fmt.Errorf("%s: DefaultTTL must be within [0, MaxTTL]", at))
		}
		if len(bad) > 0 {
			errs = append(errs, bad...)
			continue
		}
		if c.DefaultTTL == 0 {
			c.DefaultTTL = c.MaxTTL
		}
		out[c.ID.String()] = &controller{Controller: c, pattern: re}
	}
	return out, errors.Join(errs...)
}

// scope says what the controller may do; every refusal ends with it, so the
// client (and whoever reads the audit log) learns the boundary it hit.
func (c *controller) scope() string {
	return fmt.Sprintf("%s is a controller: it may only mint join tokens (POST %s/tokens) for provisioner %q and workers matching %s, with a ttl of at most %s",
		c.ID, Prefix, c.Provisioner, c.pattern, c.MaxTTL)
}

// complete fills in a controller's defaults: its own provisioner, and an
// explicit TTL, so that the Operator never applies a default longer than
// the controller's bound.
func (c *controller) complete(req TokenRequest) TokenRequest {
	if req.Provisioner == "" {
		req.Provisioner = c.Provisioner
	}
	if req.TTL == "" {
		req.TTL = c.DefaultTTL.String()
	}
	return req
}

// principal is an authenticated client: an admin (ctl nil) or a
// controller.
type principal struct {
	id  spiffeid.ID
	ctl *controller
}

// action is what a request asks to do, as far as authorization cares: the
// ServeMux pattern that routes it ("" when no route matches) and, for a
// token request whose body has been decoded, the request.
type action struct {
	route string
	token *TokenRequest
}

// authorize is the one place that decides what an authenticated client may
// do; every refusal wraps errForbidden. Admins may do everything. A
// controller may only mint on mintRoute, for a named worker of its
// provisioner that matches its pattern, with a TTL of at most its MaxTTL.
//
// It runs twice for a controller's request: in serve with the route alone,
// before routing, so that a controller learns nothing about other routes
// (not even whether they exist), and in mintToken once the body is decoded
// and completed. A TTL that is not a duration is the client's mistake, not
// a question of permission, and is ErrInvalid.
func (a *API) authorize(p principal, act action) error {
	c := p.ctl
	if c == nil {
		return nil
	}
	if act.route != mintRoute {
		return Errorf(errForbidden, "%s", c.scope())
	}
	req := act.token
	if req == nil {
		return nil // the body is judged once decoded
	}
	if req.Provisioner != c.Provisioner {
		return Errorf(errForbidden, "provisioner %q is not the controller's; %s", req.Provisioner, c.scope())
	}
	if req.Worker == "" {
		return Errorf(errForbidden, "a worker name is required; %s", c.scope())
	}
	if !c.pattern.MatchString(req.Worker) {
		return Errorf(errForbidden, "worker %q does not match the controller's pattern; %s", req.Worker, c.scope())
	}
	ttl, err := time.ParseDuration(req.TTL)
	if err != nil {
		return Errorf(ErrInvalid, "ttl: %v", err)
	}
	if ttl <= 0 {
		return Errorf(ErrInvalid, "ttl: %s must be positive", req.TTL)
	}
	if ttl > c.MaxTTL {
		return Errorf(errForbidden, "ttl %s exceeds the controller's maximum; %s", ttl, c.scope())
	}
	return nil
}
