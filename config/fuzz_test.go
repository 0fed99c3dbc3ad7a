package config

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// FuzzDecode checks that Decode never panics, that ApplyDefaults and
// Validate cope with anything Decode accepts, and that what Decode accepts
// survives a marshal/decode round trip unchanged.
func FuzzDecode(f *testing.F) {
	paths, _ := filepath.Glob("examples/*.json")
	for _, p := range paths {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	for _, s := range []string{
		`{}`, `null`, `[]`, `{"listn":1}`, `{} {}`, `{"listen":"a","listen":"b"}`,
		`{"pki":{"serverCertLifetime":"-5m"}}`, `{"provisioners":[null,{"claims":{"x":[[[{}]]]}}]}`,
		`{"provisioners":[{"validationPorts":{"http01":1e400}}]}`, `{"provisioners":[{"type":"acme","policy":{"allowedIPRanges":["::/0"]}}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Decode(bytes.NewReader(data))
		if err != nil {
			return
		}
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("Marshal of decoded config: %v", err)
		}
		back, err := Decode(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("re-Decode of %s: %v", out, err)
		}
		if diff := cmp.Diff(c, back, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("round trip mismatch (-first +second):\n%s", diff)
		}
		c.ApplyDefaults()
		_ = c.Validate()
		_ = c.Storage.String()
		_ = c.LogValue()
	})
}
