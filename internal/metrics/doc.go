// Package metrics defines the Prometheus metrics of crank-ca (CA) and
// crank-agent (Agent), each on a registry of its own that the caller serves
// on a listener of its own: nothing registers on the client library's global
// default registry, so two servers in one process (tests, replicas) never
// share a counter.
//
// The CA's event counters (issuances, refusals, attestations, token binds,
// revocations) are derived from the audit stream: AuditHandler wraps the
// audit logger's slog.Handler and counts each decision as it passes, so every
// decision that is audited is counted in one place and the ACME code carries
// no metrics calls. Label values are only ever taken from small fixed sets
// (configured provisioner names, ACME problem types, attestation checks):
// never a worker name, an account, a serial or a raw URL.
package metrics
