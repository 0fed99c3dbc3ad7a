// Package admin is the HTTP edge of crank-ca's operator API: the routes
// under [Prefix] on the CA's HTTPS port through which operators mint join
// tokens, list and disable workers, inspect ACME accounts and certificates,
// revoke certificates and force rotation.
//
// The package owns only the protocol: routing, authentication, strict JSON
// decoding, audit logging and the translation of errors into RFC 7807
// problem documents. What the operations do is the [Operator]'s business
// (implemented by internal/server); the API never touches CA state itself.
//
// Authentication is mutual TLS. The listener's tls.Config must request and
// verify client certificates against the CA root (ClientAuth
// tls.VerifyClientCertIfGiven, ClientCAs the root pool), so that workers can
// still reach the ACME endpoints without one while anything presented is
// verified, expiry included, during the handshake. [API.Handler] then
// requires, on every route, a verified chain whose leaf carries exactly one
// URI SAN naming a SPIFFE ID listed in [Config.Admins] or
// [Config.Controllers]; without a verified certificate the answer is 401,
// with a certificate of anyone else (a worker, say) it is 403.
//
// Admins may do everything. A [Controller] may only mint join tokens
// (POST /tokens) for its provisioner and worker names matching its
// pattern, with a bounded TTL; anything else, every other route included,
// is a 403 whose detail says what the controller may do. That decision is
// made in one function (authorize), before routing and again once the token
// request is decoded. State-changing requests that a browser marks as
// cross-origin are refused as well, so a browser holding an admin
// certificate cannot be used for cross-site request forgery.
//
// Errors are typed: an Operator returns errors wrapping [ErrInvalid],
// [ErrNotFound] or [ErrConflict], whose messages become the problem's detail
// and must therefore be worded for clients; every other error becomes a 500
// with a generic detail, the real error going only to the log. The mapping
// lives in one function (problemFor).
//
// Every request, allowed or not, yields one "admin request" record on the
// audit stream (admin or controller ID, method, path, status, outcome, what
// was asked for and, for a refusal, why). Response bodies are never logged, so the secrets in a
// [TokenResponse] stay out of both logs.
package admin
