package workload

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
)

// MaxSocketPath is the longest Unix socket path the kernel accepts (sun_path
// holds 108 bytes with the terminating NUL).
const MaxSocketPath = 107

// ParseAddr parses a Workload API address as go-spiffe and SPIRE write it in
// SPIFFE_ENDPOINT_SOCKET: unix:///abs/path or unix:/abs/path; a bare
// absolute path is accepted too. It returns the socket's clean path.
// Relative paths, hosts, user info, queries, fragments and other schemes
// (tcp: the API is served only on a Unix socket) are refused.
func ParseAddr(s string) (string, error) {
	if s == "" {
		return "", errors.New("empty address")
	}
	p := s
	if !strings.HasPrefix(s, "/") {
		u, err := url.Parse(s)
		if err != nil {
			return "", fmt.Errorf("address %q: %w", s, err)
		}
		switch {
		case u.Scheme != "unix":
			return "", fmt.Errorf("address %q: want unix:///absolute/path (the Workload API is served on a Unix socket only)", s)
		case u.Opaque != "":
			return "", fmt.Errorf("address %q: want unix:///absolute/path, not a relative path", s)
		case u.User != nil, u.Host != "":
			return "", fmt.Errorf("address %q: a unix address has no host or user (three slashes: unix:///path)", s)
		case u.RawQuery != "" || u.ForceQuery, u.Fragment != "":
			return "", fmt.Errorf("address %q: a unix address has no query or fragment", s)
		}
		p = u.Path
	}
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("address %q: the socket path must be absolute", s)
	}
	if strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("address %q: NUL in path", s)
	}
	p = filepath.Clean(p)
	if p == "/" {
		return "", fmt.Errorf("address %q: no socket file name", s)
	}
	if len(p) > MaxSocketPath {
		return "", fmt.Errorf("socket path %s is %d bytes long; Unix sockets allow at most %d", p, len(p), MaxSocketPath)
	}
	return p, nil
}

// Addr is the address of the socket at path as SPIFFE_ENDPOINT_SOCKET
// holds it: unix:///path, with '%', '?' and '#' escaped.
func Addr(path string) string { return (&url.URL{Scheme: "unix", Path: path}).String() }

// ParseMode parses the socket's permission bits in octal (0600, 660). The
// owner must keep read and write (connecting needs write); set-id and
// sticky bits are refused.
func ParseMode(s string) (fs.FileMode, error) {
	n, err := strconv.ParseUint(strings.TrimPrefix(s, "0o"), 8, 32)
	if err != nil || s == "" {
		return 0, fmt.Errorf("mode %q: want octal permission bits such as 0600", s)
	}
	if n&^0o777 != 0 {
		return 0, fmt.Errorf("mode %q: only permission bits (at most 0777)", s)
	}
	if n&0o600 != 0o600 {
		return 0, fmt.Errorf("mode %q: the owner needs read and write (0600)", s)
	}
	return fs.FileMode(n), nil
}

// AllowList is a parsed list of Unix users: numeric uids and user names,
// which the caller resolves (user lookup is the environment's business).
type AllowList struct {
	UIDs  []uint32
	Names []string
}

// maxAllowEntries bounds the allow-list.
const maxAllowEntries = 256

// ParseAllowList parses users separated by commas or white space: decimal
// uids (0 to 4294967294) or user names (letters, digits, '_', '.', '-', not
// starting with '-', at most 32 bytes, optionally ending in '$'). An empty
// list is an error: no allow-list is written as no flag.
func ParseAllowList(s string) (AllowList, error) {
	var al AllowList
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
	if len(fields) == 0 {
		return al, errors.New("empty allow-list: name at least one user or uid")
	}
	if len(fields) > maxAllowEntries {
		return al, fmt.Errorf("allow-list of %d entries: at most %d", len(fields), maxAllowEntries)
	}
	for _, f := range fields {
		if isDigits(f) {
			n, err := strconv.ParseUint(f, 10, 32)
			if err != nil || n == 1<<32-1 {
				return AllowList{}, fmt.Errorf("allow-list: uid %q out of range", f)
			}
			al.UIDs = append(al.UIDs, uint32(n))
			continue
		}
		if !validUserName(f) {
			return AllowList{}, fmt.Errorf("allow-list: %q is neither a uid nor a user name", f)
		}
		al.Names = append(al.Names, f)
	}
	return al, nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func validUserName(s string) bool {
	if s == "" || len(s) > 32 || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
		case c == '$' && i == len(s)-1 && i > 0:
		default:
			return false
		}
	}
	return true
}
