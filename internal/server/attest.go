package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/attest"
	"github.com/crank-platform/crank-ca/internal/stepca"
	"github.com/crank-platform/crank-ca/internal/store"
	"github.com/crank-platform/crank-ca/provisioner"
)

// newAttest builds the /attest handler from the worker-attestation
// provisioners that have attestors.
func newAttest(cfg *config.Config, provs []stepca.Provisioner, key *provisioner.TokenKey, sca *stepca.CA, logger, audit *slog.Logger, now func() time.Time) (*attest.Handler, error) {
	var (
		aps  []attest.Provisioner
		errs []error
	)
	for i := range cfg.Provisioners {
		p := &cfg.Provisioners[i]
		if len(p.Attestors) == 0 {
			continue
		}
		var ids *provisioner.Identities
		for _, sp := range provs {
			if sp.Name == p.Name {
				ids = sp.Identities
			}
		}
		atts, err := Attestors(cfg, p, ids, now)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		perMinute := config.DefaultNewAccountsPerMinute
		if p.Limits != nil {
			perMinute = p.Limits.NewAccountsPerMinute
		}
		aps = append(aps, attest.Provisioner{Name: p.Name, Attestors: atts, AttemptsPerMinute: perMinute})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	st := sca.Store()
	return attest.New(attest.Deps{
		Provisioners: aps,
		Mint:         key.Mint,
		SpendJTI: func(ctx context.Context, issuer, jti string, expires time.Time) error {
			err := st.SpendJTI(ctx, issuer, jti, expires)
			if errors.Is(err, store.ErrTokenUsed) {
				return fmt.Errorf("%w: %w", attest.ErrReplay, err)
			}
			return err
		},
		Disabled: func(ctx context.Context, prov, worker string) (bool, error) {
			ws, err := st.Worker(ctx, prov, worker)
			return ws.Disabled, err
		},
		Directory: func(r *http.Request, prov string) string {
			return "https://" + r.Host + "/acme/" + prov + "/directory"
		},
		Logger: logger,
		Audit:  audit,
		Now:    now,
	})
}
