package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
)

// redacted replaces secrets in String, GoString and LogValue output.
const redacted = "REDACTED"

// String describes the storage with the DSN password replaced by
// "REDACTED", so a Storage (or a Config, via fmt's %v/%+v) can be logged or
// printed without leaking the database password.
func (s Storage) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "type=%s", s.Type)
	if s.Path != "" {
		fmt.Fprintf(&b, " path=%s", s.Path)
	}
	if s.DSN != "" {
		fmt.Fprintf(&b, " dsn=%q", RedactDSN(s.DSN))
	}
	return b.String()
}

// GoString redacts like String so %#v cannot leak the password either.
func (s Storage) GoString() string {
	return fmt.Sprintf("config.Storage{Type:%q, Path:%q, DSN:%q}",
		s.Type, s.Path, RedactDSN(s.DSN))
}

// LogValue redacts like String for structured logging.
func (s Storage) LogValue() slog.Value {
	attrs := []slog.Attr{slog.String("type", s.Type)}
	if s.Path != "" {
		attrs = append(attrs, slog.String("path", s.Path))
	}
	if s.DSN != "" {
		attrs = append(attrs, slog.String("dsn", RedactDSN(s.DSN)))
	}
	return slog.GroupValue(attrs...)
}

// RedactDSN returns dsn with any password (URL userinfo, a "password" query
// parameter, or a password= key) replaced by "REDACTED". A DSN that cannot
// be parsed is replaced entirely: when in doubt, leak nothing.
func RedactDSN(dsn string) string {
	if dsn == "" {
		return ""
	}
	if isURLDSN(dsn) {
		u, err := url.Parse(dsn)
		if err != nil {
			return redacted
		}
		if u.User != nil {
			if _, ok := u.User.Password(); ok {
				u.User = url.UserPassword(u.User.Username(), redacted)
			}
		}
		if q := u.Query(); q.Has("password") {
			q.Set("password", redacted)
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	pairs, err := parseKeyValueDSN(dsn)
	if err != nil {
		return redacted
	}
	parts := make([]string, 0, len(pairs))
	for _, kv := range pairs {
		v := kv.value
		if kv.key == "password" {
			v = redacted
		}
		parts = append(parts, kv.key+"="+quoteDSNValue(v))
	}
	return strings.Join(parts, " ")
}

// isURLDSN reports whether dsn uses the URL form rather than key=value.
func isURLDSN(dsn string) bool {
	return strings.Contains(dsn, "://")
}

// checkDSN validates a PostgreSQL DSN. Its messages never include the DSN
// itself (url.Error would), because validation errors get logged.
func checkDSN(dsn string) error {
	if isURLDSN(dsn) {
		u, err := url.Parse(dsn)
		if err != nil {
			if ue, ok := errors.AsType[*url.Error](err); ok {
				err = ue.Err
			}
			return fmt.Errorf("not a valid URL: %v", err)
		}
		if u.Scheme != "postgres" && u.Scheme != "postgresql" {
			return fmt.Errorf("URL scheme must be \"postgresql\" or \"postgres\", not %q", u.Scheme)
		}
		return nil
	}
	_, err := parseKeyValueDSN(dsn)
	return err
}

type dsnPair struct{ key, value string }

// parseKeyValueDSN parses the libpq key=value form: whitespace-separated
// pairs, optional spaces around '=', values optionally single-quoted with
// backslash escapes. Errors name keys but never values.
func parseKeyValueDSN(s string) ([]dsnPair, error) {
	var pairs []dsnPair
	isSpace := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }
	i := 0
	for {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i == len(s) {
			break
		}
		start := i
		for i < len(s) && (s[i] == '_' || s[i] >= 'a' && s[i] <= 'z' || s[i] >= 'A' && s[i] <= 'Z' || s[i] >= '0' && s[i] <= '9') {
			i++
		}
		key := s[start:i]
		if key == "" {
			return nil, errors.New("expected a URL (postgresql://...) or key=value pairs")
		}
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i == len(s) || s[i] != '=' {
			return nil, fmt.Errorf("missing \"=\" after key %q", key)
		}
		i++
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		var val strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			closed := false
			for i < len(s) {
				c := s[i]
				if c == '\\' && i+1 < len(s) {
					val.WriteByte(s[i+1])
					i += 2
					continue
				}
				if c == '\'' {
					closed = true
					i++
					break
				}
				val.WriteByte(c)
				i++
			}
			if !closed {
				return nil, fmt.Errorf("unterminated quoted value for key %q", key)
			}
		} else {
			for i < len(s) && !isSpace(s[i]) {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				val.WriteByte(s[i])
				i++
			}
		}
		pairs = append(pairs, dsnPair{key, val.String()})
	}
	if len(pairs) == 0 {
		return nil, errors.New("is empty")
	}
	return pairs, nil
}

// quoteDSNValue quotes a key=value DSN value when it needs quoting.
func quoteDSNValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r'\\") {
		return v
	}
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	return "'" + r.Replace(v) + "'"
}
