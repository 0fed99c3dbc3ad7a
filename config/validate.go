package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Minimums that keep periodic work from spinning.
const (
	MinServerCertLifetime = 5 * time.Minute
	MinRetentionInterval  = time.Minute
	// MaxIdentifiersPerOrder is the ceiling of limits.maxIdentifiersPerOrder.
	MaxIdentifiersPerOrder = 1000
)

// problems collects FieldErrors so Validate can report all of them.
type problems []error

func (ps *problems) addf(path, format string, args ...any) {
	*ps = append(*ps, &FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
}

// Validate checks the configuration after ApplyDefaults and returns every
// problem joined with errors.Join, each a *FieldError naming the JSON path
// of the field. It is purely static: it reads no files, so a configuration
// can be validated before its key material exists.
func (c *Config) Validate() error {
	var ps problems
	c.validateServer(&ps)
	c.validateStorage(&ps)
	c.validateOperations(&ps)
	for i := range c.Provisioners {
		c.Provisioners[i].validate(&ps, fmt.Sprintf("provisioners[%d]", i))
	}
	if len(c.Provisioners) == 0 {
		ps.addf("provisioners", "at least one provisioner is required")
	}
	seen := make(map[string]int)
	for i, p := range c.Provisioners {
		if j, dup := seen[p.Name]; dup && p.Name != "" {
			ps.addf(fmt.Sprintf("provisioners[%d].name", i), "duplicate name %q (also provisioners[%d])", p.Name, j)
			continue
		}
		seen[p.Name] = i
	}
	c.validateNamespaces(&ps)
	return errors.Join(ps...)
}

func (c *Config) validateServer(ps *problems) {
	if err := checkHostPort(c.Listen); err != nil {
		ps.addf("listen", "%v", err)
	}
	if len(c.DNSNames) == 0 {
		ps.addf("dnsNames", "at least one name is required")
	}
	checkNames(ps, "dnsNames", c.DNSNames)
	if err := checkTrustDomain(c.TrustDomain); err != nil {
		ps.addf("trustDomain", "%v", err)
	}
	requirePath(ps, "pki.rootCert", c.PKI.RootCert)
	requirePath(ps, "pki.intermediateCert", c.PKI.IntermediateCert)
	requirePath(ps, "pki.intermediateKey", c.PKI.IntermediateKey)
	if c.PKI.ServerCertLifetime.Duration < MinServerCertLifetime {
		ps.addf("pki.serverCertLifetime", "must be at least %v", MinServerCertLifetime)
	}
	requirePath(ps, "tokenKeyFile", c.TokenKeyFile)
	if c.Retention.ExpiredCertificates.Duration < 0 {
		ps.addf("retention.expiredCertificates", "must not be negative")
	}
	if c.Retention.Interval.Duration < MinRetentionInterval {
		ps.addf("retention.interval", "must be at least %v", MinRetentionInterval)
	}
	if c.Retention.UnusedAccounts.Duration < MinRetentionInterval {
		ps.addf("retention.unusedAccounts", "must be at least %v", MinRetentionInterval)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		ps.addf("log.level", "must be one of debug, info, warn, error; got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		ps.addf("log.format", "must be json or text; got %q", c.Log.Format)
	}
}

func (c *Config) validateStorage(ps *problems) {
	s := c.Storage
	switch s.Type {
	case StorageBolt:
		requirePath(ps, "storage.path", s.Path)
		if s.DSN != "" {
			ps.addf("storage.dsn", "only valid for storage type %q", StoragePostgreSQL)
		}
		if s.MaxConns != 0 {
			ps.addf("storage.maxConns", "only valid for storage type %q", StoragePostgreSQL)
		}
	case StoragePostgreSQL:
		if s.Path != "" {
			ps.addf("storage.path", "only valid for storage type %q", StorageBolt)
		}
		if s.DSN == "" {
			ps.addf("storage.dsn", "required for storage type %q", StoragePostgreSQL)
		} else if err := checkDSN(s.DSN); err != nil {
			ps.addf("storage.dsn", "%v", err)
		}
		if s.MaxConns < 1 || s.MaxConns > 1000 {
			ps.addf("storage.maxConns", "must be 1 to 1000; got %d", s.MaxConns)
		}
	default:
		ps.addf("storage.type", "must be %q or %q; got %q", StorageBolt, StoragePostgreSQL, s.Type)
	}
}

func (p *Provisioner) validate(ps *problems, path string) {
	if !isDNSLabel(p.Name) {
		ps.addf(path+".name", "must be a DNS label ([a-z0-9], '-' inside, at most 63); got %q", p.Name)
	}
	switch p.Type {
	case TypeWorkerAttestation:
		p.validateWorker(ps, path)
	case TypeACME:
		p.validateACME(ps, path)
	default:
		// Type-specific rules (and claims defaults) are unknown, so
		// checking further would only produce noise.
		ps.addf(path+".type", "must be %q or %q; got %q", TypeWorkerAttestation, TypeACME, p.Type)
		return
	}
	if l := p.Limits; l != nil {
		for _, f := range []struct {
			name string
			v    int
		}{
			{"maxIdentifiersPerOrder", l.MaxIdentifiersPerOrder},
			{"maxPendingOrdersPerAccount", l.MaxPendingOrdersPerAccount},
			{"newAccountsPerMinute", l.NewAccountsPerMinute},
			{"newOrdersPerMinute", l.NewOrdersPerMinute},
		} {
			if f.v < 1 {
				ps.addf(path+".limits."+f.name, "must be at least 1; got %d", f.v)
			}
		}
		if l.MaxIdentifiersPerOrder > MaxIdentifiersPerOrder {
			ps.addf(path+".limits.maxIdentifiersPerOrder", "must be at most %d; got %d", MaxIdentifiersPerOrder, l.MaxIdentifiersPerOrder)
		}
	}
	cl := p.Claims
	switch {
	case cl.MinCertDuration.Duration <= 0:
		ps.addf(path+".claims.minCertDuration", "must be > 0")
	case cl.DefaultCertDuration.Duration < cl.MinCertDuration.Duration:
		ps.addf(path+".claims.defaultCertDuration", "must be >= minCertDuration (%v)", cl.MinCertDuration.Duration)
	}
	if cl.MaxCertDuration.Duration < cl.DefaultCertDuration.Duration {
		ps.addf(path+".claims.maxCertDuration", "must be >= defaultCertDuration (%v)", cl.DefaultCertDuration.Duration)
	}
}

func (p *Provisioner) validateWorker(ps *problems, path string) {
	onlyFor := func(field string) {
		ps.addf(path+"."+field, "only valid for provisioner type %q", TypeACME)
	}
	if len(p.Challenges) > 0 {
		onlyFor("challenges")
	}
	if p.RequireEAB {
		onlyFor("requireEAB")
	}
	if p.Policy != nil {
		onlyFor("policy")
	}
	if p.ValidationPorts != nil {
		onlyFor("validationPorts")
	}
	if p.Egress != nil {
		onlyFor("egress")
	}

	if p.Workers == nil && len(p.Identities) == 0 {
		ps.addf(path, "a %s provisioner needs \"workers\", \"identities\" or both", TypeWorkerAttestation)
	}
	if w := p.Workers; w != nil {
		wp := path + ".workers"
		if w.Pattern == "" {
			ps.addf(wp+".pattern", "required")
		} else if _, err := regexp.Compile("^(?:" + w.Pattern + ")$"); err != nil {
			ps.addf(wp+".pattern", "invalid regexp: %v", err)
		}
		for i, t := range w.DNSTemplates {
			if err := checkTemplate(t); err != nil {
				ps.addf(fmt.Sprintf("%s.dnsTemplates[%d]", wp, i), "%v", err)
			}
		}
		checkIPs(ps, wp+".ips", w.IPs)
		if len(w.DNSTemplates) == 0 && len(w.IPs) == 0 {
			// An ACME order needs at least one identifier.
			ps.addf(wp, "needs at least one dnsTemplate or ip")
		}
		if err := checkTemplate(w.SPIFFEIDTemplate); err != nil {
			ps.addf(wp+".spiffeIDTemplate", "%v", err)
		} else if !strings.HasPrefix(w.SPIFFEIDTemplate, "spiffe://") {
			ps.addf(wp+".spiffeIDTemplate", "must start with \"spiffe://\"")
		}
	}
	seen := make(map[string]int)
	for i, id := range p.Identities {
		ip := fmt.Sprintf("%s.identities[%d]", path, i)
		if !isDNSLabel(id.Name) {
			ps.addf(ip+".name", "must be a DNS label ([a-z0-9], '-' inside, at most 63); got %q", id.Name)
		} else if j, dup := seen[id.Name]; dup {
			ps.addf(ip+".name", "duplicate identity %q (also identities[%d])", id.Name, j)
		} else {
			seen[id.Name] = i
		}
		checkNames(ps, ip+".dnsNames", id.DNSNames)
		checkIPs(ps, ip+".ips", id.IPs)
		if len(id.DNSNames) == 0 && len(id.IPs) == 0 {
			ps.addf(ip, "needs at least one dnsName or ip")
		}
		if id.SPIFFEID != "" && !strings.HasPrefix(id.SPIFFEID, "spiffe://") {
			ps.addf(ip+".spiffeID", "must start with \"spiffe://\"")
		}
	}
	if p.MaxBindingAge.Duration < 5*time.Minute {
		ps.addf(path+".maxBindingAge", "must be at least 5m0s")
	}
	seenAttestor := make(map[string]int)
	for i := range p.Attestors {
		ap := fmt.Sprintf("%s.attestors[%d]", path, i)
		if j, dup := seenAttestor[p.Attestors[i].Name]; dup {
			ps.addf(ap+".name", "duplicate attestor %q (also attestors[%d])", p.Attestors[i].Name, j)
		}
		seenAttestor[p.Attestors[i].Name] = i
		p.Attestors[i].validate(ps, ap)
	}
	if jt := p.JoinTokens; jt != nil {
		if jt.DefaultTTL.Duration <= 0 {
			ps.addf(path+".joinTokens.defaultTTL", "must be > 0")
		}
		if jt.MaxTTL.Duration < jt.DefaultTTL.Duration {
			ps.addf(path+".joinTokens.maxTTL", "must be >= defaultTTL (%v)", jt.DefaultTTL.Duration)
		}
	}
}

func (p *Provisioner) validateACME(ps *problems, path string) {
	onlyFor := func(field string) {
		ps.addf(path+"."+field, "only valid for provisioner type %q", TypeWorkerAttestation)
	}
	if p.Workers != nil {
		onlyFor("workers")
	}
	if len(p.Identities) > 0 {
		onlyFor("identities")
	}
	if p.JoinTokens != nil {
		onlyFor("joinTokens")
	}
	if len(p.Attestors) > 0 {
		onlyFor("attestors")
	}
	if p.MaxBindingAge.Duration != 0 {
		onlyFor("maxBindingAge")
	}

	seen := make(map[string]bool)
	for i, ch := range p.Challenges {
		cp := fmt.Sprintf("%s.challenges[%d]", path, i)
		switch ch {
		case ChallengeHTTP01, ChallengeTLSALPN01, ChallengeDNS01:
		default:
			ps.addf(cp, "must be one of %s; got %q", strings.Join(AllChallenges(), ", "), ch)
			continue
		}
		if seen[ch] {
			ps.addf(cp, "duplicate challenge %q", ch)
		}
		seen[ch] = true
	}

	pol := p.Policy
	if pol == nil || (!pol.AllowAnyDNS && len(pol.AllowedDNSSuffixes) == 0 && len(pol.AllowedIPRanges) == 0) {
		ps.addf(path+".policy", "must allow something: set allowedDNSSuffixes, allowAnyDNS or allowedIPRanges")
	}
	if pol != nil {
		if pol.AllowAnyDNS && len(pol.AllowedDNSSuffixes) > 0 {
			ps.addf(path+".policy.allowedDNSSuffixes", "has no effect together with allowAnyDNS; remove one")
		}
		checkSuffixes(ps, path+".policy.allowedDNSSuffixes", pol.AllowedDNSSuffixes)
		checkSuffixes(ps, path+".policy.deniedDNSSuffixes", pol.DeniedDNSSuffixes)
		checkCIDRs(ps, path+".policy.allowedIPRanges", pol.AllowedIPRanges)
	}
	if e := p.Egress; e != nil {
		if len(e.AllowedIPRanges) == 0 {
			ps.addf(path+".egress.allowedIPRanges", "must not be empty when egress is set")
		}
		checkCIDRs(ps, path+".egress.allowedIPRanges", e.AllowedIPRanges)
	}

	if v := p.ValidationPorts; v != nil {
		if v.HTTP01 < 1 || v.HTTP01 > 65535 {
			ps.addf(path+".validationPorts.http01", "must be a port 1-65535; got %d", v.HTTP01)
		}
		if v.TLSALPN01 < 1 || v.TLSALPN01 > 65535 {
			ps.addf(path+".validationPorts.tlsalpn01", "must be a port 1-65535; got %d", v.TLSALPN01)
		}
	}
}

func (a *Attestor) validate(ps *problems, path string) {
	if !isDNSLabel(a.Name) {
		ps.addf(path+".name", "must be a DNS label; got %q", a.Name)
	}
	if u, err := url.Parse(a.Issuer); err != nil || u.Scheme != "https" || u.Host == "" {
		ps.addf(path+".issuer", "must be an https URL; got %q", a.Issuer)
	}
	if a.Audience == "" {
		ps.addf(path+".audience", "required (e.g. \"crank-ca\")")
	}
	if a.MaxTokenAge.Duration <= 0 || a.MaxTokenAge.Duration > 24*time.Hour {
		ps.addf(path+".maxTokenAge", "must be > 0 and at most 24h")
	}
	switch a.KeySource {
	case KeySourceDiscovery, KeySourceTokenReview:
		if a.JWKSURL != "" || a.JWKSFile != "" {
			ps.addf(path+".keySource", "%q takes neither jwksURL nor jwksFile", a.KeySource)
		}
	case KeySourceJWKSURL:
		if u, err := url.Parse(a.JWKSURL); err != nil || u.Scheme != "https" || u.Host == "" {
			ps.addf(path+".jwksURL", "must be an https URL with keySource %q", KeySourceJWKSURL)
		}
		if a.JWKSFile != "" {
			ps.addf(path+".jwksFile", "only with keySource %q", KeySourceJWKSFile)
		}
	case KeySourceJWKSFile:
		requirePath(ps, path+".jwksFile", a.JWKSFile)
		if a.JWKSURL != "" {
			ps.addf(path+".jwksURL", "only with keySource %q", KeySourceJWKSURL)
		}
	default:
		ps.addf(path+".keySource", "must be one of discovery, jwksURL, jwksFile, tokenReview; got %q", a.KeySource)
	}
	if a.KeySource == KeySourceTokenReview && a.TokenReview == nil {
		ps.addf(path+".tokenReview", "required with keySource %q", KeySourceTokenReview)
	}
	switch a.Type {
	case AttestorKubernetes:
		if len(a.Allow) == 0 {
			ps.addf(path+".allow", "list the namespaces and service accounts that may attest")
		}
		for i, r := range a.Allow {
			if !isDNSLabel(r.Namespace) {
				ps.addf(fmt.Sprintf("%s.allow[%d].namespace", path, i), "must be a namespace name; got %q", r.Namespace)
			}
			if r.ServiceAccount != "*" && checkDNSName(r.ServiceAccount) != nil {
				ps.addf(fmt.Sprintf("%s.allow[%d].serviceAccount", path, i), "must be a service account name or \"*\"; got %q", r.ServiceAccount)
			}
		}
		for i, t := range a.DNSTemplates {
			if err := checkPlaceholders(t, "namespace", "serviceAccount", "trustDomain"); err != nil {
				ps.addf(fmt.Sprintf("%s.dnsTemplates[%d]", path, i), "%v", err)
			}
		}
		if tr := a.TokenReview; tr != nil {
			if u, err := url.Parse(tr.URL); err != nil || u.Scheme != "https" || u.Host == "" {
				ps.addf(path+".tokenReview.url", "must be an https URL; got %q", tr.URL)
			}
			requirePath(ps, path+".tokenReview.tokenFile", tr.TokenFile)
		}
		if a.Worker != "" {
			ps.addf(path+".worker", "only valid for attestor type %q", AttestorOIDC)
		}
	case AttestorOIDC:
		if len(a.Allow) > 0 || len(a.DNSTemplates) > 0 || a.TokenReview != nil || a.KeySource == KeySourceTokenReview {
			ps.addf(path, "allow, dnsTemplates and tokenReview are only valid for attestor type %q", AttestorKubernetes)
		}
		if err := checkPlaceholders(a.Worker, "sub", "claim:*"); err != nil {
			ps.addf(path+".worker", "%v", err)
		}
	default:
		ps.addf(path+".type", "must be %q or %q; got %q", AttestorKubernetes, AttestorOIDC, a.Type)
	}
}

// checkSuffixes accepts DNS names with an optional leading dot, without
// duplicates.
func checkSuffixes(ps *problems, path string, suffixes []string) {
	seen := make(map[string]bool)
	for i, s := range suffixes {
		sp := fmt.Sprintf("%s[%d]", path, i)
		bare := strings.TrimPrefix(s, ".")
		if err := checkDNSName(bare); err != nil {
			ps.addf(sp, "%v", err)
		} else if seen[bare] {
			ps.addf(sp, "duplicate suffix %q", s)
		}
		seen[bare] = true
	}
}

// checkCIDRs accepts CIDRs in canonical form (no host bits set).
func checkCIDRs(ps *problems, path string, ranges []string) {
	for i, r := range ranges {
		rp := fmt.Sprintf("%s[%d]", path, i)
		pfx, err := netip.ParsePrefix(r)
		if err != nil {
			ps.addf(rp, "not a CIDR: %v", err)
		} else if pfx.Masked() != pfx {
			ps.addf(rp, "%q has host bits set; did you mean %q?", r, pfx.Masked())
		}
	}
}

func requirePath(ps *problems, path, value string) {
	if value == "" {
		ps.addf(path, "required")
	}
}

func checkHostPort(hp string) error {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return fmt.Errorf("must be host:port such as %q: %v", DefaultListen, err)
	}
	if strings.ContainsAny(host, " \t/") {
		return fmt.Errorf("invalid host %q", host)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port must be a number 1-65535; got %q", port)
	}
	return nil
}

// checkNames validates a list of DNS names and reports duplicates.
func checkNames(ps *problems, path string, names []string) {
	seen := make(map[string]bool)
	for i, n := range names {
		np := fmt.Sprintf("%s[%d]", path, i)
		if err := checkDNSName(n); err != nil {
			ps.addf(np, "%v", err)
		} else if seen[n] {
			ps.addf(np, "duplicate name %q", n)
		}
		seen[n] = true
	}
}

func checkIPs(ps *problems, path string, ips []string) {
	for i, s := range ips {
		if _, err := netip.ParseAddr(s); err != nil {
			ps.addf(fmt.Sprintf("%s[%d]", path, i), "not an IP address: %q", s)
		}
	}
}

// checkDNSName accepts lower-case host names: labels of a-z, 0-9 and '-'
// (not at either end), 1-63 characters each, 253 in total. Lower case is
// required so that policy suffix matching is a plain string comparison;
// wildcards and IP addresses are rejected.
func checkDNSName(name string) error {
	switch {
	case name == "":
		return errors.New("must not be empty")
	case len(name) > 253:
		return fmt.Errorf("%q is longer than 253 characters", name)
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return fmt.Errorf("%q is an IP address, not a DNS name", name)
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" {
			return fmt.Errorf("%q has an empty label", name)
		}
		if len(label) > 63 {
			return fmt.Errorf("%q has a label longer than 63 characters", name)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%q has a label starting or ending with '-'", name)
		}
		for _, r := range label {
			if !isLowerAlnum(r) && r != '-' {
				return fmt.Errorf("%q is not a valid DNS name: only a-z, 0-9, '-' and '.' are allowed", name)
			}
		}
	}
	return nil
}

