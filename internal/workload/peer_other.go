//go:build !linux

package workload

import (
	"errors"
	"net"
)

// errNoPeerCred: the platform cannot tell who is on the other end of a Unix
// socket.
var errNoPeerCred = errors.New("peer credentials are not available on this platform")

// peerCred is only implemented on Linux; elsewhere an allow-list refuses
// every caller.
func peerCred(*net.UnixConn) (uid, gid uint32, pid int32, err error) {
	return 0, 0, 0, errNoPeerCred
}
