// Package limit holds the in-memory bounds crank-ca puts on what one client
// can make it do: token-bucket rates per client address, and a cap on the
// orders an account has pending. State lives in the memory of one replica
// (RFC 8555 section 6.6 leaves the mechanism to the server); a restart
// forgets it, which only ever errs on the side of the client.
package limit
