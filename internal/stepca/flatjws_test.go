package stepca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"

	"go.step.sm/crypto/jose"
)

// signedJWS signs payload the way ACME clients do (ES256, flattened JSON),
// with a kid, or with the JWK embedded when kid is empty.
func signedJWS(t testing.TB, payload []byte, kid string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	opts := (&jose.SignerOptions{}).WithHeader("nonce", "n0nce").WithHeader("url", "https://ca/acme/workers/new-order")
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	} else {
		opts.EmbedJWK = true
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	return jws.FullSerialize()
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func TestParseFlatJWS(t *testing.T) {
	t.Parallel()
	kid := "https://ca/acme/workers/account/acc1"
	accepted := map[string]string{
		"kid":                       signedJWS(t, []byte(`{"identifiers":[{"type":"dns","value":"a.localhost"}]}`), kid),
		"embedded jwk":              signedJWS(t, []byte(`{"termsOfServiceAgreed":true}`), ""),
		"POST-as-GET":               signedJWS(t, []byte{}, kid),
		"whitespace between tokens": "{ \"protected\" : \"" + b64(`{"alg":"ES256","kid":"k"}`) + "\",\n\t\"payload\":\"" + b64(`{}`) + "\", \"signature\":\"AA\" }\n",
	}
	for name, body := range accepted {
		t.Run("accepts "+name, func(t *testing.T) {
			t.Parallel()
			got, err := parseFlatJWS([]byte(body))
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			want, err := jose.ParseJWS(body)
			if err != nil || len(want.Signatures) != 1 {
				t.Fatalf("go-jose: %v", err)
			}
			if !bytes.Equal(got.payload, want.UnsafePayloadWithoutVerification()) || got.kid != want.Signatures[0].Protected.KeyID {
				t.Errorf("read payload %q kid %q; go-jose reads %q, %q", got.payload, got.kid, want.UnsafePayloadWithoutVerification(), want.Signatures[0].Protected.KeyID)
			}
			if got.payload == nil {
				t.Error("payload is nil, want empty")
			}
		})
	}

	p, pl := b64(`{"alg":"ES256","kid":"k"}`), b64(`{"a":1}`)
	refused := map[string]string{
		"empty":                     ``,
		"an array":                  `[]`,
		"compact serialization":     p + "." + pl + ".AA",
		"general serialization":     `{"payload":"` + pl + `","signatures":[{"protected":"` + p + `","signature":"AA"}]}`,
		"unprotected header":        `{"protected":"` + p + `","header":{"kid":"x"},"payload":"` + pl + `","signature":"AA"}`,
		"unknown member":            `{"protected":"` + p + `","payload":"` + pl + `","signature":"AA","x":"y"}`,
		"member in capitals":        `{"protected":"` + p + `","PAYLOAD":"` + b64(`{"b":2}`) + `","payload":"` + pl + `","signature":"AA"}`,
		"duplicate payload":         `{"protected":"` + p + `","payload":"` + pl + `","payload":"` + b64(`{"b":2}`) + `","signature":"AA"}`,
		"missing signature":         `{"protected":"` + p + `","payload":"` + pl + `"}`,
		"missing payload":           `{"protected":"` + p + `","signature":"AA"}`,
		"padding":                   `{"protected":"` + p + `","payload":"` + b64(`{"a":12}`) + `==","signature":"AA"}`,
		"whitespace in a value":     `{"protected":"` + p + `","payload":"` + pl[:3] + " " + pl[3:] + `","signature":"AA"}`,
		"escaped whitespace":        `{"protected":"` + p + `","payload":"` + pl[:3] + `\n` + pl[3:] + `","signature":"AA"}`,
		"standard base64":           `{"protected":"` + p + `","payload":"` + base64.StdEncoding.EncodeToString([]byte(`{"x":"??>>"}`)) + `","signature":"AA"}`,
		"a number":                  `{"protected":"` + p + `","payload":1,"signature":"AA"}`,
		"null payload":              `{"protected":"` + p + `","payload":null,"signature":"AA"}`,
		"data after the object":     `{"protected":"` + p + `","payload":"` + pl + `","signature":"AA"}{}`,
		"unterminated":              `{"protected":"` + p + `","payload":"` + pl + `","signature":"AA"`,
		"header not an object":      `{"protected":"` + b64(`"kid"`) + `","payload":"` + pl + `","signature":"AA"}`,
		"header not JSON":           `{"protected":"` + b64(`{kid:1}`) + `","payload":"` + pl + `","signature":"AA"}`,
		"kid not a string":          `{"protected":"` + b64(`{"alg":"ES256","kid":7}`) + `","payload":"` + pl + `","signature":"AA"}`,
		"header with trailing data": `{"protected":"` + b64(`{"kid":"a"} x`) + `","payload":"` + pl + `","signature":"AA"}`,
	}
	for name, body := range refused {
		t.Run("refuses "+name, func(t *testing.T) {
			t.Parallel()
			if got, err := parseFlatJWS([]byte(body)); err == nil {
				t.Errorf("accepted %q: payload %q kid %q", body, got.payload, got.kid)
			}
		})
	}
}

// FuzzFlatJWS: parseFlatJWS never panics, and whatever it accepts that
// go-jose (and so smallstep) also accepts, go-jose reads as the same
// payload and key ID: the precheck judges what smallstep acts on.
func FuzzFlatJWS(f *testing.F) {
	f.Add([]byte(signedJWS(f, []byte(`{"csr":"AAAA"}`), "https://ca/acme/w/account/a")))
	f.Add([]byte(signedJWS(f, []byte(`{}`), "")))
	f.Add([]byte(`{"protected":"e30","payload":"","signature":""}`))
	f.Add([]byte(`{"protected":"eyJraWQiOiJhIiwia2lkIjoiYiJ9","payload":"e30","signature":"AA"}`))
	f.Add([]byte(`{"protected":"eyJraWQiOm51bGx9","payload":"e30","signature":"AA"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := parseFlatJWS(body)
		if err != nil {
			return
		}
		want, err := jose.ParseJWS(string(body))
		if err != nil || len(want.Signatures) != 1 {
			return // smallstep refuses it
		}
		if !bytes.Equal(got.payload, want.UnsafePayloadWithoutVerification()) {
			t.Fatalf("payload %q, go-jose reads %q", got.payload, want.UnsafePayloadWithoutVerification())
		}
		if got.kid != want.Signatures[0].Protected.KeyID {
			t.Fatalf("kid %q, go-jose reads %q", got.kid, want.Signatures[0].Protected.KeyID)
		}
	})
}

// BenchmarkPrecheckJWS compares the precheck's reader with go-jose's full
// parse on a typical finalize request (kid, a CSR in the payload).
func BenchmarkPrecheckJWS(b *testing.B) {
	body := []byte(signedJWS(b, []byte(`{"csr":"`+strings.Repeat("MIIBOzCB4gIBADAcMRowGAYDVQQDExF3b3JrZXI", 8)+`"}`), "https://ca/acme/workers/account/0123456789abcdef0123456789abcdef"))
	b.Run("parseFlatJWS", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := parseFlatJWS(body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("go-jose", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := jose.ParseJWS(string(body)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