// checkTrustDomain follows the SPIFFE trust domain name rules: lower-case
// letters, digits, '.', '-' and '_', no scheme, no port.
func checkTrustDomain(td string) error {
	switch {
	case td == "":
		return errors.New("required")
	case strings.Contains(td, "://"):
		return fmt.Errorf("must be a bare name without a scheme; got %q", td)
	case strings.Contains(td, ":"):
		return fmt.Errorf("must be a bare name without a port; got %q", td)
	case len(td) > 255:
		return errors.New("longer than 255 characters")
	case strings.HasPrefix(td, ".") || strings.HasSuffix(td, ".") || strings.Contains(td, ".."):
		return fmt.Errorf("%q has an empty label", td)
	}
	for _, r := range td {
		if !isLowerAlnum(r) && r != '.' && r != '-' && r != '_' {
			return fmt.Errorf("only lower-case a-z, 0-9, '.', '-' and '_' are allowed; got %q", td)
		}
	}
	return nil
}

// checkTemplate accepts strings whose only {...} placeholders are {worker}
// and {trustDomain}.
func checkTemplate(t string) error {
	return checkPlaceholders(t, "worker", "trustDomain")
}

// checkPlaceholders accepts non-empty templates with balanced braces whose
// {...} placeholders are all among names ("claim:*" admits any
// "claim:NAME").
func checkPlaceholders(t string, names ...string) error {
	if t == "" {
		return errors.New("must not be empty")
	}
	rest := t
	for {
		open := strings.IndexAny(rest, "{}")
		if open < 0 {
			return nil
		}
		if rest[open] == '}' {
			return fmt.Errorf("unmatched '}' in %q", t)
		}
		end := strings.IndexAny(rest[open+1:], "{}")
		if end < 0 || rest[open+1+end] != '}' {
			return fmt.Errorf("unclosed '{' in %q", t)
		}
		name := rest[open+1 : open+1+end]
		if !placeholderAllowed(name, names) {
			allowed := make([]string, len(names))
			for i, n := range names {
				allowed[i] = "{" + strings.ReplaceAll(n, "*", "NAME") + "}"
			}
			return fmt.Errorf("unknown placeholder {%s} in %q; only %s are allowed", name, t, strings.Join(allowed, " and "))
		}
		rest = rest[open+1+end+1:]
	}
}

