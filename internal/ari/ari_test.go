package ari

import (
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"math/big"
	"strconv"
	"testing"
	"time"
)

// certID builds a certID the way lego (certificate.MakeARICertID) does.
func certID(aki []byte, serial *big.Int) string {
	der, _ := asn1.Marshal(serial)
	return base64.RawURLEncoding.EncodeToString(aki) + "." + base64.RawURLEncoding.EncodeToString(der[2:])
}

func TestParseCertID(t *testing.T) {
	t.Parallel()
	aki := []byte{1, 2, 3, 4}
	for _, s := range []*big.Int{big.NewInt(1), big.NewInt(128), new(big.Int).Lsh(big.NewInt(1), 159)} {
		got, err := ParseCertID(certID(aki, s))
		if err != nil || got.Serial.Cmp(s) != 0 || string(got.AKI) != string(aki) {
			t.Errorf("ParseCertID(%s) = %+v, %v", s, got, err)
		}
	}
	for _, bad := range []string{"", "abc", ".", "AQID.", ".AQ", "AQID.gA", "AQID.AAE", "AQID.AQ==", "AQID.AQ.AQ", "A!ID.AQ"} {
		if _, err := ParseCertID(bad); !errors.Is(err, ErrMalformedCertID) {
			t.Errorf("ParseCertID(%q) = %v, want ErrMalformedCertID", bad, err)
		}
	}
}

func FuzzParseCertID(f *testing.F) {
	f.Add(certID([]byte{1}, big.NewInt(7)))
	f.Add("x.y")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseCertID(s)
		if err == nil && (id.Serial == nil || id.Serial.Sign() < 0) {
			t.Fatalf("accepted %q with serial %v", s, id.Serial)
		}
	})
}

var band = Band{Start: 0.5, End: 0.8, Width: 0.05, MinRetryAfter: 5 * time.Second, MaxRetryAfter: time.Hour}

func TestWindowInsideBand(t *testing.T) {
	t.Parallel()
	nb := time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)
	na := nb.Add(24 * time.Hour)
	for i := range 1000 {
		w := band.Window(strconv.Itoa(i), nb, na, time.Time{})
		if w.Start.Before(nb.Add(12*time.Hour-time.Second)) || w.End.After(nb.Add(time.Duration(0.8*float64(24*time.Hour))+time.Second)) || !w.End.After(w.Start) {
			t.Fatalf("serial %d: window %s..%s outside the band", i, w.Start, w.End)
		}
		if w2 := band.Window(strconv.Itoa(i), nb, na, time.Time{}); w2 != w {
			t.Fatal("window is not deterministic")
		}
	}
	if w := band.Window("1", nb, na, time.Time{}); w.RetryAfter != time.Hour {
		t.Errorf("24h certificate Retry-After %s, want the 1h cap", w.RetryAfter)
	}
	if w := band.Window("1", nb, nb.Add(time.Minute), time.Time{}); w.RetryAfter != 5*time.Second {
		t.Errorf("1m certificate Retry-After %s, want the 5s floor", w.RetryAfter)
	}
	now := nb.Add(time.Hour)
	if w := band.Window("1", nb, na, now); !w.Start.Equal(now) || !w.End.After(now) {
		t.Errorf("renewNow window %s..%s, want it to start now", w.Start, w.End)
	}
}

// TestWindowSpread: 200 certificates issued in the same second spread over
// the band: no tenth of it holds more than a quarter of the window starts.
func TestWindowSpread(t *testing.T) {
	t.Parallel()
	nb := time.Now().Truncate(time.Second)
	na := nb.Add(24 * time.Hour)
	var buckets [10]int
	for i := range 200 {
		serial := new(big.Int).Lsh(big.NewInt(int64(i+1)), 100).String()
		w := band.Window(serial, nb, na, time.Time{})
		frac := float64(w.Start.Sub(nb)) / float64(na.Sub(nb))
		b := int((frac - band.Start) / (band.End - band.Start) * 10)
		buckets[min(max(b, 0), 9)]++
	}
	for i, n := range buckets {
		if n > 50 {
			t.Errorf("tenth %d holds %d of 200 windows: %v", i, n, buckets)
		}
	}
	t.Logf("window starts per tenth of the band: %v", buckets)
}
