package provisioner_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/crank-platform/crank-ca/provisioner"
)

func TestCovers(t *testing.T) {
	t.Parallel()
	id := provisioner.Identity{
		Worker:   "api",
		SPIFFEID: mustID(t, "spiffe://crank.internal/worker/api"),
		DNSNames: []string{"api.workers.crank.internal", "api.crank.internal"},
		IPs:      []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::1"), netip.MustParseAddr("fd00::a")},
	}
	tests := []struct {
		typ, value string
		want       bool
	}{
		{"dns", "api.workers.crank.internal", true},
		{"dns", "API.Workers.Crank.Internal", true},
		{"dns", "api.crank.internal", true},
		{"dns", "db.workers.crank.internal", false},
		{"dns", "*.workers.crank.internal", false},
		{"dns", "*", false},
		{"dns", "", false},
		{"dns", "api.workers.crank.internal.", false},
		{"dns", "10.0.0.1", false},
		{"DNS", "api.crank.internal", false},
		{"ip", "10.0.0.1", true},
		{"ip", "::ffff:10.0.0.1", true},
		{"ip", "::1", true},
		{"ip", "0:0::1", true},
		{"ip", "0000:0000:0000:0000:0000:0000:0000:0001", true},
		{"ip", "FD00::A", true},
		{"ip", "fe80::1%eth0", false},
		{"ip", "10.0.0.2", false},
		{"ip", "010.0.0.1", false},
		{"ip", "api.crank.internal", false},
		{"ip", "", false},
		{"dns", "::1", false},
		{"email", "api@crank.internal", false},
		{"", "api.crank.internal", false},
	}
	for _, tt := range tests {
		t.Run(tt.typ+"/"+tt.value, func(t *testing.T) {
			t.Parallel()
			if got := id.Covers(tt.typ, tt.value); got != tt.want {
				t.Errorf("Covers(%q, %q) = %v, want %v", tt.typ, tt.value, got, tt.want)
			}
			err := id.CheckIdentifier(tt.typ, tt.value)
			if gotErr := errors.Is(err, provisioner.ErrNameNotAllowed); gotErr == tt.want {
				t.Errorf("CheckIdentifier(%q, %q) = %v, want ErrNameNotAllowed: %v", tt.typ, tt.value, err, !tt.want)
			}
		})
	}
}
