package main

// `admin cert --renew`, and the warning every admin API command prints when
// the operator certificate it presents is about to expire.

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/pki"
)

// renewAdminCert replaces the certificate at certFile (default
// admin.certFile) and its key (default admin.keyFile) with a fresh pair for
// the same SPIFFE ID, issued from the local intermediate.
func renewAdminCert(cfgPath, certFile, keyFile string, lifetime time.Duration, stdout io.Writer) error {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	switch {
	case certFile == "":
		certFile = cfg.Resolve(cfg.Admin.CertFile)
		if keyFile == "" {
			keyFile = cfg.Resolve(cfg.Admin.KeyFile)
		}
	case keyFile == "" && strings.HasSuffix(certFile, ".crt"):
		keyFile = strings.TrimSuffix(certFile, ".crt") + ".key"
	case keyFile == "":
		return fmt.Errorf("%w: --admin-key is required with an --admin-cert not named *.crt", errUsage)
	}
	old, id, err := pki.ReadClientCert(certFile)
	if err != nil {
		return fmt.Errorf("admin cert --renew: %w", err)
	}
	// The same rule as issuing: an operator under /admin/, or an ID the
	// configuration lists as admin or controller.
	name := strings.TrimPrefix(id.Path(), "/admin/")
	isOperator := id.TrustDomain().Name() == cfg.TrustDomain && name != id.Path() && adminNameRE.MatchString(name)
	configured := slices.Contains(cfg.Admin.SPIFFEIDs, id.String()) ||
		slices.ContainsFunc(cfg.Admin.Controllers, func(c config.Controller) bool { return c.SPIFFEID == id.String() })
	if !isOperator && !configured {
		return fmt.Errorf("admin cert --renew: %s of %s is neither an operator (spiffe://%s/admin/NAME) nor in admin.spiffeIDs or admin.controllers of %s", id, certFile, cfg.TrustDomain, cfgPath)
	}
	ca, err := pki.Load(cfg.Resolve(cfg.PKI.RootCert), cfg.Resolve(cfg.PKI.IntermediateCert), cfg.Resolve(cfg.PKI.IntermediateKey))
	if err != nil {
		return err
	}
	leaf, err := pki.RenewClientCert(ca, certFile, keyFile, lifetime, time.Now())
	if err != nil {
		return fmt.Errorf("admin cert --renew: %w", err)
	}
	fmt.Fprintf(stdout, "Renewed the certificate for %s\n  old: valid until %s\n  new: valid until %s\n  certificate: %s\n  key:         %s\n",
		id, ts(old.NotAfter), ts(leaf.NotAfter), certFile, keyFile)
	return nil
}

// warnOperatorCert tells the operator, on w, that the certificate at path
// expires within pki.RenewClientBefore, and how to renew it. Unreadable
// files are left to the TLS client to report.
func warnOperatorCert(w io.Writer, path, cfgPath string, now time.Time) {
	cert, id, err := pki.ReadClientCert(path)
	if err != nil {
		return
	}
	due, left := pki.ClientCertDue(cert, now)
	if !due {
		return
	}
	when := fmt.Sprintf("expires in %s (%s)", roundDays(left), ts(cert.NotAfter))
	if left <= 0 {
		when = "expired at " + ts(cert.NotAfter)
	}
	fmt.Fprintf(w, "crank-ca: warning: the operator certificate %s (%s) %s; renew it with: crank-ca admin cert --config %s --renew --admin-cert %s\n", path, id, when, cfgPath, path)
}

// roundDays renders a duration of days as "9 days", shorter ones in hours.
func roundDays(d time.Duration) string {
	if d >= 48*time.Hour {
		return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	}
	return d.Round(time.Minute).String()
}
