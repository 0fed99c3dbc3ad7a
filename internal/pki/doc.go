// Package pki owns crank-ca's own key material: the root and intermediate
// certificate authority that the embedded ACME CA signs with, and the
// certificate the HTTPS listener presents to clients.
//
// The package is deliberately small (the standard library plus go-spiffe's
// ID type) because it sits at the bottom of the trust chain: everything else
// in crank-ca either serves certificates signed by this material or is
// reached over a TLS connection authenticated by it.
//
// Responsibilities:
//
//   - [Create] bootstraps a fresh ECDSA P-256 root and intermediate on disk,
//     refusing to overwrite anything, so an accidental re-run of "init" can
//     never replace a root that clients already trust.
//   - [Load] reads the material needed to serve (the root key stays offline)
//     and checks it is internally consistent before the server starts, so
//     misconfiguration fails loudly at startup rather than at first issuance.
//   - [ServerCerts] issues short-lived certificates for crank-ca's own HTTPS
//     endpoint from the intermediate and renews them both lazily (from
//     tls.Config.GetCertificate) and proactively ([ServerCerts.Run]).
//   - [IssueClientCert] issues operator (admin) client certificates with a
//     SPIFFE ID, for the admin API.
//   - [RotateIntermediate] signs a new intermediate with the root key (read
//     for that alone) into the files the server loads, keeping the old one
//     beside them; [ServerCerts.Switch] moves the server's certificate to it
//     on reload. [RenewClientCert] replaces an operator certificate in place.
//
// Private keys are written with mode 0600 via an atomic temp-file+rename and
// are never logged: [CA] implements fmt.Stringer and slog.LogValuer so that
// accidentally logging it prints only public information.
package pki
