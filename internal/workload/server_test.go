package workload

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/crank-platform/crank-ca/internal/agent"
	"github.com/crank-platform/crank-ca/internal/testpki"
)

const testID = "spiffe://crank.internal/worker/api"

// fakeSource is a Source whose identity the test rotates.
type fakeSource struct {
	mu   sync.Mutex
	cur  *agent.Identity
	subs []chan struct{}
}

func (f *fakeSource) Current() *agent.Identity {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur
}

func (f *fakeSource) Subscribe() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan struct{}, 1)
	f.subs = append(f.subs, ch)
	return ch
}

func (f *fakeSource) rotate(id *agent.Identity) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cur = id
	for _, ch := range f.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// testPKI is a root and intermediate issuing identities like crank-ca's.
type testPKI struct {
	root, inter *testpki.CA
}

func newTestPKI(t *testing.T) *testPKI {
	root := testpki.New(t, "test root")
	return &testPKI{root: root, inter: root.Intermediate(t, "test intermediate")}
}

func (p *testPKI) identity(t *testing.T) *agent.Identity {
	t.Helper()
	leaf, key := p.inter.Leaf(t, testID)
	id, err := agent.NewIdentity([]*x509.Certificate{leaf, p.inter.Cert}, key, []*x509.Certificate{p.root.Cert})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// serve starts a Server on a socket in a fresh directory; it stops at the
// end of the test.
func serve(t *testing.T, cfg Config) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := Listen(t.Context(), sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return sock
}

// rawClient is a Workload API client without go-spiffe's header.
func rawClient(t *testing.T, sock string) workloadpb.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return workloadpb.NewSpiffeWorkloadAPIClient(conn)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, SecurityHeader, "true")
}

func timeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestFetchX509SVIDFields: the first message holds the chain (leaf first)
// and the root as concatenated DER, the key as PKCS#8 DER, the SPIFFE ID and
// the hint; every rotation pushes the new identity.
func TestFetchX509SVIDFields(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	src := &fakeSource{}
	first := pki.identity(t)
	src.rotate(first)
	sock := serve(t, Config{Source: src, Hint: "api"})

	stream, err := rawClient(t, sock).FetchX509SVID(withHeader(timeout(t)), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	check := func(want *agent.Identity) {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Svids) != 1 {
			t.Fatalf("%d SVIDs, want 1", len(resp.Svids))
		}
		sv := resp.Svids[0]
		if sv.SpiffeId != testID || sv.Hint != "api" {
			t.Errorf("spiffe_id %q hint %q", sv.SpiffeId, sv.Hint)
		}
		chain, err := x509.ParseCertificates(sv.X509Svid)
		if err != nil || len(chain) != 2 || !chain[0].Equal(want.Leaf()) || !chain[1].Equal(pki.inter.Cert) {
			t.Errorf("x509_svid: %d certificates, err %v; want leaf %s and the intermediate", len(chain), err, want.Serial())
		}
		key, err := x509.ParsePKCS8PrivateKey(sv.X509SvidKey)
		if err != nil {
			t.Fatalf("x509_svid_key: %v", err)
		}
		if k, ok := key.(crypto.Signer); !ok || !want.Leaf().PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()) {
			t.Error("x509_svid_key does not match the leaf")
		}
		roots, err := x509.ParseCertificates(sv.Bundle)
		if err != nil || len(roots) != 1 || !roots[0].Equal(pki.root.Cert) {
			t.Errorf("bundle: %d certificates, err %v; want the root", len(roots), err)
		}
	}
	check(first)
	for range 3 {
		next := pki.identity(t)
		src.rotate(next)
		check(next)
	}
}

