package workload

import (
	"io/fs"
	"slices"
	"strings"
	"testing"
)

func TestParseAddr(t *testing.T) {
	t.Parallel()
	long := "/" + strings.Repeat("a", MaxSocketPath)
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: "unix:///run/crank/agent.sock", want: "/run/crank/agent.sock"},
		{in: "unix:/run/crank/agent.sock", want: "/run/crank/agent.sock"},
		{in: "/run/crank/agent.sock", want: "/run/crank/agent.sock"},
		{in: "unix:///run//crank/../crank/agent.sock", want: "/run/crank/agent.sock"},
		{in: "", wantErr: true},
		{in: "unix://", wantErr: true},
		{in: "unix:///", wantErr: true},
		{in: "unix:relative.sock", wantErr: true},
		{in: "relative.sock", wantErr: true},
		{in: "unix://host/path.sock", wantErr: true},
		{in: "unix://user@/path.sock", wantErr: true},
		{in: "unix:///path.sock?x=1", wantErr: true},
		{in: "unix:///path.sock?", wantErr: true},
		{in: "unix:///path.sock#frag", wantErr: true},
		{in: "tcp://127.0.0.1:8081", wantErr: true},
		{in: "unix://" + long, wantErr: true},
		{in: "/a\x00b", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := ParseAddr(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseAddr(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseMode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    fs.FileMode
		wantErr bool
	}{
		{in: "0600", want: 0o600},
		{in: "600", want: 0o600},
		{in: "0o660", want: 0o660},
		{in: "0666", want: 0o666},
		{in: "0400", wantErr: true},
		{in: "0060", wantErr: true},
		{in: "1777", wantErr: true},
		{in: "4600", wantErr: true},
		{in: "0x180", wantErr: true},
		{in: "rw-------", wantErr: true},
		{in: "", wantErr: true},
		{in: "0o", wantErr: true},
		{in: "-600", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := ParseMode(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseMode(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseAllowList(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		uids    []uint32
		names   []string
		wantErr bool
	}{
		{in: "1000", uids: []uint32{1000}},
		{in: "0,1000 alice,bob.smith", uids: []uint32{0, 1000}, names: []string{"alice", "bob.smith"}},
		{in: " www-data ,\tsvc_1 ", names: []string{"www-data", "svc_1"}},
		{in: "machine$", names: []string{"machine$"}},
		{in: "4294967294", uids: []uint32{4294967294}},
		{in: "4294967295", wantErr: true},
		{in: "99999999999", wantErr: true},
		{in: "", wantErr: true},
		{in: " , ", wantErr: true},
		{in: "-1", wantErr: true},
		{in: "-alice", wantErr: true},
		{in: "al:ice", wantErr: true},
		{in: "$", wantErr: true},
		{in: "a$b", wantErr: true},
		{in: "al/ice", wantErr: true},
		{in: strings.Repeat("a", 33), wantErr: true},
		{in: strings.Repeat("1,", maxAllowEntries+1), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := ParseAllowList(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseAllowList(%q): %v, want error %v", tt.in, err, tt.wantErr)
			}
			if !slices.Equal(got.UIDs, tt.uids) || !slices.Equal(got.Names, tt.names) {
				t.Errorf("ParseAllowList(%q) = %+v, want uids %v names %v", tt.in, got, tt.uids, tt.names)
			}
		})
	}
}

func FuzzParseAddr(f *testing.F) {
	for _, s := range []string{"unix:///run/a.sock", "unix:/a", "/a/b", "unix://h/p", "unix:///p?q#f", "tcp://1.2.3.4:5", "unix:%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseAddr(s)
		if err != nil {
			return
		}
		if !strings.HasPrefix(p, "/") || p == "/" || len(p) > MaxSocketPath || strings.ContainsRune(p, 0) {
			t.Fatalf("ParseAddr(%q) = %q: not a usable absolute socket path", s, p)
		}
		// The canonical form parses to the same path.
		if p2, err := ParseAddr(Addr(p)); err != nil || p2 != p {
			t.Fatalf("ParseAddr(Addr(%q)) = %q, %v", p, p2, err)
		}
	})
}

func FuzzParseMode(f *testing.F) {
	for _, s := range []string{"0600", "660", "0o666", "7777", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMode(s)
		if err != nil {
			return
		}
		if m&^0o777 != 0 || m&0o600 != 0o600 {
			t.Fatalf("ParseMode(%q) = %v", s, m)
		}
	})
}

func FuzzParseAllowList(f *testing.F) {
	for _, s := range []string{"1000", "0,alice bob", "machine$", "-1", "4294967295", "a:b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		al, err := ParseAllowList(s)
		if err != nil {
			return
		}
		if n := len(al.UIDs) + len(al.Names); n == 0 || n > maxAllowEntries {
			t.Fatalf("ParseAllowList(%q): %d entries", s, n)
		}
		for _, u := range al.UIDs {
			if u == 1<<32-1 {
				t.Fatalf("ParseAllowList(%q): uid -1 accepted", s)
			}
		}
		for _, n := range al.Names {
			if !validUserName(n) || isDigits(n) || strings.ContainsAny(n, ", \t\n:/") {
				t.Fatalf("ParseAllowList(%q): name %q", s, n)
			}
		}
	})
}
