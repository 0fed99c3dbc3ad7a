// Package config defines crank-ca's single operator-facing configuration
// file: its schema, strict decoding, explicit defaults and validation.
//
// Everything an operator can configure lives in one JSON file so that a
// deployment is reviewable in one place. Because a typo in a CA's
// configuration can silently weaken issuance policy, the file is handled
// strictly:
//
//   - Decode rejects unknown fields (case-sensitively, naming the field and
//     its JSON path), duplicate fields, wrong JSON types and any data after
//     the top-level object.
//   - ApplyDefaults fills every unset field with a documented default, so the
//     rest of the program never has to guess what a zero value means.
//   - Validate reports every problem at once (joined with errors.Join), each
//     prefixed by the JSON path of the offending field, so an operator can fix
//     a file in one pass instead of one error per restart.
//
// Load combines the three steps for a file on disk; Default builds the
// configuration that `crank-ca init` writes with Write.
//
// Validation here is static: it never touches the filesystem or the network
// (key files may not exist yet when the file is written) and checks
// worker-attestation patterns only lightly; the provisioner package performs
// the deep checks when it builds provisioners from this configuration.
//
// The PostgreSQL DSN may carry a password, so Storage (and Config) redact it
// in String, GoString and LogValue. Only Write and json.Marshal see the
// secret.
package config
