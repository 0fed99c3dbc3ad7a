package agent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/crank-platform/crank-ca/internal/paths"
)

// State file names inside the state directory.
const (
	fileRoot       = "root.pem"
	fileAccountKey = "account.key"
	fileAccount    = "account.json"
	fileCert       = "cert.pem" // leaf followed by intermediates
	fileKey        = "key.pem"
)

// account is the worker's ACME account: its key and its URL at the CA.
type account struct {
	key *ecdsa.PrivateKey
	URI string `json:"uri"`
	// CAURL and Provisioner record where the account lives; an account is
	// only reused against the same directory.
	CAURL       string `json:"caURL"`
	Provisioner string `json:"provisioner"`
	// KID is the join token the account was registered with; a different
	// token on a later start means the operator re-enrolled the worker.
	KID string `json:"kid,omitempty"`
	// Key is the account key (PKCS #8 PEM). It is kept in account.json
	// too, so that replacing the account (re-attestation) is one atomic
	// rename: a crash never pairs a new key with an old URL. account.key
	// holds the same key for older agents and for operators.
	Key string `json:"key,omitempty"`
	// Attested is set for an account registered with credentials from
	// POST /attest; Worker, SPIFFEID, DNSNames and IPs are the identity the
	// CA attested, and the names to order with this account.
	Attested bool     `json:"attested,omitempty"`
	Worker   string   `json:"worker,omitempty"`
	SPIFFEID string   `json:"spiffeID,omitempty"`
	DNSNames []string `json:"dnsNames,omitempty"`
	IPs      []string `json:"ips,omitempty"`
}

// state is what survives a restart.
type state struct {
	root     *x509.Certificate
	account  *account
	identity *Identity
}

// loadState reads what it can; missing or unusable parts are nil (and the
// caller obtains them again) rather than errors, except for unreadable files.
func loadState(dir string) (*state, error) {
	st := &state{}
	if b, err := readOptional(filepath.Join(dir, fileRoot)); err != nil {
		return nil, err
	} else if b != nil {
		certs, err := parseCerts(b)
		if err != nil || len(certs) != 1 {
			return nil, fmt.Errorf("state %s: not one certificate", fileRoot)
		}
		st.root = certs[0]
	}
	keyPEM, err := readOptional(filepath.Join(dir, fileAccountKey))
	if err != nil {
		return nil, err
	}
	accJSON, err := readOptional(filepath.Join(dir, fileAccount))
	if err != nil {
		return nil, err
	}
	if accJSON != nil {
		var acc account
		if err := json.Unmarshal(accJSON, &acc); err != nil {
			return nil, fmt.Errorf("state %s: %w", fileAccount, err)
		}
		// The key in account.json wins: account.key may be from the next
		// account if a re-attestation was cut short between the writes.
		src, b := fileAccount, []byte(acc.Key)
		if acc.Key == "" {
			src, b = fileAccountKey, keyPEM
		}
		if b != nil {
			k, err := parseKey(b)
			if err != nil {
				return nil, fmt.Errorf("state %s: %w", src, err)
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("state %s: not an ECDSA key", src)
			}
			acc.key = ek
			st.account = &acc
		}
	}
	certPEM, err := readOptional(filepath.Join(dir, fileCert))
	if err != nil {
		return nil, err
	}
	certKey, err := readOptional(filepath.Join(dir, fileKey))
	if err != nil {
		return nil, err
	}
	if certPEM != nil && certKey != nil && st.root != nil {
		chain, cerr := parseCerts(certPEM)
		key, kerr := parseKey(certKey)
		if cerr == nil && kerr == nil {
			// A pair torn by a crash between the two writes fails here and
			// is simply obtained again.
			if id, err := newIdentity(chain, key, []*x509.Certificate{st.root}); err == nil {
				st.identity = id
			}
		}
	}
	return st, nil
}

func readOptional(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	return b, nil
}

func (a *Agent) saveRoot(root *x509.Certificate) error {
	return paths.WriteFileAtomic(filepath.Join(a.cfg.StateDir, fileRoot), pemCerts([]*x509.Certificate{root}), 0o644)
}

// saveAccount records acc as the worker's account. account.json, which
// carries the key too, is renamed into place last and alone decides which
// account a restart uses, so a new account replaces the old one atomically.
func (a *Agent) saveAccount(acc *account) error {
	keyPEM, err := marshalKey(acc.key)
	if err != nil {
		return err
	}
	if err := paths.WriteFileAtomic(filepath.Join(a.cfg.StateDir, fileAccountKey), keyPEM, 0o600); err != nil {
		return err
	}
	rec := *acc
	rec.Key = string(keyPEM)
	b, err := json.MarshalIndent(&rec, "", "  ")
	if err != nil {
		return err
	}
	return paths.WriteFileAtomic(filepath.Join(a.cfg.StateDir, fileAccount), b, 0o600)
}

func (a *Agent) saveIdentity(id *Identity) error {
	keyPEM, err := marshalKey(id.Key)
	if err != nil {
		return err
	}
	if err := paths.WriteFileAtomic(filepath.Join(a.cfg.StateDir, fileKey), keyPEM, 0o600); err != nil {
		return err
	}
	return paths.WriteFileAtomic(filepath.Join(a.cfg.StateDir, fileCert), pemCerts(id.Chain), 0o644)
}

// WriteFiles writes an identity for programs that read files: cert.pem (the
// leaf), chain.pem (leaf and intermediates), key.pem (0600) and root.pem,
// each atomically, so a reader never sees a half-written file. The key is
// written first: a reader that sees a new certificate finds its key.
func WriteFiles(dir string, id *Identity) error {
	if err := paths.Ensure(dir); err != nil {
		return err
	}
	keyPEM, err := marshalKey(id.Key)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		perm fs.FileMode
	}{
		{"key.pem", keyPEM, 0o600},
		{"root.pem", pemCerts(id.Roots), 0o644},
		{"chain.pem", pemCerts(id.Chain), 0o644},
		{"cert.pem", pemCerts(id.Chain[:1]), 0o644},
	} {
		if err := paths.WriteFileAtomic(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	return nil
}

func marshalKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("not a signing key")
	}
	return s, nil
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate")
	}
	return out, nil
}

func pemCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}
