package server

import (
	"context"
	"errors"
	"io/fs"
	"time"

	"github.com/crank-platform/crank-ca/internal/pki"
)

// opCertCheckEvery is how often serve looks at the operator certificate.
const opCertCheckEvery = 24 * time.Hour

// watchOperatorCert warns in the log, at start and then daily until ctx is
// done, when the operator certificate (admin.certFile of the current
// configuration) expires within pki.RenewClientBefore: it is not revocable
// and expires silently otherwise, locking operators out of the admin API.
// A missing file is normal (the certificate lives on an operator's machine)
// and logged at debug only.
func (s *Server) watchOperatorCert(ctx context.Context) {
	t := time.NewTicker(opCertCheckEvery)
	defer t.Stop()
	for {
		s.checkOperatorCert()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) checkOperatorCert() {
	cfg := s.current().cfg
	path := cfg.Resolve(cfg.Admin.CertFile)
	cert, id, err := pki.ReadClientCert(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.log.Debug("no operator certificate on this machine to check", "file", path)
		return
	case err != nil:
		s.log.Warn("cannot check the operator certificate", "file", path, "err", err)
		return
	}
	due, left := pki.ClientCertDue(cert, s.now())
	if !due {
		return
	}
	msg := "the operator certificate expires soon; renew it with crank-ca admin cert --renew"
	if left <= 0 {
		msg = "the operator certificate has expired; renew it with crank-ca admin cert --renew"
	}
	s.log.Warn(msg, "file", path, "spiffeID", id.String(), "notAfter", cert.NotAfter.UTC(), "daysLeft", int(left/(24*time.Hour)))
}
