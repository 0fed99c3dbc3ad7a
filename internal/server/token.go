package server

import (
	"errors"
	"fmt"
	"time"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/provisioner"
)

// Lifetimes of EAB credentials for ordinary ACME provisioners, which have no
// joinTokens settings: a person registers once, soon after receiving them.
const (
	eabDefaultTTL = 24 * time.Hour
	eabMaxTTL     = 30 * 24 * time.Hour
)

// TokenRequest asks for a join token (worker set) or plain EAB credentials
// for an ACME provisioner that requires EAB (worker empty).
type TokenRequest struct {
	// Provisioner defaults to the first worker-attestation provisioner.
	Provisioner string
	Worker      string
	// TTL defaults to the provisioner's joinTokens.defaultTTL.
	TTL time.Duration
	Now time.Time
}

// MintToken mints a token from the configuration and the token key file
// alone: it needs no store, so it works while `serve` holds the embedded
// store's lock. Single use is enforced by the server when the token binds.
func MintToken(cfg *config.Config, req TokenRequest) (provisioner.Token, error) {
	key, err := LoadTokenKey(cfg)
	if err != nil {
		return provisioner.Token{}, err
	}
	return mintToken(cfg, key, req)
}

// mintToken mints with a key already loaded (the running server's).
func mintToken(cfg *config.Config, key *provisioner.TokenKey, req TokenRequest) (provisioner.Token, error) {
	p, err := tokenProvisioner(cfg, req.Provisioner)
	if err != nil {
		return provisioner.Token{}, err
	}
	def, max := eabDefaultTTL, eabMaxTTL
	var dns, ips []string
	switch p.Type {
	case config.TypeWorkerAttestation:
		if req.Worker == "" {
			return provisioner.Token{}, fmt.Errorf("worker: required for provisioner %q", p.Name)
		}
		ids, err := Identities(cfg, p)
		if err != nil {
			return provisioner.Token{}, err
		}
		id, err := ids.Lookup(req.Worker)
		if err != nil {
			return provisioner.Token{}, fmt.Errorf("worker: %w", err)
		}
		dns = id.DNSNames
		for _, ip := range id.IPs {
			ips = append(ips, ip.String())
		}
		if p.JoinTokens != nil {
			def, max = p.JoinTokens.DefaultTTL.Duration, p.JoinTokens.MaxTTL.Duration
		}
	default:
		if !p.RequireEAB {
			return provisioner.Token{}, fmt.Errorf("provisioner %q does not require EAB; ACME clients register without credentials", p.Name)
		}
		if req.Worker != "" {
			return provisioner.Token{}, fmt.Errorf("worker: provisioner %q is an ordinary ACME provisioner, not a worker provisioner", p.Name)
		}
	}
	ttl := req.TTL
	if ttl == 0 {
		ttl = def
	}
	if ttl <= 0 || ttl > max {
		return provisioner.Token{}, fmt.Errorf("ttl: %s is outside (0, %s]", ttl, max)
	}
	now := req.Now
	if now.IsZero() {
		now = time.Now()
	}
	return key.Mint(provisioner.TokenClaims{Provisioner: p.Name, Worker: req.Worker, ExpiresAt: now.Add(ttl), DNSNames: dns, IPs: ips})
}

func tokenProvisioner(cfg *config.Config, name string) (*config.Provisioner, error) {
	if name != "" {
		p, ok := cfg.Provisioner(name)
		if !ok {
			return nil, fmt.Errorf("provisioner: no provisioner named %q", name)
		}
		return p, nil
	}
	for i := range cfg.Provisioners {
		if cfg.Provisioners[i].Type == config.TypeWorkerAttestation {
			return &cfg.Provisioners[i], nil
		}
	}
	return nil, errors.New("provisioner: the configuration has no worker-attestation provisioner")
}
