package provisioner

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultSPIFFEIDTemplate is used when IdentitiesConfig.SPIFFEIDTemplate is
// empty.
const DefaultSPIFFEIDTemplate = "spiffe://{trustDomain}/worker/{worker}"

// sampleWorker is used to render templates at configuration time, so that a
// broken template fails at start-up rather than on the first request.
const sampleWorker = "sample-worker-0"

// IdentitiesConfig configures which workers exist.
type IdentitiesConfig struct {
	TrustDomain string // e.g. "crank.internal"
	// Pattern is a regexp for worker names, implicitly anchored
	// (^(?:...)$). "" means only explicit Workers exist. Names must also be
	// a single lower-case DNS label whatever the pattern says.
	Pattern string
	// DNSTemplates render the DNS names of pattern workers, e.g.
	// "{worker}.workers.{trustDomain}". Placeholders: {worker},
	// {trustDomain}.
	DNSTemplates []string
	// IPs are given to every pattern worker (usually empty).
	IPs []string
	// SPIFFEIDTemplate defaults to DefaultSPIFFEIDTemplate; it must contain
	// {worker} so that no two workers share an ID.
	SPIFFEIDTemplate string
	// Workers are explicit workers. They take precedence over the pattern
	// and get exactly the names listed (templates and IPs above do not
	// apply to them).
	Workers []WorkerConfig
}

// WorkerConfig is one explicitly configured worker.
type WorkerConfig struct {
	Name     string
	DNSNames []string
	IPs      []string
	// SPIFFEID is optional; default from SPIFFEIDTemplate. Placeholders
	// are expanded here too.
	SPIFFEID string
}

// Identities is the validated, immutable set of workers. It is safe for
// concurrent use.
type Identities struct {
	td          spiffeid.TrustDomain
	pattern     *regexp.Regexp // nil: explicit workers only
	dnsTemplate []string
	ips         []netip.Addr
	idTemplate  string
	explicit    map[string]Identity
}

// NewIdentities validates everything and reports every problem at once
// (errors.Join of *FieldError), because fixing a config one error per restart
// is miserable.
func NewIdentities(cfg IdentitiesConfig) (*Identities, error) {
	var errs []error
	fail := func(field string, err error) { errs = append(errs, &FieldError{Field: field, Err: err}) }

	ids := &Identities{explicit: make(map[string]Identity, len(cfg.Workers))}

	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		fail("trustDomain", err)
	}
	ids.td = td
	tdName := td.Name()

	if cfg.Pattern != "" {
		// Compile unanchored first so the error quotes what the operator wrote.
		if _, err := regexp.Compile(cfg.Pattern); err != nil {
			fail("pattern", err)
		} else if ids.pattern, err = regexp.Compile(`^(?:` + cfg.Pattern + `)$`); err != nil {
			fail("pattern", err)
		}
	}

	for i, t := range cfg.DNSTemplates {
		field := fmt.Sprintf("dnsTemplates[%d]", i)
		if err := checkTemplate(t); err != nil {
			fail(field, err)
			continue
		}
		if !td.IsZero() {
			if err := validateDNSName(renderTemplate(t, sampleWorker, tdName)); err != nil {
				fail(field, fmt.Errorf("renders an invalid name: %w", err))
				continue
			}
		}
		ids.dnsTemplate = append(ids.dnsTemplate, t)
	}

	for i, s := range cfg.IPs {
		ip, err := parseIP(s)
		if err != nil {
			fail(fmt.Sprintf("ips[%d]", i), err)
			continue
		}
		ids.ips = append(ids.ips, ip)
	}
	ids.ips = normalizeIPs(ids.ips)

	ids.idTemplate = cfg.SPIFFEIDTemplate
	if ids.idTemplate == "" {
		ids.idTemplate = DefaultSPIFFEIDTemplate
	}
	if err := checkTemplate(ids.idTemplate); err != nil {
		fail("spiffeIDTemplate", err)
	} else if !strings.Contains(ids.idTemplate, phWorker) {
		fail("spiffeIDTemplate", errors.New("must contain {worker}"))
	} else if !td.IsZero() {
		if _, err := renderSPIFFEID(ids.idTemplate, sampleWorker, td); err != nil {
			fail("spiffeIDTemplate", err)
		}
	}

	seenID := make(map[spiffeid.ID]string)
	seenName := make(map[string]bool)
	for i, w := range cfg.Workers {
		prefix := fmt.Sprintf("workers[%d]", i)
		ok := true
		switch {
		case !validWorkerName(w.Name):
			fail(prefix+".name", fmt.Errorf("%q is not a valid worker name (one lower-case DNS label)", w.Name))
			ok = false
		case seenName[w.Name]:
			fail(prefix+".name", fmt.Errorf("duplicate %q", w.Name))
			ok = false
		}
		seenName[w.Name] = true
		id := Identity{Worker: w.Name}
		for j, n := range w.DNSNames {
			if err := validateDNSName(n); err != nil {
				fail(fmt.Sprintf("%s.dnsNames[%d]", prefix, j), err)
				ok = false
				continue
			}
			id.DNSNames = append(id.DNSNames, n)
		}
		id.DNSNames = normalizeDNS(id.DNSNames)
		for j, s := range w.IPs {
			ip, err := parseIP(s)
			if err != nil {
				fail(fmt.Sprintf("%s.ips[%d]", prefix, j), err)
				ok = false
				continue
			}
			id.IPs = append(id.IPs, ip)
		}
		id.IPs = normalizeIPs(id.IPs)

		// Field to blame for a bad SPIFFE ID: the worker's own spiffeID if
		// set, else its name (the shared template itself was checked above).
		tmpl, field := w.SPIFFEID, prefix+".spiffeID"
		if tmpl == "" {
			tmpl, field = ids.idTemplate, prefix+".name"
		}
		renderAs := w.Name
		if !validWorkerName(renderAs) {
			renderAs = sampleWorker // still check an explicit spiffeID
		}
		switch {
		case td.IsZero():
			ok = false
		case w.SPIFFEID == "" && (checkTemplate(tmpl) != nil || !strings.Contains(tmpl, phWorker)):
			ok = false
		case checkTemplate(tmpl) != nil:
			fail(field, checkTemplate(tmpl))
			ok = false
		default:
			sid, err := renderSPIFFEID(tmpl, renderAs, td)
			switch {
			case err != nil:
				if w.SPIFFEID != "" || validWorkerName(w.Name) {
					fail(field, err)
				}
				ok = false
			case !ok:
			case seenID[sid] != "":
				fail(field, fmt.Errorf("SPIFFE ID %q already used by worker %q", sid, seenID[sid]))
				ok = false
			default:
				seenID[sid] = w.Name
				id.SPIFFEID = sid
			}
		}
		if ok {
			ids.explicit[w.Name] = id
		}
	}

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return ids, nil
}

