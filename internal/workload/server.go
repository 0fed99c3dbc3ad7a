package workload

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/crank-platform/crank-ca/internal/agent"
)

// SecurityHeader is the metadata key every Workload API request must carry
// with the value "true" (SPIFFE Workload Endpoint, section 2): it shows the
// request was made on purpose by a Workload API client, not forwarded by
// something tricked into talking to the socket.
const SecurityHeader = "workload.spiffe.io"

// Source provides the identity to serve and announces its rotations.
// *agent.Agent is one.
type Source interface {
	// Current is the identity to hand out now; nil while there is none.
	Current() *agent.Identity
	// Subscribe returns a channel that receives a value after every
	// rotation (coalesced while the receiver is busy).
	Subscribe() <-chan struct{}
}

// Config configures a Server.
type Config struct {
	// Source is required.
	Source Source
	// AllowUIDs, when not empty, are the only Unix users whose calls are
	// answered; others get PermissionDenied. Empty means whoever can open
	// the socket (its mode and directory decide).
	AllowUIDs []uint32
	// Hint is the X509SVID.hint of the one SVID served, for consumers that
	// choose between several; empty by default.
	Hint string
	// Logger gets refusals (warn) and calls and pushes (debug); nil discards.
	Logger *slog.Logger
	// ShutdownGrace bounds how long Serve waits for calls in flight when it
	// stops; zero means one second. Streams end at once.
	ShutdownGrace time.Duration
}

// Server is a SPIFFE Workload API server for one identity.
type Server struct {
	workloadpb.UnimplementedSpiffeWorkloadAPIServer

	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every rotation
	done    chan struct{} // closed when Serve stops: streams end
}

// New checks cfg; it does no I/O.
func New(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("workload: Config.Source is required")
	}
	if cfg.ShutdownGrace == 0 {
		cfg.ShutdownGrace = time.Second
	}
	cfg.AllowUIDs = slices.Clone(cfg.AllowUIDs)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: log, changed: make(chan struct{}), done: make(chan struct{})}, nil
}

// Serve answers Workload API calls on ln until ctx is done, then stops
// (open streams end with Unavailable, which clients treat as a reason to
// reconnect) and closes ln. It returns nil after ctx is done, or the error
// that ended serving. A Server serves once.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	gs := grpc.NewServer(
		grpc.Creds(peerCreds{}),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := s.authorize(ctx, info.FullMethod); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := s.authorize(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	)
	workloadpb.RegisterSpiffeWorkloadAPIServer(gs, s)

	rotations := s.cfg.Source.Subscribe()
	relayDone := make(chan struct{})
	relayCtx, stopRelay := context.WithCancel(ctx)
	defer stopRelay()
	go func() {
		defer close(relayDone)
		for {
			select {
			case <-relayCtx.Done():
				return
			case <-rotations:
				s.mu.Lock()
				close(s.changed)
				s.changed = make(chan struct{})
				s.mu.Unlock()
			}
		}
	}()

	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
	}
	close(s.done)
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(s.cfg.ShutdownGrace):
		gs.Stop()
		<-stopped
	}
	stopRelay()
	<-relayDone
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// watch returns the identity now and a channel closed at the next rotation.
func (s *Server) watch() (*agent.Identity, <-chan struct{}) {
	s.mu.Lock()
	ch := s.changed
	s.mu.Unlock()
	// Read after taking the channel: a rotation in between closes ch, so
	// it is never missed.
	return s.cfg.Source.Current(), ch
}

