// Package workload serves the SPIFFE Workload API (the X.509 half) over gRPC
// on a Unix socket, from the identity a crank-agent keeps renewed. Any
// SPIFFE-aware program (go-spiffe's workloadapi, java-spiffe, py-spiffe,
// spiffe-helper, ghostunnel, spire-agent's own CLI) then gets the worker's
// X.509-SVID, its key and the CA's roots, and a fresh message on every
// rotation, without knowing crank-ca exists.
//
// It implements the published protobuf definitions of go-spiffe
// (proto/spiffe/workload): FetchX509SVID and FetchX509Bundles stream the
// current material at once and again after every rotation the Source
// announces; the JWT methods answer Unimplemented. Every call must carry the
// spec's security header (workload.spiffe.io: true, else InvalidArgument)
// and, when Config.AllowUIDs is set, come from one of those Unix users as
// the kernel reports them for the connection (SO_PEERCRED, else
// PermissionDenied). The socket itself is created by Listen with a
// restrictive mode, atomically: it never exists at its path with looser
// permissions.
//
// Unlike SPIRE there is no per-workload attestation: every allowed caller
// gets the one identity of the worker the agent runs for.
package workload
