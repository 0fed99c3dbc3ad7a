// Package version says which build of crank-ca's programs is running: the
// release stamp set at link time ([Stamp]), or else what the Go toolchain
// recorded in the binary (module version, VCS revision and commit time, a
// modified work tree, the Go version). crank-ca, crank-agent and
// hello-worker print it for --version, and the CA serves it in /health, so
// that an operator can tell which build answers without a shell on the
// host, and a bug report can name the exact commit.
package version
