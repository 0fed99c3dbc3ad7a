package setup

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/crank-platform/crank-ca/config"
	"github.com/crank-platform/crank-ca/internal/pki"
)

func TestInit(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "ca")
	res, err := Init(Options{Dir: dir, Listen: "127.0.0.1:9443", TrustDomain: "example.internal", DNSNames: []string{"ca.example.internal"}})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(res.ConfigPath)
	if err != nil {
		t.Fatalf("the written config does not load: %v", err)
	}
	if cfg.Listen != "127.0.0.1:9443" || cfg.TrustDomain != "example.internal" || cfg.DNSNames[0] != "ca.example.internal" {
		t.Errorf("options not applied: %+v", cfg)
	}
	ca, err := pki.Load(cfg.Resolve(cfg.PKI.RootCert), cfg.Resolve(cfg.PKI.IntermediateCert), cfg.Resolve(cfg.PKI.IntermediateKey))
	if err != nil {
		t.Fatal(err)
	}
	if ca.Fingerprint() != res.Fingerprint {
		t.Error("printed fingerprint differs from the root's")
	}
	for _, p := range []string{res.ConfigPath, cfg.Resolve(cfg.TokenKeyFile), cfg.Resolve(cfg.PKI.IntermediateKey), filepath.Join(dir, "pki", "root.key")} {
		info, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", p, info.Mode().Perm())
		}
	}
}

func TestInitRefusesExistingCA(t *testing.T) {
	t.Parallel()
	for _, existing := range []string{ConfigFile, "pki/root.crt", "pki/intermediate.key", "secrets/token.key"} {
		t.Run(existing, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := filepath.Join(dir, existing)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("keep me"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Init(Options{Dir: dir})
			if !errors.Is(err, ErrExists) {
				t.Fatalf("Init over %s: %v, want ErrExists", existing, err)
			}
			var n int
			_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, _ error) error {
				if !d.IsDir() {
					n++
				}
				return nil
			})
			if b, _ := os.ReadFile(p); n != 1 || string(b) != "keep me" {
				t.Errorf("refused Init changed the directory (%d files)", n)
			}
		})
	}
}

func TestInitRejectsBadOptions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, err := Init(Options{Dir: dir, Listen: "nonsense"}); err == nil {
		t.Fatal("bad listen accepted")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("a refused Init wrote %d entries", len(entries))
	}
	if _, err := Init(Options{}); err == nil {
		t.Fatal("missing dir accepted")
	}
}