func placeholderAllowed(name string, names []string) bool {
	for _, n := range names {
		if prefix, wild := strings.CutSuffix(n, "*"); wild && strings.HasPrefix(name, prefix) && len(name) > len(prefix) || n == name {
			return true
		}
	}
	return false
}

// isDNSLabel reports whether s matches [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?,
// the syntax of provisioner and worker names.
func isDNSLabel(s string) bool {
	if len(s) < 1 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !isLowerAlnum(r) && r != '-' {
			return false
		}
	}
	return true
}

func isLowerAlnum(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= '0' && r <= '9'
}

func (c *Config) validateOperations(ps *problems) {
	for i, id := range c.Admin.SPIFFEIDs {
		c.checkPrincipalID(ps, fmt.Sprintf("admin.spiffeIDs[%d]", i), id, "admin", "admin/operator")
	}
	requirePath(ps, "admin.certFile", c.Admin.CertFile)
	requirePath(ps, "admin.keyFile", c.Admin.KeyFile)
	c.validateControllers(ps)
	a := c.ARI
	if a.BandStartPercent < 1 || a.BandEndPercent > 100 || a.BandStartPercent >= a.BandEndPercent {
		ps.addf("ari", "need 1 <= bandStartPercent < bandEndPercent <= 100, got %d and %d", a.BandStartPercent, a.BandEndPercent)
	}
	if a.WindowPercent < 1 || a.BandStartPercent+a.WindowPercent > a.BandEndPercent {
		ps.addf("ari.windowPercent", "must be at least 1 and fit in the band, got %d", a.WindowPercent)
	}
	if a.MinRetryAfter.Duration < time.Second || a.MaxRetryAfter.Duration < a.MinRetryAfter.Duration {
		ps.addf("ari", "need 1s <= minRetryAfter <= maxRetryAfter, got %v and %v", a.MinRetryAfter.Duration, a.MaxRetryAfter.Duration)
	}
	if c.CRL.Interval.Duration < MinCRLInterval {
		ps.addf("crl.interval", "must be at least %v", MinCRLInterval)
	}
	c.validateMetrics(ps)
}

