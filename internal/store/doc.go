// Package store keeps crank-ca's own records beside smallstep's ACME tables in
// the same nosql database: which ACME account is bound to which worker
// identity, and which join tokens have been spent. Keeping them in the shared
// store (not in process memory) is what makes a token single-use across
// restarts and, later, across replicas on one PostgreSQL database.
//
// The package also owns retention: data of certificates and orders that
// expired long ago is deleted so that a CA issuing short-lived certificates
// does not grow without bound.
package store