// TestGoSPIFFEWatch: go-spiffe's client sees the identity and each rotation
// within the bound, and the bundle through FetchX509Bundles.
func TestGoSPIFFEWatch(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	src := &fakeSource{}
	src.rotate(pki.identity(t))
	sock := serve(t, Config{Source: src})
	ctx := timeout(t)

	c, err := workloadapi.New(ctx, workloadapi.WithAddr(Addr(sock)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	bundles, err := c.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundles.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("crank.internal"))
	if err != nil || len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(pki.root.Cert) {
		t.Fatalf("bundle: %v", err)
	}
	updates := make(chan string, 8)
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- c.WatchX509Context(watchCtx, watcher{updates})
	}()
	t.Cleanup(func() {
		stopWatch()
		<-watchDone
	})
	wantSerial := src.Current().Serial()
	for i := range 4 {
		select {
		case got := <-updates:
			if got != wantSerial {
				t.Fatalf("update %d: serial %s, want %s", i, got, wantSerial)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("update %d not pushed within 5s", i)
		}
		next := pki.identity(t)
		wantSerial = next.Serial()
		src.rotate(next)
	}
}

type watcher struct{ serials chan<- string }

func (w watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	w.serials <- c.DefaultSVID().Certificates[0].SerialNumber.String()
}

func (watcher) OnX509ContextWatchError(error) {}

// TestRefusals: the security header and the allow-list are checked on
// every method.
func TestRefusals(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	src := &fakeSource{}
	src.rotate(pki.identity(t))
	me := uint32(os.Getuid())
	open := serve(t, Config{Source: src})
	allowed := serve(t, Config{Source: src, AllowUIDs: []uint32{me}})
	others := serve(t, Config{Source: src, AllowUIDs: []uint32{me + 1, me + 2}})

	methods := map[string]func(ctx context.Context, c workloadpb.SpiffeWorkloadAPIClient) error{
		"FetchX509SVID": func(ctx context.Context, c workloadpb.SpiffeWorkloadAPIClient) error {
			s, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
			if err == nil {
				_, err = s.Recv()
			}
			return err
		},
		"FetchX509Bundles": func(ctx context.Context, c workloadpb.SpiffeWorkloadAPIClient) error {
			s, err := c.FetchX509Bundles(ctx, &workloadpb.X509BundlesRequest{})
			if err == nil {
				_, err = s.Recv()
			}
			return err
		},
		"FetchJWTSVID": func(ctx context.Context, c workloadpb.SpiffeWorkloadAPIClient) error {
			_, err := c.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"x"}})
			return err
		},
		"FetchJWTBundles": func(ctx context.Context, c workloadpb.SpiffeWorkloadAPIClient) error {
			s, err := c.FetchJWTBundles(ctx, &workloadpb.JWTBundlesRequest{})
			if err == nil {
				_, err = s.Recv()
			}
			return err
		},
		"ValidateJWTSVID": func(ctx context.Context, c workloadpb.SpiffeWorkloadAPIClient) error {
			_, err := c.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: "x", Svid: "y"})
			return err
		},
	}
	wantOK := func(method string) codes.Code {
		if slices.Contains([]string{"FetchJWTSVID", "FetchJWTBundles", "ValidateJWTSVID"}, method) {
			return codes.Unimplemented
		}
		return codes.OK
	}
	tests := []struct {
		name   string
		sock   string
		header []string // metadata pairs
		want   func(method string) codes.Code
	}{
		{"no header", open, nil, func(string) codes.Code { return codes.InvalidArgument }},
		{"header false", open, []string{SecurityHeader, "false"}, func(string) codes.Code { return codes.InvalidArgument }},
		{"header twice", open, []string{SecurityHeader, "true", SecurityHeader, "true"}, func(string) codes.Code { return codes.InvalidArgument }},
		{"header", open, []string{SecurityHeader, "true"}, wantOK},
		{"allowed uid", allowed, []string{SecurityHeader, "true"}, wantOK},
		{"uid not allowed", others, []string{SecurityHeader, "true"}, func(string) codes.Code { return codes.PermissionDenied }},
		{"uid not allowed, no header", others, nil, func(string) codes.Code { return codes.PermissionDenied }},
	}
	for _, tt := range tests {
		for method, call := range methods {
			t.Run(tt.name+"/"+method, func(t *testing.T) {
				t.Parallel()
				ctx := timeout(t)
				if tt.header != nil {
					ctx = metadata.AppendToOutgoingContext(ctx, tt.header...)
				}
				err := call(ctx, rawClient(t, tt.sock))
				if got, want := status.Code(err), tt.want(method); got != want {
					t.Errorf("code %v (%v), want %v", got, err, want)
				}
			})
		}
	}
}

// TestServeStops: open streams end with Unavailable when Serve's context
// ends, and the socket is removed.
func TestServeStops(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	src := &fakeSource{}
	src.rotate(pki.identity(t))
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen(t.Context(), sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Source: src})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	stream, err := rawClient(t, sock).FetchX509SVID(withHeader(timeout(t)), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("stream after stop: %v, want Unavailable", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestNewNeedsSource(t *testing.T) {
	t.Parallel()
	if _, err := New(Config{}); err == nil {
		t.Error("New without a Source succeeded")
	}
}