// validateMetrics checks metrics.listen: empty (off), or a host:port other
// than the CA's own listen address.
func (c *Config) validateMetrics(ps *problems) {
	l := c.Metrics.Listen
	if l == "" {
		return
	}
	if err := checkHostPort(l); err != nil {
		ps.addf("metrics.listen", "%v (or leave it out for no metrics)", err)
	} else if l == c.Listen {
		ps.addf("metrics.listen", "must differ from listen (%s): metrics are served on a listener of their own", c.Listen)
	}
}

// checkPrincipalID applies the rules shared by admin and controller IDs: a
// SPIFFE ID (any trust domain), and never one a worker can hold, because
// worker certificates chain to the same root and carry clientAuth.
func (c *Config) checkPrincipalID(ps *problems, path, id, role, example string) {
	u, err := url.Parse(id)
	if err != nil || u.Scheme != "spiffe" || u.Host == "" || u.Path == "" || u.Path == "/" || u.RawQuery != "" || u.Fragment != "" {
		ps.addf(path, "must be a SPIFFE ID such as spiffe://%s/%s, got %q", DefaultTrustDomain, example, id)
	} else if u.Host == c.TrustDomain && strings.HasPrefix(u.Path, "/worker/") {
		ps.addf(path, "%q is a worker identity; %s IDs must not be workers", id, role)
	} else if name, ok := c.workerSPIFFEOwner(id); ok {
		ps.addf(path, "%q is inside the SPIFFE namespace of worker provisioner %q; %s IDs must not be workers", id, name, role)
	}
}