func renderSPIFFEID(tmpl, worker string, td spiffeid.TrustDomain) (spiffeid.ID, error) {
	s := renderTemplate(tmpl, worker, td.Name())
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%q is not a SPIFFE ID: %w", s, err)
	}
	if !id.MemberOf(td) {
		return spiffeid.ID{}, fmt.Errorf("%q is not in trust domain %q", s, td.Name())
	}
	return id, nil
}

// Lookup returns the identity of a worker. It wraps ErrUnknownWorker (and
// names the worker) if the name matches neither the explicit list nor the
// pattern, or if the names rendered for it are invalid: a worker whose
// identity cannot be expressed does not exist.
func (ids *Identities) Lookup(worker string) (Identity, error) {
	if id, ok := ids.explicit[worker]; ok {
		return id.clone(), nil
	}
	// Check the cheap, strict shape first: it bounds the input handed to
	// the operator's regexp and to the templates.
	if !validWorkerName(worker) || ids.pattern == nil || !ids.pattern.MatchString(worker) {
		return Identity{}, fmt.Errorf("%w %q", ErrUnknownWorker, worker)
	}
	sid, err := renderSPIFFEID(ids.idTemplate, worker, ids.td)
	if err != nil {
		return Identity{}, fmt.Errorf("%w %q: %w", ErrUnknownWorker, worker, err)
	}
	id := Identity{Worker: worker, SPIFFEID: sid, IPs: slices.Clone(ids.ips)}
	for _, t := range ids.dnsTemplate {
		n := renderTemplate(t, worker, ids.td.Name())
		if err := validateDNSName(n); err != nil {
			return Identity{}, fmt.Errorf("%w %q: %w", ErrUnknownWorker, worker, err)
		}
		id.DNSNames = append(id.DNSNames, n)
	}
	id.DNSNames = normalizeDNS(id.DNSNames)
	return id, nil
}

// Explicit returns the explicit workers' names, sorted, for listing.
func (ids *Identities) Explicit() []string {
	names := make([]string, 0, len(ids.explicit))
	for n := range ids.explicit {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
