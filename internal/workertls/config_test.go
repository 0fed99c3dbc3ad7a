package workertls

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/crank-platform/crank-ca/internal/testpki"
)

const (
	tdName    = "crank.internal"
	apiURI    = "spiffe://crank.internal/worker/api"
	dbURI     = "spiffe://crank.internal/worker/db"
	otherURI  = "spiffe://crank.internal/worker/other"
	foreignTD = "spiffe://other.example/worker/api"
)

var td = spiffeid.RequireTrustDomainFromString(tdName)

// outcome is what each side of one connection saw.
type outcome struct {
	server, client       tls.ConnectionState
	serverErr, clientErr error
}

func (o outcome) ok() bool { return o.serverErr == nil && o.clientErr == nil }

// connect makes one TLS connection over loopback and exchanges a byte each
// way, so that failures the server reports after the client's TLS 1.3
// handshake has already returned still surface on the client.
func connect(t *testing.T, serverCfg, clientCfg *tls.Config) outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })

	type side struct {
		cs  tls.ConnectionState
		err error
	}
	srvDone := make(chan side, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			srvDone <- side{err: err}
			return
		}
		defer raw.Close()
		_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
		c := tls.Server(raw, serverCfg)
		err = c.HandshakeContext(ctx)
		if err == nil {
			var b [1]byte
			if _, err = io.ReadFull(c, b[:]); err == nil {
				_, err = c.Write(b[:])
			}
		}
		srvDone <- side{c.ConnectionState(), err}
	}()

	var d tls.Dialer
	d.Config = clientCfg
	var o outcome
	conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err == nil {
		c := conn.(*tls.Conn)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		var b [1]byte
		if _, err = c.Write([]byte{42}); err == nil {
			_, err = io.ReadFull(c, b[:])
		}
		o.client = c.ConnectionState()
		_ = c.Close()
	}
	o.clientErr = err
	s := <-srvDone
	o.server, o.serverErr = s.cs, s.err
	return o
}

func serial(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	return cs.PeerCertificates[0].SerialNumber.String()
}

func TestMTLS(t *testing.T) {
	t.Parallel()
	ca := newCA(t, "crank root")
	otherCA := newCA(t, "impostor root")
	server := newSource(ca.issue(t, apiURI))
	// naive marks a client that presents its certificate but accepts any
	// server, so that a refusal can only come from the server under test.
	naive := &tls.Config{}

	tests := []struct {
		name       string
		serverAuth tlsconfig.Authorizer
		client     *tls.Config // nil: ClientConfig; naive: see below; else used as is
		clientID   string      // SPIFFE ID of the client's certificate
		clientCA   *testCA
		clientAuth tlsconfig.Authorizer
		wantOK     bool
		wantErr    string // substring of the server's error when refused
	}{
		{"same trust domain", AuthorizeID(spiffeid.RequireFromString(dbURI)), nil, dbURI, ca, AuthorizeID(spiffeid.RequireFromString(apiURI)), true, ""},
		{"member of accepts db", AuthorizeMemberOf(td), nil, dbURI, ca, AuthorizeMemberOf(td), true, ""},
		{"member of accepts other", AuthorizeMemberOf(td), nil, otherURI, ca, AuthorizeMemberOf(td), true, ""},
		{"one of", AuthorizeOneOf(spiffeid.RequireFromString(otherURI), spiffeid.RequireFromString(dbURI)), nil, dbURI, ca, AuthorizeAny(), true, ""},
		{"wrong ID refused by AuthorizeID", AuthorizeID(spiffeid.RequireFromString(dbURI)), nil, otherURI, ca, AuthorizeAny(), false, "unexpected ID"},
		{"not one of", AuthorizeOneOf(spiffeid.RequireFromString(dbURI)), nil, otherURI, ca, AuthorizeAny(), false, "unexpected ID"},
		{"other CA refused", AuthorizeMemberOf(td), naive, dbURI, otherCA, nil, false, "could not verify leaf certificate"},
		{"other trust domain refused even by AuthorizeAny", AuthorizeAny(), naive, foreignTD, ca, nil, false, `no trust bundle for trust domain "other.example"`},
		{"no client certificate refused", AuthorizeAny(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, "", nil, nil, false, "client didn't provide a certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clientCfg := tt.client
			var client *fakeSource
			switch clientCfg {
			case nil:
				client = newSource(tt.clientCA.issue(t, tt.clientID))
				clientCfg = ClientConfig(client, tt.clientAuth)
			case naive:
				id := tt.clientCA.issue(t, tt.clientID)
				clientCfg = &tls.Config{
					InsecureSkipVerify: true, //nolint:gosec // the test is about the server's checks
					Certificates:       []tls.Certificate{*id.TLSCertificate()},
					MinVersion:         tls.VersionTLS12,
				}
			}
			o := connect(t, ServerConfig(server, tt.serverAuth), clientCfg)
			if !tt.wantOK {
				if o.serverErr == nil || !strings.Contains(o.serverErr.Error(), tt.wantErr) {
					t.Errorf("server error = %v, want one containing %q", o.serverErr, tt.wantErr)
				}
				if o.clientErr == nil {
					t.Error("client completed a refused connection")
				}
				return
			}
			if !o.ok() {
				t.Fatalf("server err = %v, client err = %v", o.serverErr, o.clientErr)
			}
			got := []string{serial(o.server), serial(o.client)}
			want := []string{client.Current().Serial(), server.Current().Serial()}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("peer serials [server sees, client sees] (-want +got):\n%s", diff)
			}
			if o.server.Version < tls.VersionTLS12 {
				t.Errorf("version %x below TLS 1.2", o.server.Version)
			}
			peer, err := PeerID(&o.server)
			if err != nil || peer.String() != tt.clientID {
				t.Errorf("server PeerID = %v, %v; want %s", peer, err, tt.clientID)
			}
		})
	}
}