// validateControllers checks admin.controllers. A controller's reach is
// exactly what these fields say, so each must be unambiguous: one role per
// ID, a real worker provisioner, an anchored pattern that compiles, and a
// TTL bound no looser than the provisioner's own.
func (c *Config) validateControllers(ps *problems) {
	admins := make(map[string]bool, len(c.Admin.SPIFFEIDs))
	for _, id := range c.Admin.SPIFFEIDs {
		admins[id] = true
	}
	seen := make(map[string]int, len(c.Admin.Controllers))
	for i, ctl := range c.Admin.Controllers {
		path := fmt.Sprintf("admin.controllers[%d]", i)
		idPath := path + ".spiffeID"
		switch j, dup := seen[ctl.SPIFFEID]; {
		case ctl.SPIFFEID == "":
			ps.addf(idPath, "required")
		case admins[ctl.SPIFFEID]:
			ps.addf(idPath, "%q is also in admin.spiffeIDs; a controller must not be an admin", ctl.SPIFFEID)
		case dup:
			ps.addf(idPath, "duplicate controller %q (also admin.controllers[%d])", ctl.SPIFFEID, j)
		default:
			seen[ctl.SPIFFEID] = i
			c.checkPrincipalID(ps, idPath, ctl.SPIFFEID, "controller", "controller/crank")
		}
		p, ok := c.Provisioner(ctl.Provisioner)
		switch {
		case ctl.Provisioner == "":
			ps.addf(path+".provisioner", "required: the worker-attestation provisioner it mints join tokens for")
		case !ok:
			ps.addf(path+".provisioner", "no provisioner named %q", ctl.Provisioner)
		case p.Type != TypeWorkerAttestation:
			ps.addf(path+".provisioner", "%q is not a worker-attestation provisioner; controllers mint join tokens for workers", ctl.Provisioner)
		}
		if ctl.WorkerPattern == "" {
			ps.addf(path+".workerPattern", "required: a Go regexp over worker names, such as \"build-[0-9]+\"")
		} else if _, err := regexp.Compile(anchorPattern(ctl.WorkerPattern)); err != nil {
			ps.addf(path+".workerPattern", "not a valid regexp: %v", err)
		}
		if ctl.MaxTTL.Duration < 0 {
			ps.addf(path+".maxTTL", "must not be negative")
		} else if ok && p.Type == TypeWorkerAttestation {
			if _, limit := c.ControllerTTLs(ctl); ctl.MaxTTL.Duration > limit {
				ps.addf(path+".maxTTL", "%v exceeds joinTokens.maxTTL (%v) of provisioner %q", ctl.MaxTTL.Duration, limit, ctl.Provisioner)
			}
		}
	}
}

