package main

// The operator commands: clients of the admin API (internal/adminclient)
// and `admin cert`, which issues operator certificates locally.

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/admin"
	"github.com/crank-platform/crank-ca/internal/adminclient"
	"github.com/crank-platform/crank-ca/internal/pki"
	"github.com/crank-platform/crank-ca/internal/setup"
)

// requestTimeout bounds every admin API request of a command.
const requestTimeout = 30 * time.Second

// apiFlags are the flags every admin API command takes.
type apiFlags struct {
	config, server, cert, key string
}

func addAPIFlags(fs *flag.FlagSet) *apiFlags {
	f := &apiFlags{}
	fs.StringVar(&f.config, "config", "", "configuration file (required)")
	fs.StringVar(&f.server, "server", "", "base URL of the CA (default https://<listen> of the configuration)")
	fs.StringVar(&f.cert, "admin-cert", "", "operator certificate (default admin.certFile of the configuration)")
	fs.StringVar(&f.key, "admin-key", "", "operator key (default admin.keyFile of the configuration)")
	return f
}

// load reads the configuration; --config is required.
func (f *apiFlags) load() (*config.Config, error) {
	if f.config == "" {
		return nil, fmt.Errorf("%w: --config is required", errUsage)
	}
	return config.Load(f.config)
}

// connect loads the configuration and builds the admin API client.
func (f *apiFlags) connect() (*config.Config, *adminclient.Client, error) {
	cfg, err := f.load()
	if err != nil {
		return nil, nil, err
	}
	c, err := f.client(cfg)
	if err != nil {
		return nil, nil, err
	}
	return cfg, c, nil
}

// client builds the admin API client from the flags and cfg.
func (f *apiFlags) client(cfg *config.Config) (*adminclient.Client, error) {
	url := f.server
	if url == "" {
		url = defaultServerURL(cfg.Listen)
	}
	cert, key := f.cert, f.key
	if cert == "" {
		cert = cfg.Resolve(cfg.Admin.CertFile)
	}
	if key == "" {
		key = cfg.Resolve(cfg.Admin.KeyFile)
	}
	return adminclient.New(adminclient.Config{
		URL:      url,
		RootCert: cfg.Resolve(cfg.PKI.RootCert),
		CertFile: cert,
		KeyFile:  key,
		Timeout:  requestTimeout,
	})
}

// defaultServerURL is https://<listen>, with an unspecified host (all
// interfaces) replaced by the IPv4 loopback address, which the server's
// certificate then names.
func defaultServerURL(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "https://" + listen
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "https://" + net.JoinHostPort(host, port)
}

// commandContext is the context of one command's requests: cancelled by
// Ctrl-C or SIGTERM.
func commandContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// parseArgs parses flags that may come before, after or between
// positional arguments (`worker disable NAME --provisioner P`) and returns
// the positional ones.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// printJSON writes v indented.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes aligned columns.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// ts formats a time for tables; the zero time is "-".
func ts(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// defaultWorkerProvisioner is the first worker-attestation provisioner of
// cfg, or "workers".
func defaultWorkerProvisioner(cfg *config.Config) string {
	for _, p := range cfg.Provisioners {
		if p.Type == config.TypeWorkerAttestation {
			return p.Name
		}
	}
	return "workers"
}

func cmdWorkersList(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("workers list", stderr)
	af := addAPIFlags(fs)
	asJSON := fs.Bool("json", false, "print the JSON array")
	if err := parse(fs, args); err != nil {
		return err
	}
	_, c, err := af.connect()
	if err != nil {
		return err
	}
	ctx, cancel := commandContext()
	defer cancel()
	ws, err := c.Workers(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, ws)
	}
	rows := make([][]string, 0, len(ws))
	for _, w := range ws {
		status := "enabled"
		if w.Disabled {
			status = "disabled"
		}
		rows = append(rows, []string{w.Provisioner, w.Name, status, fmt.Sprint(w.Accounts), fmt.Sprint(w.LiveCertificates), ts(w.DisabledAt)})
	}
	return table(stdout, []string{"PROVISIONER", "WORKER", "STATUS", "ACCOUNTS", "LIVE CERTS", "DISABLED AT"}, rows)
}

func cmdAccountsList(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("accounts list", stderr)
	af := addAPIFlags(fs)
	asJSON := fs.Bool("json", false, "print the JSON array")
	if err := parse(fs, args); err != nil {
		return err
	}
	_, c, err := af.connect()
	if err != nil {
		return err
	}
	ctx, cancel := commandContext()
	defer cancel()
	as, err := c.Accounts(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, as)
	}
	rows := make([][]string, 0, len(as))
	for _, a := range as {
		usable := "yes"
		if !a.Usable {
			usable = "no"
		}
		rows = append(rows, []string{a.ID, a.Provisioner, orDash(a.Worker), ts(a.BoundAt), usable})
	}
	return table(stdout, []string{"ACCOUNT", "PROVISIONER", "WORKER", "BOUND AT", "USABLE"}, rows)
}

