// Package stepca is the only place in crank-ca that imports smallstep's
// authority and acme packages. It builds an embedded smallstep authority from
// crank-ca's own configuration and serves its ACME API, and it bends that API
// to crank-ca's needs through the two seams smallstep leaves open: a wrapping
// acme.Linker (request-scoped plumbing, run before smallstep's handlers) and a
// wrapping acme.DB (which sees and steers every record smallstep writes).
//
// Through those seams it adds what stock smallstep cannot do: join-token EAB
// credentials that bind an ACME account to a worker identity, pre-authorized
// orders for that identity's names, the SPIFFE leaf profile at finalize,
// lifetime bounds checked before anything is written, configurable validation
// ports, and server-side logging of the real cause behind every ACME error.
//
// Everything smallstep-specific stays here so that provisioner/ (the public
// worker-identity logic) and the rest of crank-ca never see smallstep types.
package stepca