// anchorPattern anchors a worker pattern (^(?:pattern)$), so that it must
// match a whole name rather than any part of one.
func anchorPattern(pattern string) string { return "^(?:" + pattern + ")$" }

// ControllerTTLs returns the default and maximum lifetime of the join tokens
// ctl may mint: its maxTTL, or else its provisioner's joinTokens.maxTTL, and
// the provisioner's joinTokens.defaultTTL capped at that maximum, so that a
// request without a TTL never exceeds the controller's bound. Built-in
// defaults stand in for settings ApplyDefaults has not filled in.
func (c *Config) ControllerTTLs(ctl Controller) (defaultTTL, maxTTL time.Duration) {
	defaultTTL, maxTTL = DefaultJoinTokenDefaultTTL, DefaultJoinTokenMaxTTL
	if p, ok := c.Provisioner(ctl.Provisioner); ok && p.JoinTokens != nil {
		if d := p.JoinTokens.DefaultTTL.Duration; d > 0 {
			defaultTTL = d
		}
		if d := p.JoinTokens.MaxTTL.Duration; d > 0 {
			maxTTL = d
		}
	}
	if d := ctl.MaxTTL.Duration; d > 0 && d < maxTTL {
		maxTTL = d
	}
	return min(defaultTTL, maxTTL), maxTTL
}
