package admin_test

import (
	"testing"

	"github.com/crank-platform/crank-ca/internal/admin"
)

func TestParseSerial(t *testing.T) {
	t.Parallel()
	const dec = "49148647040360831595940012879441059295"
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: dec, want: dec},
		{in: "  " + dec + "\n", want: dec},
		{in: "0x24FA4A4C4F9D8B33E6C0E4FA14A49A5F", want: "49151789007181474135289072894882388575"},
		{in: "24FA4A4C4F9D8B33E6C0E4FA14A49A5F", want: "49151789007181474135289072894882388575"},
		{in: "24:fa:4a:4c:4f:9d:8b:33:e6:c0:e4:fa:14:a4:9a:5f", want: "49151789007181474135289072894882388575"},
		{in: "serial=24FA4A4C4F9D8B33E6C0E4FA14A49A5F", want: "49151789007181474135289072894882388575"},
		{in: "serial=1000", want: "4096"}, // openssl's -serial is always hex
		{in: "0x10", want: "16"},
		{in: "10", want: "10"},
		{in: "", wantErr: true},
		{in: "0x", wantErr: true},
		{in: "-5", wantErr: true},
		{in: "0", wantErr: true},
		{in: "12g4", wantErr: true},
		{in: "1_000", wantErr: true},
		{in: "+7", wantErr: true},
		{in: "::", wantErr: true},
	}
	for _, tt := range tests {
		got, err := admin.ParseSerial(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseSerial(%q) = %q, %v; want %q (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}
