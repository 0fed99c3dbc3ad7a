package workload

import (
	"context"
	"errors"
	"net"

	"google.golang.org/grpc/credentials"
)

// PeerInfo is what the kernel says about the process on the other end of a
// connection, read once when it connects. It is the connection's
// credentials.AuthInfo.
type PeerInfo struct {
	credentials.CommonAuthInfo
	UID, GID uint32
	PID      int32
	// Err is why the credentials could not be read; then UID, GID and PID
	// mean nothing and an allow-list refuses the caller.
	Err error
}

// AuthType implements credentials.AuthInfo.
func (PeerInfo) AuthType() string { return "peercred" }

// peerCreds is a gRPC server transport "security" that exchanges nothing
// with the client (the Workload API is plaintext on a local socket) but
// reads the peer's credentials off the Unix socket, as SPIRE's peertracker
// does.
type peerCreds struct{}

func (peerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	info := PeerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		info.Err = errors.New("not a Unix socket connection")
		return conn, info, nil
	}
	info.UID, info.GID, info.PID, info.Err = peerCred(uc)
	return conn, info, nil
}

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("workload: peer credentials are server-side only")
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (peerCreds) Clone() credentials.TransportCredentials { return peerCreds{} }

func (peerCreds) OverrideServerName(string) error { return nil }