func TestClientAuthorizesServer(t *testing.T) {
	t.Parallel()
	ca, otherCA := newCA(t, "root"), newCA(t, "impostor")
	client := newSource(ca.issue(t, dbURI))
	tests := []struct {
		name    string
		server  *fakeSource
		authz   tlsconfig.Authorizer
		wantErr string // substring of the client's error; "" = success
	}{
		{"expected server", newSource(ca.issue(t, apiURI)), AuthorizeID(spiffeid.RequireFromString(apiURI)), ""},
		{"unexpected server ID", newSource(ca.issue(t, otherURI)), AuthorizeID(spiffeid.RequireFromString(apiURI)), "unexpected ID"},
		{"server from another CA", newSource(otherCA.issue(t, apiURI)), AuthorizeAny(), "could not verify leaf certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := connect(t, ServerConfig(tt.server, AuthorizeAny()), ClientConfig(client, tt.authz))
			if tt.wantErr == "" {
				if !o.ok() {
					t.Fatalf("server err = %v, client err = %v", o.serverErr, o.clientErr)
				}
				if id, err := PeerID(&o.client); err != nil || id.String() != apiURI {
					t.Errorf("client PeerID = %v, %v; want %s", id, err, apiURI)
				}
				return
			}
			if o.clientErr == nil || !strings.Contains(o.clientErr.Error(), tt.wantErr) {
				t.Errorf("client error = %v, want one containing %q", o.clientErr, tt.wantErr)
			}
		})
	}
}

func TestHotReload(t *testing.T) {
	t.Parallel()
	ca := newCA(t, "root")
	server := newSource(ca.issue(t, apiURI))
	client := newSource(ca.issue(t, dbURI))
	// Configs are built once, as a long-running worker would.
	serverCfg := ServerConfig(server, AuthorizeMemberOf(td))
	clientCfg := ClientConfig(client, AuthorizeMemberOf(td))

	check := func(step string) {
		t.Helper()
		o := connect(t, serverCfg, clientCfg)
		if !o.ok() {
			t.Fatalf("%s: server err = %v, client err = %v", step, o.serverErr, o.clientErr)
		}
		got := []string{serial(o.server), serial(o.client)}
		want := []string{client.Current().Serial(), server.Current().Serial()}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: peer serials [server sees, client sees] (-want +got):\n%s", step, diff)
		}
	}
	check("initial")
	old := server.Current().Serial()
	server.set(ca.issue(t, apiURI))
	check("server rotated")
	if server.Current().Serial() == old {
		t.Fatal("rotation did not change the serial")
	}
	client.set(ca.issue(t, dbURI))
	check("client rotated")

	// A change of roots (a new CA) on both sides also takes effect at once.
	newRoot := newCA(t, "new root")
	server.set(newRoot.issue(t, apiURI))
	if o := connect(t, serverCfg, clientCfg); o.clientErr == nil {
		t.Error("client accepted a server from a root it has not pinned")
	}
	client.set(newRoot.issue(t, dbURI))
	check("roots rotated")
}

