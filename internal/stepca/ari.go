package stepca

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/smallstep/certificates/acme"
	"github.com/smallstep/certificates/api/render"

	"github.com/crank-platform/crank-ca/internal/ari"
	"github.com/crank-platform/crank-ca/internal/store"
)

// renewalInfoPath is the ARI resource under a provisioner's directory. The
// directory advertises it without a trailing slash, as RFC 9773 asks.
const renewalInfoPath = "renewal-info"

// renewalInfo answers GET <renewalInfo>/<certID> (RFC 9773 section 4.2):
// unauthenticated, 200 with the suggested window and Retry-After for every
// certificate this CA issued, 400 for a malformed certID, 404 for an unknown
// certificate. A revoked certificate's window is now.
func (c *CA) renewalInfo(w http.ResponseWriter, r *http.Request) {
	id, err := ari.ParseCertID(chi.URLParam(r, "certID"))
	if err != nil {
		render.Error(w, r, acme.NewDetailedError(acme.ErrorMalformedType, "%v", err))
		return
	}
	serial := id.Serial.String()
	rec, err := c.store.Cert(r.Context(), serial)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !strings.EqualFold(rec.AKI, hex.EncodeToString(id.AKI))) {
		e := acme.NewDetailedError(acme.ErrorMalformedType, "no certificate with this certID was issued here")
		e.Status = http.StatusNotFound
		render.Error(w, r, e)
		return
	}
	if err != nil {
		render.Error(w, r, acme.WrapErrorISE(err, "error reading certificate %s", serial))
		return
	}
	renewNow := rec.RenewNow
	if renewNow.IsZero() {
		revoked := !rec.RevokedAt.IsZero()
		if !revoked {
			// ACME revokeCert goes through smallstep, not crank-ca's record.
			revoked, _ = c.auth.IsRevoked(serial)
		}
		if revoked {
			renewNow = c.now()
		}
	}
	win := c.ari.Window(serial, rec.Start(), rec.NotAfter, renewNow)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Retry-After", strconv.Itoa(int(win.RetryAfter/time.Second)))
	_ = json.NewEncoder(w).Encode(map[string]any{
		"suggestedWindow": map[string]string{
			"start": win.Start.UTC().Format(time.RFC3339),
			"end":   win.End.UTC().Format(time.RFC3339),
		},
	})
}

// directoryWithARI serves smallstep's directory with renewalInfo added.
func (c *CA) directoryWithARI(next http.Handler, w http.ResponseWriter, r *http.Request) {
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r)
	res := rec.Result()
	body := rec.Body.Bytes()
	if res.StatusCode == http.StatusOK && r.Method == http.MethodGet {
		var dir map[string]any
		if json.Unmarshal(body, &dir) == nil {
			if na, ok := dir["newAccount"].(string); ok {
				dir["renewalInfo"] = strings.TrimSuffix(na, "new-account") + renewalInfoPath
				if b, err := json.Marshal(dir); err == nil {
					body = b
				}
			}
		}
	}
	for k, v := range res.Header {
		w.Header()[k] = v
	}
	w.Header().Del("Content-Length")
	w.WriteHeader(res.StatusCode)
	_, _ = w.Write(bytes.TrimSpace(body))
}

// isDirectory reports whether path is /acme/<provisioner>/directory.
func isDirectory(path string) bool {
	rest, ok := strings.CutPrefix(path, "/acme/")
	if !ok {
		return false
	}
	_, last, ok := strings.Cut(rest, "/")
	return ok && last == "directory"
}
