package provisioner_test

import (
	"net/netip"
	"testing"

	"github.com/crank-platform/crank-ca/provisioner"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// cmpOpts compares the value types with unexported fields by ==.
var cmpOpts = cmp.Options{cmpopts.EquateComparable(netip.Addr{}, spiffeid.ID{}), cmpopts.EquateEmpty()}

func defaultConfig() provisioner.IdentitiesConfig {
	return provisioner.IdentitiesConfig{
		TrustDomain:  "crank.internal",
		Pattern:      "[a-z0-9-]{1,63}",
		DNSTemplates: []string{"{worker}.workers.{trustDomain}"},
	}
}

func mustIdentities(t testing.TB, cfg provisioner.IdentitiesConfig) *provisioner.Identities {
	t.Helper()
	ids, err := provisioner.NewIdentities(cfg)
	if err != nil {
		t.Fatalf("NewIdentities: %v", err)
	}
	return ids
}

func mustID(t testing.TB, s string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromString(s)
	if err != nil {
		t.Fatalf("spiffeid.FromString(%q): %v", s, err)
	}
	return id
}

func mustKey(t testing.TB) *provisioner.TokenKey {
	t.Helper()
	k, err := provisioner.GenerateTokenKey()
	if err != nil {
		t.Fatalf("GenerateTokenKey: %v", err)
	}
	return k
}