func TestResumptionReverified(t *testing.T) {
	t.Parallel()
	ca := newCA(t, "root")
	server := newSource(ca.issue(t, apiURI))
	client := newSource(ca.issue(t, dbURI))
	serverCfg := ServerConfig(server, AuthorizeMemberOf(td))
	clientCfg := ClientConfig(client, AuthorizeMemberOf(td))
	clientCfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)

	if o := connect(t, serverCfg, clientCfg); !o.ok() || o.server.DidResume {
		t.Fatalf("first connection: resumed=%v server err=%v client err=%v", o.server.DidResume, o.serverErr, o.clientErr)
	}
	o := connect(t, serverCfg, clientCfg)
	if !o.ok() || !o.server.DidResume {
		t.Fatalf("second connection: resumed=%v server err=%v client err=%v", o.server.DidResume, o.serverErr, o.clientErr)
	}
	if id, err := PeerID(&o.server); err != nil || id.String() != dbURI {
		t.Errorf("PeerID on resumed connection = %v, %v; want %s", id, err, dbURI)
	}

	// The server moves to a new root; the client's session from the old root
	// must not get it in.
	server.set(newCA(t, "new root").issue(t, apiURI))
	o = connect(t, serverCfg, clientCfg)
	if o.serverErr == nil || !strings.Contains(o.serverErr.Error(), "resumed session") {
		t.Errorf("server error = %v, want a refused resumed session", o.serverErr)
	}
}

func TestNoIdentity(t *testing.T) {
	t.Parallel()
	ca := newCA(t, "root")
	empty := &fakeSource{}
	full := newSource(ca.issue(t, apiURI))

	o := connect(t, ServerConfig(empty, AuthorizeAny()), ClientConfig(full, AuthorizeAny()))
	if !errors.Is(o.serverErr, ErrNoIdentity) {
		t.Errorf("server without identity: err = %v, want ErrNoIdentity", o.serverErr)
	}
	o = connect(t, ServerConfig(full, AuthorizeAny()), ClientConfig(empty, AuthorizeAny()))
	if o.ok() {
		t.Error("client without identity connected")
	}
}

func TestHTTP(t *testing.T) {
	t.Parallel()
	ca := newCA(t, "root")
	server := newSource(ca.issue(t, apiURI))
	client := newSource(ca.issue(t, dbURI))

	url := testpki.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := PeerID(r.TLS)
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		_, _ = io.WriteString(w, id.String())
	}), ServerConfig(server, AuthorizeMemberOf(td)))

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ClientConfig(client, AuthorizeID(spiffeid.RequireFromString(apiURI)))}}
	t.Cleanup(hc.CloseIdleConnections)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(dbURI, string(body)); diff != "" {
		t.Errorf("peer ID seen by the handler (-want +got):\n%s", diff)
	}
	if got := serial(*resp.TLS); got != server.Current().Serial() {
		t.Errorf("server serial = %s, want %s", got, server.Current().Serial())
	}
}

func TestPeerID(t *testing.T) {
	t.Parallel()
	ca := newCA(t, "root")
	leaf := ca.issue(t, apiURI).Leaf()
	noURI := *leaf
	noURI.URIs = nil
	tests := []struct {
		name    string
		cs      *tls.ConnectionState
		want    string
		wantErr bool
	}{
		{"nil state", nil, "", true},
		{"no certificates", &tls.ConnectionState{}, "", true},
		{"spiffe leaf", &tls.ConnectionState{PeerCertificates: leafs(leaf)}, apiURI, false},
		{"no URI SAN", &tls.ConnectionState{PeerCertificates: leafs(&noURI)}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id, err := PeerID(tt.cs)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && id.String() != tt.want {
				t.Errorf("PeerID = %s, want %s", id, tt.want)
			}
		})
	}
	if _, err := PeerID(nil); !errors.Is(err, ErrNoPeerCertificate) {
		t.Errorf("PeerID(nil) = %v, want ErrNoPeerCertificate", err)
	}
}

func TestNilArgsPanic(t *testing.T) {
	t.Parallel()
	src := &fakeSource{}
	for name, f := range map[string]func(){
		"server nil source": func() { ServerConfig(nil, AuthorizeAny()) },
		"server nil authz":  func() { ServerConfig(src, nil) },
		"client nil source": func() { ClientConfig(nil, AuthorizeAny()) },
		"client nil authz":  func() { ClientConfig(src, nil) },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			f()
		})
	}
}
