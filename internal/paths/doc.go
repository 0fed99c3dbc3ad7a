// Package paths decides where a worker keeps its state (ACME account key,
// current certificate and key, pinned root) and writes that state safely.
//
// The location must be predictable, because an operator has to find the
// files and a restarted worker has to find them again without contacting
// the CA, and it must differ between a container (a fixed path that a volume
// is mounted on) and a developer machine (the XDG state directory). StateDir
// encodes that choice in one place; the environment is passed in rather than
// read here so that the decision is testable and cmd/ stays the only reader
// of the process environment.
//
// The state holds private keys, so Ensure refuses directories that others
// can write into, and WriteFileAtomic never leaves a half-written key or
// certificate behind if the worker dies mid-write.
package paths
