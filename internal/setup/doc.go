// Package setup creates a new CA directory for `crank-ca init`: key material,
// the join-token secret and a working configuration. It refuses to touch a
// directory that already holds a CA, because overwriting a root would strand
// every certificate and worker that trusts it.
package setup
