// Package testpki holds test-only helpers: a throwaway PKI and loopback TLS
// servers. It is imported only by _test.go files.
//
// It depends on the standard library alone, so that the tests of any
// package, internal/agent's included, can import it without a cycle.
package testpki