// authorize checks the caller's Unix user against the allow-list and the
// security header, on every call.
func (s *Server) authorize(ctx context.Context, method string) error {
	pi := peerInfo(ctx)
	if len(s.cfg.AllowUIDs) > 0 {
		if pi.Err != nil {
			s.log.Warn("Workload API call refused: the caller's Unix user is unknown", "method", method, "err", pi.Err)
			return status.Error(codes.PermissionDenied, "the caller's Unix user cannot be determined, and the Workload API is limited to an allow-list")
		}
		if !slices.Contains(s.cfg.AllowUIDs, pi.UID) {
			s.log.Warn("Workload API call refused: Unix user not in the allow-list", "method", method, "uid", pi.UID, "pid", pi.PID)
			return status.Errorf(codes.PermissionDenied, "Unix user %d may not use this Workload API (not in crank-agent's allow-list)", pi.UID)
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(SecurityHeader); len(v) != 1 || v[0] != "true" {
		s.log.Warn("Workload API call refused: security header missing", "method", method, "uid", pi.UID, "pid", pi.PID)
		return status.Error(codes.InvalidArgument, "security header missing from request: set metadata "+SecurityHeader+": true")
	}
	s.log.Debug("Workload API call", "method", method, "uid", pi.UID, "pid", pi.PID)
	return nil
}

func peerInfo(ctx context.Context) PeerInfo {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return PeerInfo{Err: errors.New("no peer in context")}
	}
	pi, ok := p.AuthInfo.(PeerInfo)
	if !ok {
		return PeerInfo{Err: errors.New("connection without peer credentials")}
	}
	return pi
}

// FetchX509SVID sends the current X.509-SVID at once and again after every
// rotation, until the client goes or the server stops.
func (s *Server) FetchX509SVID(_ *workloadpb.X509SVIDRequest, stream grpc.ServerStreamingServer[workloadpb.X509SVIDResponse]) error {
	ctx := stream.Context()
	pi := peerInfo(ctx)
	var sent *agent.Identity
	for {
		id, changed := s.watch()
		if id != nil && id != sent {
			resp, err := s.svidResponse(id)
			if err != nil {
				s.log.Error("Workload API: cannot encode the SVID", "err", err)
				return status.Error(codes.Internal, "cannot encode the X.509-SVID")
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
			s.log.Debug("Workload API: X.509-SVID pushed", "serial", id.Serial(), "notAfter", id.NotAfter(), "uid", pi.UID, "pid", pi.PID)
			sent = id
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.done:
			return status.Error(codes.Unavailable, "crank-agent is stopping")
		case <-changed:
		}
	}
}

// FetchX509Bundles sends the trust bundle at once and again whenever it
// changes.
func (s *Server) FetchX509Bundles(_ *workloadpb.X509BundlesRequest, stream grpc.ServerStreamingServer[workloadpb.X509BundlesResponse]) error {
	ctx := stream.Context()
	var sent []byte
	for {
		id, changed := s.watch()
		if id != nil {
			b := bundleDER(id)
			if !bytes.Equal(b, sent) {
				err := stream.Send(&workloadpb.X509BundlesResponse{Bundles: map[string][]byte{id.SPIFFEID.TrustDomain().Name(): b}})
				if err != nil {
					return err
				}
				sent = b
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.done:
			return status.Error(codes.Unavailable, "crank-agent is stopping")
		case <-changed:
		}
	}
}

const jwtUnimplemented = "JWT-SVIDs are not supported: crank-ca issues X.509-SVIDs only; use FetchX509SVID"

// FetchJWTSVID is not supported.
func (s *Server) FetchJWTSVID(context.Context, *workloadpb.JWTSVIDRequest) (*workloadpb.JWTSVIDResponse, error) {
	return nil, status.Error(codes.Unimplemented, jwtUnimplemented)
}

// FetchJWTBundles is not supported.
func (s *Server) FetchJWTBundles(*workloadpb.JWTBundlesRequest, grpc.ServerStreamingServer[workloadpb.JWTBundlesResponse]) error {
	return status.Error(codes.Unimplemented, jwtUnimplemented)
}

// ValidateJWTSVID is not supported.
func (s *Server) ValidateJWTSVID(context.Context, *workloadpb.ValidateJWTSVIDRequest) (*workloadpb.ValidateJWTSVIDResponse, error) {
	return nil, status.Error(codes.Unimplemented, jwtUnimplemented)
}

// svidResponse is the message for id: the chain (leaf first) and the
// roots as concatenated DER, the key as PKCS#8 DER.
func (s *Server) svidResponse(id *agent.Identity) (*workloadpb.X509SVIDResponse, error) {
	key, err := x509.MarshalPKCS8PrivateKey(id.Key)
	if err != nil {
		return nil, fmt.Errorf("marshalling the key: %w", err)
	}
	var chain []byte
	for _, c := range id.Chain {
		chain = append(chain, c.Raw...)
	}
	return &workloadpb.X509SVIDResponse{Svids: []*workloadpb.X509SVID{{
		SpiffeId:    id.SPIFFEID.String(),
		X509Svid:    chain,
		X509SvidKey: key,
		Bundle:      bundleDER(id),
		Hint:        s.cfg.Hint,
	}}}, nil
}

func bundleDER(id *agent.Identity) []byte {
	var b []byte
	for _, r := range id.Roots {
		b = append(b, r.Raw...)
	}
	return b
}
