package config

import (
	"strings"
	"testing"
	"time"
)

func TestValidateAttestors(t *testing.T) {
	t.Parallel()
	k8s := func() Attestor {
		return Attestor{Name: "k8s", Type: AttestorKubernetes, Issuer: "https://kubernetes.default.svc", Audience: "crank-ca",
			Allow: []ServiceAccountRule{{Namespace: "team-a", ServiceAccount: "*"}}}
	}
	tests := []struct {
		name   string
		mutate func(c *Config)
		want   []string
	}{
		{name: "kubernetes with defaults is valid", mutate: func(c *Config) { c.Provisioners[0].Attestors = []Attestor{k8s()} }},
		{name: "oidc with defaults is valid", mutate: func(c *Config) {
			c.Provisioners[0].Attestors = []Attestor{{Name: "ci", Type: AttestorOIDC, Issuer: "https://token.actions.example", Audience: "crank-ca", Worker: "ci-{claim:repository_id}"}}
		}},
		{name: "every field wrong", mutate: func(c *Config) {
			c.Provisioners[0].Attestors = []Attestor{
				{Name: "Bad", Type: AttestorKubernetes, Issuer: "http://k8s", KeySource: KeySourceJWKSURL, JWKSURL: "http://k8s/keys", MaxTokenAge: Dur(48 * time.Hour),
					Allow: []ServiceAccountRule{{Namespace: "Team", ServiceAccount: "a_b"}}, DNSTemplates: []string{"{pod}.x"}, Worker: "{sub}"},
				{Name: "x", Type: "saml", Issuer: "https://x", Audience: "a"},
				{Name: "x", Type: AttestorOIDC, Issuer: "https://y", Audience: "a", KeySource: KeySourceTokenReview, Worker: "{name}"},
			}
		}, want: []string{
			"provisioners[0].attestors[0].name: must be a DNS label",
			"provisioners[0].attestors[0].issuer: must be an https URL",
			"provisioners[0].attestors[0].audience: required",
			"provisioners[0].attestors[0].maxTokenAge: must be > 0 and at most 24h",
			"provisioners[0].attestors[0].jwksURL: must be an https URL",
			"provisioners[0].attestors[0].allow[0].namespace",
			"provisioners[0].attestors[0].allow[0].serviceAccount",
			"provisioners[0].attestors[0].dnsTemplates[0]: unknown placeholder {pod}",
			"provisioners[0].attestors[0].worker: only valid for attestor type \"oidc\"",
			"provisioners[0].attestors[1].type",
			"provisioners[0].attestors[2].name: duplicate attestor",
			"provisioners[0].attestors[2].tokenReview: required",
			"provisioners[0].attestors[2]: allow, dnsTemplates and tokenReview are only valid",
			"provisioners[0].attestors[2].worker: unknown placeholder {name}",
		}},
		{name: "template braces", mutate: func(c *Config) {
			a := k8s()
			a.DNSTemplates = []string{"}{namespace}.workers.{trustDomain}", "{namespace.workers.{trustDomain}"}
			c.Provisioners[0].Attestors = []Attestor{a}
		}, want: []string{
			`provisioners[0].attestors[0].dnsTemplates[0]: unmatched '}'`,
			`provisioners[0].attestors[0].dnsTemplates[1]: unclosed '{'`,
		}},
		{name: "attestors and maxBindingAge on acme", mutate: func(c *Config) {
			c.Provisioners[1].Attestors = []Attestor{k8s()}
			c.Provisioners[1].MaxBindingAge = Dur(time.Hour)
		}, want: []string{"provisioners[1].attestors: only valid", "provisioners[1].maxBindingAge: only valid"}},
		{name: "maxBindingAge too short", mutate: func(c *Config) { c.Provisioners[0].MaxBindingAge = Dur(time.Minute) },
			want: []string{"provisioners[0].maxBindingAge: must be at least 5m0s"}},
		{name: "kubernetes DNS names outside the denied namespace", mutate: func(c *Config) {
			a := k8s()
			a.DNSTemplates = []string{"{serviceAccount}.{namespace}.svc.{trustDomain}"}
			c.Provisioners[0].Attestors = []Attestor{a}
		}, want: []string{`provisioners[1].policy.deniedDNSSuffixes: must contain "svc.crank.internal"`}},
		{name: "admin ID in the kubernetes SPIFFE namespace", mutate: func(c *Config) {
			c.Provisioners[0].Attestors = []Attestor{k8s()}
			c.Admin.SPIFFEIDs = []string{"spiffe://crank.internal/ns/kube-system/sa/admin"}
		}, want: []string{`admin.spiffeIDs[0]: "spiffe://crank.internal/ns/kube-system/sa/admin" is inside the SPIFFE namespace`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default(InitOptions{})
			tt.mutate(c)
			c.ApplyDefaults()
			err := c.Validate()
			var got []string
			if err != nil {
				got = strings.Split(err.Error(), "\n")
			}
			if len(got) != len(tt.want) {
				t.Fatalf("Validate errors:\n%s\nwant %d errors:\n%s", strings.Join(got, "\n"), len(tt.want), strings.Join(tt.want, "\n"))
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(got[i], w) {
					t.Errorf("error %d = %q, want prefix %q", i, got[i], w)
				}
			}
		})
	}
}
