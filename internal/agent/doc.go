// Package agent is the worker side of crank-ca: it obtains a worker's mTLS
// certificate from the CA at start-up and renews it for as long as the worker
// runs, so that no worker ever serves an expired certificate.
//
// It is built on the lego v4 ACME library. The flow is: trust bootstrap by
// root fingerprint (fetch /roots.pem, check the SHA-256, then trust only that
// root), account registration with the join token as External Account
// Binding (or, with Config.JWTFile, with the one-time EAB credentials the CA
// gives in exchange for a platform JWT at POST /attest/<provisioner>, see
// attest.go), and orders for the identity's names with a P-256 key
// generated here (the key never leaves the worker). An attested account
// that the CA stops accepting (maxBindingAge) is replaced by attesting
// again, while the current certificate stays in service. Everything needed to restart
// without the CA (account key, certificate, key, root) is kept in a state
// directory, written atomically with keys 0600.
//
// Renewal follows ARI when the CA advertises renewalInfo and otherwise
// happens at 2/3 of the lifetime with ±10% jitter; while the CA is
// unreachable it retries with capped exponential backoff and keeps serving
// the current certificate until it expires.
package agent
