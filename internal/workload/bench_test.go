package workload

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/crank-platform/crank-ca/internal/agent"
	"github.com/crank-platform/crank-ca/internal/testpki"
)

// BenchmarkRotationPush measures a rotation's way to a client: from the
// Source announcing it to the client holding the new SVID message, over a
// real Unix socket (ns/op is the push latency).
func BenchmarkRotationPush(b *testing.B) {
	root := testpki.New(b, "bench root")
	var ids [2]*agent.Identity
	for i := range ids {
		leaf, key := root.Leaf(b, testID)
		id, err := agent.NewIdentity([]*x509.Certificate{leaf}, key, []*x509.Certificate{root.Cert})
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = id
	}
	src := &fakeSource{}
	src.rotate(ids[0])
	sock := filepath.Join(b.TempDir(), "agent.sock")
	ln, err := Listen(b.Context(), sock, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	s, err := New(Config{Source: src})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	callCtx, stop := context.WithTimeout(b.Context(), 10*time.Minute)
	defer stop()
	stream, err := workloadpb.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(withHeader(callCtx), &workloadpb.X509SVIDRequest{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		src.rotate(ids[(i+1)%2])
		if _, err := stream.Recv(); err != nil {
			b.Fatal(err)
		}
	}
}
