package main

// The operator commands: clients of the admin API (internal/adminclient)
// and `admin cert`, which issues operator and controller certificates
// locally.

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
	// warn receives the warning about an operator certificate about to
	// expire (the flag set's output, stderr).
	warn io.Writer
}

func addAPIFlags(fs *flag.FlagSet) *apiFlags {
	f := &apiFlags{warn: fs.Output()}
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
	warnOperatorCert(f.warn, cert, f.config, time.Now())
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

// apiCommand is the flag set of an admin API command with the flags every
// one of them takes: the admin API flags and --json.
type apiCommand struct {
	fs     *flag.FlagSet
	api    *apiFlags
	asJSON *bool
}

// newAPICommand starts the flag set of the command name; jsonUsage
// describes what --json prints.
func newAPICommand(name, jsonUsage string, stderr io.Writer) *apiCommand {
	fs := newFlagSet(name, stderr)
	return &apiCommand{fs: fs, api: addAPIFlags(fs), asJSON: fs.Bool("json", false, jsonUsage)}
}

// withClient connects to the admin API as the flags say and calls do with
// a context that Ctrl-C or SIGTERM cancels.
func (f *apiFlags) withClient(do func(ctx context.Context, cfg *config.Config, c *adminclient.Client) error) error {
	cfg, c, err := f.connect()
	if err != nil {
		return err
	}
	ctx, cancel := commandContext()
	defer cancel()
	return do(ctx, cfg, c)
}

// request runs a command that is one admin API request: it sends it with
// send and prints the answer, indented JSON with --json, else with text.
func request[T any](cmd *apiCommand, stdout io.Writer, send func(context.Context, *adminclient.Client) (T, error), text func(T) error) error {
	return cmd.api.withClient(func(ctx context.Context, _ *config.Config, c *adminclient.Client) error {
		res, err := send(ctx, c)
		if err != nil {
			return err
		}
		if *cmd.asJSON {
			return printJSON(stdout, res)
		}
		return text(res)
	})
}

// list runs a list command: fetch's items as a JSON array with --json,
// else a table of header and one row per item. row gets the time the list
// arrived.
func list[T any](cmd *apiCommand, stdout io.Writer, fetch func(context.Context, *adminclient.Client) ([]T, error), header []string, row func(item T, now time.Time) []string) error {
	return request(cmd, stdout, fetch, func(items []T) error {
		now := time.Now()
		rows := make([][]string, 0, len(items))
		for _, it := range items {
			rows = append(rows, row(it, now))
		}
		return table(stdout, header, rows)
	})
}

func cmdWorkersList(args []string, stdout, stderr io.Writer) error {
	cmd := newAPICommand("workers list", "print the JSON array", stderr)
	if err := parse(cmd.fs, args); err != nil {
		return err
	}
	return list(cmd, stdout,
		func(ctx context.Context, c *adminclient.Client) ([]admin.Worker, error) { return c.Workers(ctx) },
		[]string{"PROVISIONER", "WORKER", "STATUS", "ACCOUNTS", "LIVE CERTS", "DISABLED AT"},
		func(w admin.Worker, _ time.Time) []string {
			status := "enabled"
			if w.Disabled {
				status = "disabled"
			}
			return []string{w.Provisioner, w.Name, status, fmt.Sprint(w.Accounts), fmt.Sprint(w.LiveCertificates), ts(w.DisabledAt)}
		})
}

func cmdAccountsList(args []string, stdout, stderr io.Writer) error {
	cmd := newAPICommand("accounts list", "print the JSON array", stderr)
	if err := parse(cmd.fs, args); err != nil {
		return err
	}
	return list(cmd, stdout,
		func(ctx context.Context, c *adminclient.Client) ([]admin.Account, error) { return c.Accounts(ctx) },
		[]string{"ACCOUNT", "PROVISIONER", "WORKER", "BOUND AT", "USABLE"},
		func(a admin.Account, _ time.Time) []string {
			usable := "yes"
			if !a.Usable {
				usable = "no"
			}
			return []string{a.ID, a.Provisioner, orDash(a.Worker), ts(a.BoundAt), usable}
		})
}

func cmdCertsList(args []string, stdout, stderr io.Writer) error {
	cmd := newAPICommand("certs list", "print the JSON array", stderr)
	worker := cmd.fs.String("worker", "", "only certificates of this worker")
	all := cmd.fs.Bool("all", false, "include expired and revoked certificates")
	if err := parse(cmd.fs, args); err != nil {
		return err
	}
	return list(cmd, stdout,
		func(ctx context.Context, c *adminclient.Client) ([]admin.Certificate, error) {
			return c.Certificates(ctx, admin.CertFilter{Worker: *worker, All: *all})
		},
		[]string{"SERIAL", "PROVISIONER", "WORKER", "NAMES", "NOT AFTER", "STATUS"},
		func(ct admin.Certificate, now time.Time) []string {
			return []string{ct.Serial, ct.Provisioner, orDash(ct.Worker), certNames(ct), ts(ct.NotAfter), certStatus(ct, now)}
		})
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
	cmd := newAPICommand("revoke", `print {"revoked": [serials]}`, stderr)
	serial := cmd.fs.String("serial", "", "serial of the certificate to revoke: decimal, as certs list prints it, or hex as openssl prints it (0x prefix, colons or a-f digits; digits only are decimal)")
	worker := cmd.fs.String("worker", "", "revoke every live certificate of this worker")
	reason := cmd.fs.String("reason", "", "RFC 5280 reason name (default unspecified)")
	if err := parse(cmd.fs, args); err != nil {
		return err
	}
	if (*serial == "") == (*worker == "") {
		return fmt.Errorf("%w: revoke needs exactly one of --serial or --worker", errUsage)
	}
	return request(cmd, stdout,
		func(ctx context.Context, c *adminclient.Client) (admin.RevokeResult, error) {
			return c.Revoke(ctx, admin.RevokeRequest{Serial: *serial, Worker: *worker, Reason: *reason})
		},
		func(res admin.RevokeResult) error {
			if len(res.Revoked) == 0 {
				fmt.Fprintf(stdout, "nothing revoked: worker %q has no live certificates\n", *worker)
				return nil
			}
			for _, s := range res.Revoked {
				fmt.Fprintf(stdout, "revoked %s\n", s)
			}
			return nil
		})
}

func cmdRotate(args []string, stdout, stderr io.Writer) error {
	cmd := newAPICommand("rotate", `print {"rotated": [serials]}`, stderr)
	worker := cmd.fs.String("worker", "", "force renewal of this worker's live certificates")
	all := cmd.fs.Bool("all", false, "force renewal of every live certificate")
	before := cmd.fs.String("issued-before", "", "only certificates issued before this RFC 3339 time")
	if err := parse(cmd.fs, args); err != nil {
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
	return request(cmd, stdout,
		func(ctx context.Context, c *adminclient.Client) (admin.RotateResult, error) {
			return c.Rotate(ctx, req)
		},
		func(res admin.RotateResult) error {
			if len(res.Rotated) == 0 {
				fmt.Fprintln(stdout, "no live certificate matched; nothing to rotate")
				return nil
			}
			for _, s := range res.Rotated {
				fmt.Fprintf(stdout, "renewal forced for %s\n", s)
			}
			fmt.Fprintln(stdout, "ARI-driven clients renew within one Retry-After (plus one issuance)")
			return nil
		})
}

func cmdWorkerSetDisabled(args []string, disabled bool, stdout, stderr io.Writer) error {
	verb := "enable"
	if disabled {
		verb = "disable"
	}
	cmd := newAPICommand("worker "+verb, "print the worker as JSON", stderr)
	prov := cmd.fs.String("provisioner", "", "worker-attestation provisioner (default: the first one of the configuration)")
	pos, err := parseArgs(cmd.fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: worker %s needs exactly one worker NAME", errUsage, verb)
	}
	name := pos[0]
	// Several requests: disabling revokes the worker's live certificates,
	// so note which were live, and which of them the CA then revoked.
	return cmd.api.withClient(func(ctx context.Context, cfg *config.Config, c *adminclient.Client) error {
		if *prov == "" {
			*prov = defaultWorkerProvisioner(cfg)
		}
		var live []admin.Certificate
		if disabled {
			var err error
			if live, err = c.Certificates(ctx, admin.CertFilter{Worker: name}); err != nil {
				return err
			}
		}
		w, err := c.SetWorkerDisabled(ctx, *prov, name, disabled)
		if err != nil {
			return err
		}
		if *cmd.asJSON {
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
	})
}

// adminNameRE is what `admin cert --name` accepts: a single path segment.
var adminNameRE = regexp.MustCompile(`^[a-z0-9-]+$`)

func cmdAdminCert(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("admin cert", stderr)
	path := fs.String("config", "", "configuration file (required)")
	name := fs.String("name", "", "operator name: the certificate is for spiffe://<trustDomain>/admin/NAME")
	rawID := fs.String("spiffe-id", "", "instead of --name: any SPIFFE ID in admin.spiffeIDs or admin.controllers (files named after its last path segment)")
	lifetime := fs.Duration("lifetime", setup.AdminCertLifetime, "certificate lifetime")
	out := fs.String("out", "", "directory for NAME.crt and NAME.key (default: admin/ next to the configuration)")
	renew := fs.Bool("renew", false, "replace the certificate of --admin-cert (default admin.certFile) with a fresh one for the same ID")
	renewCert := fs.String("admin-cert", "", "with --renew: the certificate to renew (default admin.certFile)")
	renewKey := fs.String("admin-key", "", "with --renew: its key (default admin.keyFile, or the certificate's name with .key)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("%w: --config is required", errUsage)
	}
	if !*renew && (*renewCert != "" || *renewKey != "") {
		return fmt.Errorf("%w: --admin-cert and --admin-key go with --renew", errUsage)
	}
	if *renew {
		if *name != "" || *rawID != "" || *out != "" {
			return fmt.Errorf("%w: --renew keeps the certificate's ID and files: give --admin-cert/--admin-key, not --name, --spiffe-id or --out", errUsage)
		}
		if *lifetime <= 0 {
			return fmt.Errorf("%w: --lifetime must be positive", errUsage)
		}
		return renewAdminCert(*path, *renewCert, *renewKey, *lifetime, stdout)
	}
	switch {
	case *rawID != "" && *name != "":
		return fmt.Errorf("%w: give --name or --spiffe-id, not both", errUsage)
	case *rawID != "":
		id, err := spiffeid.FromString(*rawID)
		if err != nil || id.Path() == "" {
			return fmt.Errorf("%w: --spiffe-id must be a SPIFFE ID with a path, such as spiffe://%s/controller/crank", errUsage, config.DefaultTrustDomain)
		}
		segs := strings.Split(id.Path(), "/")
		*name = segs[len(segs)-1] // file names: SPIFFE segments are [A-Za-z0-9._-], never . or ..
	case !adminNameRE.MatchString(*name) || len(*name) > 63:
		return fmt.Errorf("%w: --name must be 1 to 63 of a-z, 0-9 and -", errUsage)
	}
	if *lifetime <= 0 {
		return fmt.Errorf("%w: --lifetime must be positive", errUsage)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	id, role, err := adminCertID(cfg, *path, *name, *rawID)
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
	fmt.Fprintf(stdout, "Issued %s certificate for %s\n", role, id)
	if notAfter, err := leafNotAfter(certPath); err == nil {
		fmt.Fprintf(stdout, "  valid until: %s\n", ts(notAfter))
	}
	fmt.Fprintf(stdout, "  certificate: %s\n  key:         %s\n", certPath, keyPath)
	if *rawID == "" && !slices.Contains(cfg.Admin.SPIFFEIDs, id.String()) {
		fmt.Fprintf(stderr, "crank-ca: %s is not in admin.spiffeIDs of %s: add it there and reload `crank-ca serve` (SIGHUP, or restart it) before using this certificate\n", id, *path)
	}
	fmt.Fprintf(stdout, "Use it with --admin-cert %s --admin-key %s\n", certPath, keyPath)
	return nil
}

// adminCertID returns the identity `admin cert` issues for, and its role in
// words. --name is always an operator under /admin/. --spiffe-id must
// already be configured as an admin or controller: validation has then
// kept it out of every worker namespace, so the command cannot be used to
// mint a client certificate that impersonates a worker.
func adminCertID(cfg *config.Config, cfgPath, name, rawID string) (spiffeid.ID, string, error) {
	if rawID == "" {
		td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
		if err != nil {
			return spiffeid.ID{}, "", fmt.Errorf("trustDomain: %w", err)
		}
		id, err := spiffeid.FromSegments(td, "admin", name)
		return id, "an operator", err
	}
	id := spiffeid.RequireFromString(rawID) // checked by the caller
	if slices.Contains(cfg.Admin.SPIFFEIDs, id.String()) {
		return id, "an operator", nil
	}
	if slices.ContainsFunc(cfg.Admin.Controllers, func(c config.Controller) bool { return c.SPIFFEID == id.String() }) {
		return id, "a controller", nil
	}
	return spiffeid.ID{}, "", fmt.Errorf("%s is neither in admin.spiffeIDs nor in admin.controllers of %s: configure it there first", id, cfgPath)
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
