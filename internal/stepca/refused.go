package stepca

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/smallstep/certificates/acme"
)

// auditRefusal records an ACME request refused with a problem document
// (a 4xx) in the audit stream, naming the provisioner and the problem type.
// Every refusal of the ACME API is rendered through logError, whichever
// check made it (crank-ca's prechecks, smallstep's handlers, the name
// policy), so this one line covers them all; the metrics count it.
func (c *CA) auditRefusal(r *http.Request, err error) {
	var ae *acme.Error
	if !errors.As(err, &ae) || ae.Status >= 500 {
		return
	}
	var prov string
	if spec := stateFrom(r.Context()).spec; spec != nil {
		prov = spec.Name
	}
	c.audit.LogAttrs(r.Context(), slog.LevelInfo, "request refused",
		slog.String("provisioner", prov), slog.String("type", ae.Type), slog.Int("status", ae.Status),
		slog.String("method", r.Method), slog.String("path", truncate(r.URL.Path, 120)))
}