func cmdCertsList(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("certs list", stderr)
	af := addAPIFlags(fs)
	worker := fs.String("worker", "", "only certificates of this worker")
	all := fs.Bool("all", false, "include expired and revoked certificates")
	asJSON := fs.Bool("json", false, "print the JSON array")
	if err := parse(fs, args); err != nil {
		return err
	}
	_, c, err := af.connect()
	if err != nil {
		return err
	}
	ctx, cancel := commandContext()
	defer cancel()
	cs, err := c.Certificates(ctx, admin.CertFilter{Worker: *worker, All: *all})
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, cs)
	}
	now := time.Now()
	rows := make([][]string, 0, len(cs))
	for _, ct := range cs {
		rows = append(rows, []string{ct.Serial, ct.Provisioner, orDash(ct.Worker), certNames(ct), ts(ct.NotAfter), certStatus(ct, now)})
	}
	return table(stdout, []string{"SERIAL", "PROVISIONER", "WORKER", "NAMES", "NOT AFTER", "STATUS"}, rows)
}

// certNames is a certificate's identities for a table cell.
func certNames(c admin.Certificate) string {
	var names []string
	if c.SPIFFEID != "" {
		names = append(names, c.SPIFFEID)
	}
	names = append(names, c.DNSNames...)
	names = append(names, c.IPs...)
	return orDash(strings.Join(names, ","))
}

// certStatus summarises the CA's decisions about a certificate.
func certStatus(c admin.Certificate, now time.Time) string {
	var s []string
	switch {
	case c.Revoked:
		s = append(s, "revoked")
	case !c.NotAfter.IsZero() && now.After(c.NotAfter):
		s = append(s, "expired")
	default:
		s = append(s, "live")
	}
	if c.ReplacedBy != "" {
		s = append(s, "replaced by "+c.ReplacedBy)
	} else if !c.Revoked && !c.RenewNow.IsZero() && !c.RenewNow.After(now) {
		s = append(s, "renewal forced")
	}
	return strings.Join(s, ", ")
}

func cmdRevoke(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("revoke", stderr)
	af := addAPIFlags(fs)
	serial := fs.String("serial", "", "serial (decimal, as certs list prints it) of the certificate to revoke")
	worker := fs.String("worker", "", "revoke every live certificate of this worker")
	reason := fs.String("reason", "", "RFC 5280 reason name (default unspecified)")
	asJSON := fs.Bool("json", false, `print {"revoked": [serials]}`)
	if err := parse(fs, args); err != nil {
		return err
	}
	if (*serial == "") == (*worker == "") {
		return fmt.Errorf("%w: revoke needs exactly one of --serial or --worker", errUsage)
	}
	_, c, err := af.connect()
	if err != nil {
		return err
	}
	ctx, cancel := commandContext()
	defer cancel()
	res, err := c.Revoke(ctx, admin.RevokeRequest{Serial: *serial, Worker: *worker, Reason: *reason})
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, res)
	}
	if len(res.Revoked) == 0 {
		fmt.Fprintf(stdout, "nothing revoked: worker %q has no live certificates\n", *worker)
		return nil
	}
	for _, s := range res.Revoked {
		fmt.Fprintf(stdout, "revoked %s\n", s)
	}
	return nil
}

func cmdRotate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("rotate", stderr)
	af := addAPIFlags(fs)
	worker := fs.String("worker", "", "force renewal of this worker's live certificates")
	all := fs.Bool("all", false, "force renewal of every live certificate")
	before := fs.String("issued-before", "", "only certificates issued before this RFC 3339 time")
	asJSON := fs.Bool("json", false, `print {"rotated": [serials]}`)
	if err := parse(fs, args); err != nil {
		return err
	}
	if (*worker == "") == !*all {
		return fmt.Errorf("%w: rotate needs exactly one of --worker or --all", errUsage)
	}
	req := admin.RotateRequest{Worker: *worker, All: *all}
	if *before != "" {
		t, err := time.Parse(time.RFC3339, *before)
		if err != nil {
			return fmt.Errorf("%w: --issued-before: want an RFC 3339 time such as 2006-01-02T15:04:05Z: %v", errUsage, err)
		}
		req.IssuedBefore = &t
	}
	_, c, err := af.connect()
	if err != nil {
		return err
	}
	ctx, cancel := commandContext()
	defer cancel()
	res, err := c.Rotate(ctx, req)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, res)
	}
	if len(res.Rotated) == 0 {
		fmt.Fprintln(stdout, "no live certificate matched; nothing to rotate")
		return nil
	}
	for _, s := range res.Rotated {
		fmt.Fprintf(stdout, "renewal forced for %s\n", s)
	}
	fmt.Fprintln(stdout, "ARI-driven clients renew within one Retry-After of their next check")
	return nil
}

