// Command spiffeworker is a Go worker that knows nothing of crank-ca: it
// gets its identity from the SPIFFE Workload API with go-spiffe
// (workloadapi.NewX509Source, address from $SPIFFE_ENDPOINT_SOCKET or
// -socket), serves mTLS with spiffetls/tlsconfig on a loopback port, and
// calls itself over mTLS every -interval with a fresh connection (so every
// call handshakes with the SVID current at that moment), until SIGTERM or
// SIGINT.
//
// It writes JSON lines to -events: {"event":"svid"} with the serial and the
// time on every update the source receives, {"event":"fail"} for each failed
// call, and on exit {"event":"done"} with the number of calls, failures and
// successful calls per serial. The integration tests build and run it as a
// separate process.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

type event struct {
	Event   string         `json:"event"`
	Time    time.Time      `json:"time"`
	Serial  string         `json:"serial,omitempty"`
	ID      string         `json:"id,omitempty"`
	Addr    string         `json:"addr,omitempty"`
	Err     string         `json:"err,omitempty"`
	Calls   int            `json:"calls,omitempty"`
	Failed  int            `json:"failed,omitempty"`
	Serials map[string]int `json:"serials,omitempty"`
}

type recorder struct {
	mu  sync.Mutex
	out io.Writer
}

func (r *recorder) emit(e event) {
	e.Time = time.Now()
	b, _ := json.Marshal(e)
	r.mu.Lock()
	defer r.mu.Unlock()
	_, _ = r.out.Write(append(b, '\n'))
}

func main() {
	socket := flag.String("socket", "", "Workload API address (default $SPIFFE_ENDPOINT_SOCKET)")
	events := flag.String("events", "", "file to append JSON events to (required)")
	interval := flag.Duration("interval", 20*time.Millisecond, "time between calls")
	flag.Parse()
	f, err := os.OpenFile(*events, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	rec := &recorder{out: f}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, rec, *socket, *interval); err != nil {
		rec.emit(event{Event: "error", Err: err.Error()})
		log.Fatal(err)
	}
}

func run(ctx context.Context, rec *recorder, socket string, interval time.Duration) error {
	var opts []workloadapi.X509SourceOption
	if socket != "" {
		opts = append(opts, workloadapi.WithClientOptions(workloadapi.WithAddr(socket)))
	}
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	source, err := workloadapi.NewX509Source(startCtx, opts...)
	if err != nil {
		return fmt.Errorf("X509Source: %w", err)
	}
	defer source.Close()
	svid, err := source.GetX509SVID()
	if err != nil {
		return err
	}
	self := svid.ID
	report := func() {
		if s, err := source.GetX509SVID(); err == nil {
			rec.emit(event{Event: "svid", Serial: s.Certificates[0].SerialNumber.String(), ID: s.ID.String()})
		}
	}
	report()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-source.Updated():
				report()
			}
		}
	}()

	// The server answers with the serial of the client certificate it saw.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, r.TLS.PeerCertificates[0].SerialNumber.String())
		}),
		TLSConfig:         tlsconfig.MTLSServerConfig(source, source, tlsconfig.AuthorizeMemberOf(self.TrustDomain())),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	defer srv.Close()
	rec.emit(event{Event: "ready", Addr: ln.Addr().String(), ID: self.String()})

	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   tlsconfig.MTLSClientConfig(source, source, tlsconfig.AuthorizeID(self)),
			DisableKeepAlives: true,
		},
	}
	calls, failed, serials := 0, 0, map[string]int{}
	url := "https://" + ln.Addr().String() + "/"
	for {
		select {
		case <-ctx.Done():
			rec.emit(event{Event: "done", Calls: calls, Failed: failed, Serials: serials})
			return nil
		case <-time.After(interval):
		}
		calls++
		serial, err := call(ctx, client, url, self)
		if err != nil {
			if ctx.Err() != nil {
				calls--
				continue
			}
			failed++
			rec.emit(event{Event: "fail", Err: err.Error()})
			continue
		}
		serials[serial]++
	}
}

func call(ctx context.Context, c *http.Client, url string, self spiffeid.ID) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	// The server's certificate was authorized as self by the client config;
	// check the connection really was mutual TLS with a certificate.
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		return "", errors.New("no TLS")
	}
	return string(b), nil
}
