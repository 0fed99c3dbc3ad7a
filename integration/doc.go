// Package integration holds crank-ca's end-to-end tests: a real server on
// loopback HTTPS, driven by real ACME clients (the lego v4 library, certbot).
// Nothing of crank-ca's own is faked here. Slow tests skip under -short.
package integration
