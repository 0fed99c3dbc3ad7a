// Package supervise runs a worker's program as a child process of
// crank-agent and keeps it in step with certificate rotation.
//
// The child is started with the environment it is given (crank-agent adds the
// paths of the certificate files) and inherits the standard streams. After
// every rotation the supervisor first calls OnRotate, which writes the new
// files, and only if that succeeded sends the child the configured signal
// (SIGHUP by default in crank-agent), so that a child reloading on the
// signal always finds the new certificate and its key. Termination signals
// received by crank-agent are forwarded, and the child's exit status becomes
// crank-agent's: its exit code, or 128+n if it died from signal n, as a
// shell reports it.
//
// Nothing here knows about ACME or the CA, so the package is tested with
// plain shell scripts.
package supervise
