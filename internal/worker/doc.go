// Package worker is the in-process Go runtime of a Crank worker: one call
// obtains the worker's mTLS identity from crank-ca, keeps it rotating, and
// serves an http.Handler over mutual TLS with SPIFFE-authorized peers. It
// also gives the worker an HTTP client for calling its peers over mTLS. It is
// the Go counterpart of the seed platform's WorkerApplication.run(), with
// the rotation the seed left for later.
package worker
