package worker

import (
	"encoding/json"
	"net/http"

	"github.com/crank-platform/crank-ca/internal/workertls"
)

// Greeting is the reference worker's answer: who called, and with which
// certificate, so that tests and operators can watch rotations from the
// outside.
type Greeting struct {
	Message      string `json:"message"`
	Caller       string `json:"caller"`
	CallerSerial string `json:"callerSerial"`
	Server       string `json:"server"`
	ServerSerial string `json:"serverSerial"`
}

// Hello is the reference worker's handler: a greeting naming the caller's
// SPIFFE ID (authorized during the handshake).
func (w *Worker) Hello() http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		peer, err := workertls.PeerID(r.TLS)
		if err != nil {
			http.Error(rw, "no verified peer", http.StatusUnauthorized)
			return
		}
		id := w.agent.Current()
		g := Greeting{
			Message:      "hello " + peer.String() + ", this is " + id.SPIFFEID.String(),
			Caller:       peer.String(),
			CallerSerial: r.TLS.PeerCertificates[0].SerialNumber.String(),
			Server:       id.SPIFFEID.String(),
			ServerSerial: id.Serial(),
		}
		rw.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(rw).Encode(g)
	})
}
