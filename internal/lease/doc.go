// Package lease makes a cluster duty (the retention sweep, CRL refresh) run
// at one crank-ca replica at a time when several replicas share one
// PostgreSQL database.
//
// A Lease is a PostgreSQL session-level advisory lock, keyed by the duty's
// name (Key), held on a connection of its own: the replica that wins it
// keeps it between runs, so one healthy replica stays the holder, and the
// lock goes with the session, so a holder that loses its connection (crash,
// network partition, pg_terminate_backend) loses the lease, and another
// replica wins it on its next try. The holder pings its connection before
// each run, notices the loss and tries again later like any other replica.
//
// The lock guards starting a run, not a run already under way: a holder
// whose connection dies during a run finishes that run while another
// replica may start one. Duties must therefore be safe to overlap (the
// retention sweep deletes only what is expired; a CRL is stored by
// compare-and-swap against the one it was numbered from).
//
// With an embedded (bbolt) store there is one process per database file,
// whose file lock already makes it the only one, so the lease is local and
// always held.
package lease
