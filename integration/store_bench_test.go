package integration

import (
	"crypto/tls"
	"crypto/x509"
	"io/fs"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"

	"github.com/crank-platform/crank-ca/internal/pki"
	"github.com/crank-platform/crank-ca/internal/stepca"
	"github.com/crank-platform/crank-ca/internal/store"
	"github.com/crank-platform/crank-ca/provisioner"
)

// BenchmarkStore compares the embedded stores on the job crank-ca gives them:
// full worker issuances (new-order, authz, finalize, download) over HTTPS
// with the lego library, then a retention sweep of the expired data, then the
// same number of issuances again. Reported per issuance:
//
//   - ns/op: wall time of one issuance (client and server on one machine)
//   - disk-B/op: store size on disk after the first round, per issuance
//   - regrow-B/op: growth of the store during the second round, after the
//     sweep deleted the first round's data. Near zero means deleted space is
//     reused and the store stays bounded.
//
// badger v2 is measured here only; the binary ships bbolt and PostgreSQL.
func BenchmarkStore(b *testing.B) {
	for _, typ := range []string{"bbolt", "badgerv2"} {
		b.Run(typ, func(b *testing.B) { benchStore(b, typ) })
	}
}

func benchStore(b *testing.B, typ string) {
	dir := b.TempDir()
	ca, err := pki.Create(pki.DefaultFiles(dir), pki.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	key, err := provisioner.GenerateTokenKey()
	if err != nil {
		b.Fatal(err)
	}
	ids, err := provisioner.NewIdentities(provisioner.IdentitiesConfig{
		TrustDomain: "crank.internal", Pattern: "[a-z0-9-]{1,63}",
		DNSTemplates: []string{"{worker}.workers.{trustDomain}"},
	})
	if err != nil {
		b.Fatal(err)
	}
	dataDir := filepath.Join(dir, "db")
	ds := dataDir
	if typ == "bbolt" {
		ds = filepath.Join(dataDir, "crank-ca.db")
	}
	if err := mkdir(dataDir); err != nil {
		b.Fatal(err)
	}
	now := time.Now
	sca, err := stepca.New(b.Context(), stepca.Config{
		Root: ca.Root, Intermediate: ca.Intermediate, Signer: ca.IntermediateKey,
		Storage:  stepca.Storage{Type: typ, DataSource: ds},
		TokenKey: key,
		Provisioners: []stepca.Provisioner{{
			Name: "workers", Kind: stepca.KindWorkers, Identities: ids,
			MinDuration: 5 * time.Minute, DefaultDuration: 24 * time.Hour, MaxDuration: 168 * time.Hour,
			// The benchmark is one client ordering as fast as it can.
			Limits: stepca.Limits{MaxIdentifiersPerOrder: 100, MaxPendingOrdersPerAccount: 1 << 20, NewAccountsPerMinute: 1 << 20, NewOrdersPerMinute: 1 << 20},
		}},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sca.Close()
	certs, err := pki.NewServerCerts(pki.ServerCertsConfig{CA: ca, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{Handler: sca.Handler(), TLSConfig: &tls.Config{GetCertificate: certs.GetCertificate}}
	go func() { _ = hs.ServeTLS(ln, "", "") }()
	defer hs.Close()
	url := "https://" + ln.Addr().String()

	roots := x509.NewCertPool()
	roots.AddCert(ca.Root)
	u := &legoUser{key: newKeyB(b)}
	cfg := lego.NewConfig(u)
	cfg.CADirURL = url + "/acme/workers/directory"
	cfg.HTTPClient = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	cfg.Certificate.KeyType = certcrypto.EC256
	cfg.Certificate.OverallRequestLimit = 1000
	cl, err := lego.NewClient(cfg)
	if err != nil {
		b.Fatal(err)
	}
	tok, err := key.Mint(provisioner.TokenClaims{Provisioner: "workers", Worker: "bench", ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		b.Fatal(err)
	}
	reg, err := cl.Registration.RegisterWithExternalAccountBinding(registration.RegisterEABOptions{TermsOfServiceAgreed: true, Kid: tok.KID, HmacEncoded: tok.HMACKeyString()})
	if err != nil {
		b.Fatal(err)
	}
	u.reg = reg
	certKey := newKeyB(b)
	csr := csrForB(b, certKey, []string{"bench.workers.crank.internal"})
	issue := func() {
		if _, err := cl.Certificate.ObtainForCSR(certificate.ObtainForCSRRequest{CSR: csr, PrivateKey: certKey}); err != nil {
			b.Fatal(err)
		}
	}

	b.ResetTimer()
	for range b.N {
		issue()
	}
	b.StopTimer()
	size1 := dirSize(b, dataDir)
	ret := store.NewRetainer(store.RetainerConfig{DB: sca.NoSQL(), Keep: 0, Now: func() time.Time { return now().Add(50 * time.Hour) }})
	if _, err := ret.Sweep(b.Context()); err != nil {
		b.Fatal(err)
	}
	size2 := dirSize(b, dataDir)
	for range b.N {
		issue()
	}
	size3 := dirSize(b, dataDir)
	b.ReportMetric(float64(size1)/float64(b.N), "disk-B/op")
	b.ReportMetric(float64(size3-size2)/float64(b.N), "regrow-B/op")
}

func dirSize(b *testing.B, dir string) int64 {
	b.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += info.Size()
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}
