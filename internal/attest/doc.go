// Package attest serves POST /attest/<provisioner>: a worker presents a JWT
// its platform gave it (a Kubernetes service-account token, an OIDC identity
// token), a JWT attestor of the provisioner verifies it, and the worker gets
// one-time EAB credentials bound to the attested identity. Ordinary ACME
// with EAB follows, so every EAB-capable client can use it; the binding,
// pre-authorization and leaf profile are those of join tokens.
package attest
