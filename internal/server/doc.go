// Package server is crank-ca's composition root: it turns a validated
// config.Config into running parts (the CA's key material, the embedded
// smallstep authority, the server's own TLS certificate, retention) and serves
// them over HTTPS. It reads no flags and no environment: cmd/crank-ca does.
package server
