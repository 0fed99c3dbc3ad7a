package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-acme/lego/v4/acme"
)

// VerifyReport is the check, after a run, that the CA has a record of
// every certificate its clients received: a replica that answered and then
// lost what it wrote (a crash before commit, a store that acknowledged too
// early) shows here.
type VerifyReport struct {
	// Checked counts the certificates asked about.
	Checked int `json:"checked"`
	// Found counts those the CA knows (ARI renewalInfo 200).
	Found int `json:"found"`
	// Missing counts those it answered 404 for: received by a client,
	// unknown to the CA.
	Missing int `json:"missing"`
	// Unverified counts those with no clear answer (a transport error,
	// another status, the check's deadline).
	Unverified int `json:"unverified"`
	// Samples are the first few missing or unverified certIDs with why.
	Samples []string `json:"samples,omitempty"`
	// Skipped says why nothing was checked (e.g. the directory advertises
	// no renewalInfo, as stock step-ca's does not).
	Skipped string `json:"skipped,omitempty"`
}

const maxVerifySamples = 5

// verify asks the CA about every certID through the run's transport, so
// round-robin over the replicas with retries on connection errors.
func (r *runner) verify(ctx context.Context, certIDs []string) *VerifyReport {
	hc := &http.Client{Timeout: 30 * time.Second, Transport: ctxTransport{ctx: ctx, base: r.transport}}
	riURL, err := renewalInfoURL(ctx, hc, r.directoryURL())
	if err != nil {
		return &VerifyReport{Checked: len(certIDs), Unverified: len(certIDs), Skipped: err.Error()}
	}
	if riURL == "" {
		return &VerifyReport{Skipped: "the directory advertises no renewalInfo (ARI)"}
	}
	return checkCerts(ctx, hc, riURL, certIDs, r.cfg.Concurrency)
}

func (r *runner) directoryURL() string {
	return strings.TrimSuffix(r.cfg.URL, "/") + "/acme/" + r.cfg.Provisioner + "/directory"
}

// renewalInfoURL reads the renewalInfo URL from an ACME directory; "" when
// it has none.
func renewalInfoURL(ctx context.Context, hc *http.Client, dirURL string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, dirURL, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("bench: directory: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("bench: directory: HTTP %d", resp.StatusCode)
	}
	var dir acme.Directory
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&dir); err != nil {
		return "", fmt.Errorf("bench: directory: %w", err)
	}
	return dir.RenewalInfo, nil
}

// checkCerts sends GET riURL/<certID> for every certID from at most conc
// goroutines, until done or ctx ends: bounded by the count and the
// deadline.
func checkCerts(ctx context.Context, hc *http.Client, riURL string, certIDs []string, conc int) *VerifyReport {
	rep := &VerifyReport{Checked: len(certIDs)}
	var mu sync.Mutex
	note := func(id, why string, missing bool) {
		mu.Lock()
		defer mu.Unlock()
		if missing {
			rep.Missing++
		} else {
			rep.Unverified++
		}
		if len(rep.Samples) < maxVerifySamples {
			rep.Samples = append(rep.Samples, id+": "+why)
		}
	}
	next := make(chan string)
	var wg sync.WaitGroup
	for range max(1, min(conc, len(certIDs))) {
		wg.Go(func() {
			for id := range next {
				status, err := getStatus(ctx, hc, strings.TrimSuffix(riURL, "/")+"/"+id)
				switch {
				case err != nil:
					note(id, truncate(err.Error(), 200), false)
				case status == http.StatusOK:
					mu.Lock()
					rep.Found++
					mu.Unlock()
				case status == http.StatusNotFound:
					note(id, "404", true)
				default:
					note(id, fmt.Sprintf("HTTP %d", status), false)
				}
			}
		})
	}
	sent := 0
	for _, id := range certIDs {
		if ctx.Err() != nil {
			break
		}
		select {
		case next <- id:
			sent++
		case <-ctx.Done():
		}
	}
	close(next)
	wg.Wait()
	if left := len(certIDs) - sent; left > 0 {
		rep.Unverified += left
		rep.Samples = append(rep.Samples, fmt.Sprintf("%d certificates not asked about before the deadline", left))
	}
	return rep
}

func getStatus(ctx context.Context, hc *http.Client, u string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	return resp.StatusCode, nil
}
