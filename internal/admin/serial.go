package admin

import (
	"fmt"
	"math/big"
	"strings"
)

// ParseSerial reads a certificate serial as operators copy it: decimal, as
// `certs list` and the audit log print it, or hexadecimal, as OpenSSL and
// CRLs print it ("0x" prefix, colon-separated bytes, "serial=" as
// `openssl x509 -serial` prints it, or any a-f digit). A serial of decimal
// digits only is read as decimal; prefix "0x" to force hex. It returns the
// decimal form, which is how crank-ca stores serials.
func ParseSerial(s string) (string, error) {
	in := strings.TrimSpace(s)
	hex := false
	if rest, ok := strings.CutPrefix(strings.ToLower(in), "serial="); ok {
		in, hex = rest, true
	}
	if rest, ok := strings.CutPrefix(strings.ToLower(in), "0x"); ok {
		in, hex = rest, true
	}
	if strings.Contains(in, ":") {
		in, hex = strings.ReplaceAll(in, ":", ""), true
	}
	if strings.ContainsAny(in, "abcdefABCDEF") {
		hex = true
	}
	base := 10
	if hex {
		base = 16
	}
	n, ok := new(big.Int).SetString(in, base)
	if !ok || in == "" || strings.ContainsAny(in, "+-_") || n.Sign() <= 0 {
		return "", fmt.Errorf("serial %q is neither a decimal nor a hexadecimal certificate serial", s)
	}
	return n.String(), nil
}
