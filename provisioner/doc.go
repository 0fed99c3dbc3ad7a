// Package provisioner is the transport-agnostic core of crank-ca's
// "worker-attestation" provisioner.
//
// It answers three questions and nothing else:
//
//   - Which workers exist and what may each of them be called?
//     ([Identities], [Identity])
//   - Is this piece of evidence genuine, and which worker does it name?
//     ([Attestor], [JoinTokenAttestor], [TokenKey])
//   - What does a certificate issued to that worker look like?
//     ([Identity.ApplyLeaf], the SPIFFE X.509-SVID leaf profile)
//
// The package deliberately knows nothing about HTTP, ACME or smallstep: an
// adapter elsewhere in the tree translates ACME External Account Binding
// credentials and order identifiers into calls to this package. Keeping the
// policy here, free of transport concerns, lets it be tested and fuzzed in
// isolation and keeps the security decisions in one small place.
//
// Join tokens are stateless (HMAC-signed). Single use is NOT enforced here;
// the caller must record each accepted KID in its own store.
package provisioner
