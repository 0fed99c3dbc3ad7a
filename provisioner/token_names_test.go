package provisioner

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestTokenNameHints(t *testing.T) {
	t.Parallel()
	k, err := GenerateTokenKey()
	if err != nil {
		t.Fatal(err)
	}
	c := TokenClaims{Provisioner: "workers", Worker: "api", ExpiresAt: time.Now().Add(time.Hour), DNSNames: []string{"api.workers.crank.internal"}, IPs: []string{"10.0.0.7"}}
	tok, err := k.Mint(c)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := k.Verify(tok.KID, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tok.Claims, got); diff != "" {
		t.Errorf("verified claims (-minted +got):\n%s", diff)
	}
	read, err := ReadClaims(tok.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tok.Claims, read); diff != "" {
		t.Errorf("ReadClaims (-minted +got):\n%s", diff)
	}
	for _, bad := range []TokenClaims{
		{Provisioner: "workers", Worker: "api", ExpiresAt: time.Now().Add(time.Hour), DNSNames: []string{"Not A Name"}},
		{Provisioner: "workers", Worker: "api", ExpiresAt: time.Now().Add(time.Hour), IPs: []string{"300.1.1.1"}},
	} {
		if _, err := k.Mint(bad); err == nil {
			t.Errorf("Mint(%+v) accepted bad name hints", bad)
		}
	}
	if _, err := ReadClaims("garbage"); !errors.Is(err, ErrTokenMalformed) {
		t.Errorf("ReadClaims(garbage) = %v", err)
	}
}

func FuzzReadClaims(f *testing.F) {
	f.Add("ct1.e30.AAAAAAAAAAAAAAAAAAAAAA")
	f.Add("x")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = ReadClaims(s)
	})
}
