// Package workertls turns a worker's current identity into crypto/tls
// configurations for mutual TLS between workers, with SPIFFE authorization.
//
// Certificates issued by crank-ca are short-lived and rotated in place by
// the agent, so a tls.Config built once at start-up must never capture a
// certificate or a root pool: every handshake asks the Source for the
// current identity instead. That is what makes rotation (and a change of
// the pinned roots) take effect without restarting listeners or clients.
//
// Peers are authenticated the SPIFFE way rather than the web way: the peer
// must present an X.509-SVID that chains to the roots of our own trust
// domain, and an Authorizer then decides on the peer's SPIFFE ID. Host names
// play no part, which is why client configurations skip the standard host
// name check. The verification and authorization themselves are
// go-spiffe's (spiffetls/tlsconfig); this package only adapts an
// *agent.Identity to go-spiffe's SVID and bundle sources, parses
// authorization policies written by operators, and closes the TLS session
// resumption gap (see ServerConfig).
package workertls
