// Package nonce issues and checks ACME replay nonces (RFC 8555 section 6.5)
// without a store write per response.
//
// A nonce is authenticated, not stored: it carries its issue time and
// random bits under an HMAC-SHA256 tag keyed by a secret every replica
// shares. Checking one needs no lookup of the issued nonce, only a record
// that it has been spent: a replay set holding spent nonces until they
// expire (MaxAge after issue). One replica keeps that set in memory and
// saves it when it stops; replicas on one database share it in the store,
// one insert per request instead of smallstep's insert at issue and delete
// at use.
package nonce
