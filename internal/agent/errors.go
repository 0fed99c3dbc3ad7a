package agent

import "errors"

// Errors a worker operator must be able to tell apart: each one needs a
// different fix.
var (
	// ErrFingerprintMismatch: the CA's root is not the one the operator pinned.
	ErrFingerprintMismatch = errors.New("the CA's root certificate does not match the pinned fingerprint")
	// ErrTokenRejected: the CA refused the join token (used, expired, forged or
	// for another worker).
	ErrTokenRejected = errors.New("the CA refused the join token")
	// ErrNoToken: there is no account in the state directory and no token.
	ErrNoToken = errors.New("no account in the state directory and no join token given")
	// ErrAttestationRefused: the CA refused the JWT from the JWT file
	// (expired, already used, wrong audience, identity disabled ...). The
	// error is an *AttestationError naming the CA's check.
	ErrAttestationRefused = errors.New("the CA refused the attestation")
	// ErrJWTFile: the JWT file cannot be read or is empty.
	ErrJWTFile = errors.New("the JWT file cannot be used")
	// ErrCAUnreachable: the CA could not be reached.
	ErrCAUnreachable = errors.New("the CA is unreachable")
	// ErrAccountRejected: the CA no longer accepts this worker's account;
	// restart the worker with a new join token.
	ErrAccountRejected = errors.New("the CA no longer accepts this worker's account; restart it with a new join token")
	// ErrCertificateRejected: the CA refused to issue (names, lifetime).
	ErrCertificateRejected = errors.New("the CA refused to issue the certificate")
)