func cmdWorkerSetDisabled(args []string, disabled bool, stdout, stderr io.Writer) error {
	verb := "enable"
	if disabled {
		verb = "disable"
	}
	fs := newFlagSet("worker "+verb, stderr)
	af := addAPIFlags(fs)
	prov := fs.String("provisioner", "", "worker-attestation provisioner (default: the first one of the configuration)")
	asJSON := fs.Bool("json", false, "print the worker as JSON")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: worker %s needs exactly one worker NAME", errUsage, verb)
	}
	name := pos[0]
	cfg, err := af.load()
	if err != nil {
		return err
	}
	if *prov == "" {
		*prov = defaultWorkerProvisioner(cfg)
	}
	c, err := af.client(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := commandContext()
	defer cancel()
	// Disabling revokes the worker's live certificates; note which were
	// live so the result can say which it revoked.
	var live []admin.Certificate
	if disabled {
		if live, err = c.Certificates(ctx, admin.CertFilter{Worker: name}); err != nil {
			return err
		}
	}
	w, err := c.SetWorkerDisabled(ctx, *prov, name, disabled)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, w)
	}
	if !disabled {
		fmt.Fprintf(stdout, "enabled worker %s/%s\n", w.Provisioner, w.Name)
		fmt.Fprintln(stdout, "accounts bound before it was disabled stay unusable: mint a new join token to register it again")
		return nil
	}
	fmt.Fprintf(stdout, "disabled worker %s/%s at %s\n", w.Provisioner, w.Name, ts(w.DisabledAt))
	if len(live) == 0 {
		return nil
	}
	after, err := c.Certificates(ctx, admin.CertFilter{Worker: name, All: true})
	if err != nil {
		return err
	}
	for _, ct := range live {
		i := slices.IndexFunc(after, func(a admin.Certificate) bool { return a.Serial == ct.Serial })
		if i >= 0 && after[i].Revoked {
			fmt.Fprintf(stdout, "revoked %s\n", ct.Serial)
		}
	}
	return nil
}

// adminNameRE is what `admin cert --name` accepts: a single path segment.
var adminNameRE = regexp.MustCompile(`^[a-z0-9-]+$`)

func cmdAdminCert(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("admin cert", stderr)
	path := fs.String("config", "", "configuration file (required)")
	name := fs.String("name", "", "operator name: the certificate is for spiffe://<trustDomain>/admin/NAME (required)")
	lifetime := fs.Duration("lifetime", setup.AdminCertLifetime, "certificate lifetime")
	out := fs.String("out", "", "directory for NAME.crt and NAME.key (default: admin/ next to the configuration)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("%w: --config is required", errUsage)
	}
	if !adminNameRE.MatchString(*name) || len(*name) > 63 {
		return fmt.Errorf("%w: --name must be 1 to 63 of a-z, 0-9 and -", errUsage)
	}
	if *lifetime <= 0 {
		return fmt.Errorf("%w: --lifetime must be positive", errUsage)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return fmt.Errorf("trustDomain: %w", err)
	}
	id, err := spiffeid.FromSegments(td, "admin", *name)
	if err != nil {
		return err
	}
	dir := *out
	if dir == "" {
		dir = filepath.Join(cfg.Dir, "admin")
	}
	ca, err := pki.Load(cfg.Resolve(cfg.PKI.RootCert), cfg.Resolve(cfg.PKI.IntermediateCert), cfg.Resolve(cfg.PKI.IntermediateKey))
	if err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(dir, *name+".crt"), filepath.Join(dir, *name+".key")
	if err := setup.WriteAdminCert(ca, id, *lifetime, certPath, keyPath); err != nil {
		return fmt.Errorf("admin cert: %w", err)
	}
	fmt.Fprintf(stdout, "Issued an operator certificate for %s\n", id)
	if notAfter, err := leafNotAfter(certPath); err == nil {
		fmt.Fprintf(stdout, "  valid until: %s\n", ts(notAfter))
	}
	fmt.Fprintf(stdout, "  certificate: %s\n  key:         %s\n", certPath, keyPath)
	if !slices.Contains(cfg.Admin.SPIFFEIDs, id.String()) {
		fmt.Fprintf(stderr, "crank-ca: %s is not in admin.spiffeIDs of %s: add it there and restart `crank-ca serve` before using this certificate\n", id, *path)
	}
	fmt.Fprintf(stdout, "Use it with --admin-cert %s --admin-key %s\n", certPath, keyPath)
	return nil
}

func leafNotAfter(path string) (time.Time, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return time.Time{}, errors.New("no PEM block")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return time.Time{}, err
	}
	return c.NotAfter, nil
}
