// Package ari computes ACME Renewal Information (RFC 9773) for crank-ca:
// certificate identifiers and the renewal window suggested for each
// certificate. Windows sit at a deterministic, per-certificate point inside
// a band of the lifetime, so that a fleet issued in the same second renews
// spread over the band instead of stampeding the CA, and a decision of the
// CA (revocation, forced rotation) moves a window to now.
package ari
