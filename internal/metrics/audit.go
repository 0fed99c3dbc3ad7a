package metrics

import (
	"context"
	"log/slog"
	"strings"
)

// The audit events counted, as crank-ca writes them (the record's message).
// An audited decision missing here is not counted: add its message and the
// counter together.
const (
	EventIssued       = "certificate issued"
	EventRefused      = "request refused"
	EventAttestation  = "attestation"
	EventBound        = "account bound"
	EventTokenRefused = "join token refused"
	EventTokenReuse   = "token reuse refused"
	EventRevoked      = "certificate revoked"
	EventReplacement  = "certificate replacement ordered"
)

// AuditHandler wraps the audit logger's handler: every record still goes to
// next (if next wants it), and the decisions among them are counted. It
// counts even when next discards (a nil or quiet audit logger), so metrics
// do not depend on the audit log's level.
func (m *CA) AuditHandler(next slog.Handler) slog.Handler {
	if next == nil {
		next = slog.DiscardHandler
	}
	return &auditHandler{next: next, m: m}
}

type auditHandler struct {
	next slog.Handler
	m    *CA
	// attrs were added with WithAttrs outside any group: the counted
	// attributes may come from a logger's With.
	attrs []slog.Attr
	group bool
}

// Enabled is true for every audit level (info and above): a decision is
// counted whatever the audit log keeps.
func (h *auditHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.next.Enabled(ctx, l)
}

func (h *auditHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelInfo {
		h.m.count(r, h.attrs, h.group)
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *auditHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := &auditHandler{next: h.next.WithAttrs(as), m: h.m, attrs: h.attrs, group: h.group}
	if !h.group {
		c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	}
	return c
}

func (h *auditHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &auditHandler{next: h.next.WithGroup(name), m: h.m, attrs: h.attrs, group: true}
}

// fields are the attributes the counters read.
type fields struct {
	provisioner, attestor, outcome, check, reason, via, typ string
}

func readFields(r slog.Record, pre []slog.Attr, grouped bool) fields {
	var f fields
	set := func(a slog.Attr) {
		v := a.Value.Resolve()
		if v.Kind() != slog.KindString {
			return
		}
		s := v.String()
		switch a.Key {
		case "provisioner":
			f.provisioner = s
		case "attestor":
			f.attestor = s
		case "outcome":
			f.outcome = s
		case "check":
			f.check = s
		case "reason":
			f.reason = s
		case "via":
			f.via = s
		case "type":
			f.typ = s
		}
	}
	for _, a := range pre {
		set(a)
	}
	if !grouped {
		r.Attrs(func(a slog.Attr) bool { set(a); return true })
	}
	return f
}

// count updates the counter of one audit record, if it is a decision.
func (m *CA) count(r slog.Record, pre []slog.Attr, grouped bool) {
	switch r.Message {
	case EventIssued, EventRefused, EventAttestation, EventBound, EventTokenRefused, EventTokenReuse, EventRevoked, EventReplacement:
	default:
		return
	}
	f := readFields(r, pre, grouped)
	ls := m.labels.Load()
	prov := ls.provisioner(f.provisioner)
	switch r.Message {
	case EventIssued:
		m.issued.WithLabelValues(prov).Inc()
	case EventRefused:
		m.refusals.WithLabelValues(prov, ProblemReason(f.typ)).Inc()
	case EventAttestation:
		outcome := f.outcome
		if outcome != "accepted" && outcome != "refused" {
			outcome = LabelOther
		}
		m.attestations.WithLabelValues(prov, ls.method(f.provisioner, f.attestor), outcome, attestationCheck(f.check)).Inc()
	case EventBound:
		method := "join-token"
		if f.attestor != "" {
			method = ls.method(f.provisioner, f.attestor)
		}
		m.binds.WithLabelValues(prov, method).Inc()
	case EventTokenRefused:
		m.tokenRefused.WithLabelValues(prov, TokenReason(f.reason)).Inc()
	case EventTokenReuse:
		m.tokenRefused.WithLabelValues(prov, "used").Inc()
	case EventRevoked:
		via := "admin"
		if strings.HasPrefix(f.via, "acme") {
			via = "acme"
		}
		m.revocations.WithLabelValues(via).Inc()
	case EventReplacement:
		m.replacements.Inc()
	}
}

// problemPrefix starts every ACME problem type (RFC 8555 section 6.7).
const problemPrefix = "urn:ietf:params:acme:error:"

// problemTypes are the ACME problem types crank-ca and smallstep answer
// with (RFC 8555 section 6.7, RFC 9773's alreadyReplaced, smallstep's
// device attestation).
var problemTypes = map[string]bool{
	"accountDoesNotExist": true, "alreadyReplaced": true, "alreadyRevoked": true,
	"badAttestationStatement": true, "badCSR": true, "badNonce": true, "badPublicKey": true,
	"badRevocationReason": true, "badSignatureAlgorithm": true, "caa": true, "compound": true,
	"connection": true, "dns": true, "externalAccountRequired": true, "incorrectResponse": true,
	"invalidContact": true, "malformed": true, "orderNotReady": true, "rateLimited": true,
	"rejectedIdentifier": true, "serverInternal": true, "tls": true, "unauthorized": true,
	"unsupportedContact": true, "unsupportedIdentifier": true, "userActionRequired": true,
}

// ProblemReason is the reason label of an ACME problem type: its short
// name ("unauthorized"), or "other" for anything not in RFC 8555's list.
func ProblemReason(typ string) string {
	short, ok := strings.CutPrefix(typ, problemPrefix)
	if ok && problemTypes[short] {
		return short
	}
	return LabelOther
}

// attestationChecks are the checks an attestation can fail (see
// provisioner.AttestationError).
var attestationChecks = map[string]bool{
	"algorithm": true, "allow-list": true, "audience": true, "disabled": true, "expiry": true,
	"format": true, "issued-at": true, "issuer": true, "jti": true, "key": true, "max-age": true,
	"not-before": true, "signature": true, "subject": true, "token-review": true,
}

func attestationCheck(c string) string {
	switch {
	case c == "":
		return LabelNone
	case attestationChecks[c]:
		return c
	default:
		return LabelOther
	}
}

// tokenReasons classify the reasons crank-ca gives for refusing a join
// token (internal/stepca/tokens.go); the first match wins.
var tokenReasons = []struct{ contains, reason string }{
	{"disabled", "disabled"},
	{"already been used", "used"},
	{"has expired", "expired"},
	{"not valid for this CA", "forged"},
	{"not a crank-ca token", "malformed"},
	{"names no worker", "malformed"},
	{"minted for provisioner", "wrong-provisioner"},
	{"cannot register on provisioner", "wrong-provisioner"},
}

// TokenReason is the reason label of a refused join token: disabled, used,
// expired, forged, malformed, wrong-provisioner, or other.
func TokenReason(detail string) string {
	for _, r := range tokenReasons {
		if strings.Contains(detail, r.contains) {
			return r.reason
		}
	}
	return LabelOther
}
