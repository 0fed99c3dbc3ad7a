package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// MaxFileSize bounds the configuration read by Decode and Load; a config
// file is a few kilobytes, so anything larger is a mistake (wrong file).
const MaxFileSize = 1 << 20

// FieldError is one problem with one field, located by its JSON path such
// as "provisioners[1].claims.maxCertDuration". An empty Path means the
// document as a whole.
//
// Decode and Validate return these joined with errors.Join; use errors.As
// or the Unwrap() []error method to inspect them individually.
type FieldError struct {
	Path    string
	Message string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Message
	}
	return e.Path + ": " + e.Message
}

// Decode strictly decodes one configuration object from r, without applying
// defaults or validating. It rejects, reporting all at once with JSON paths:
// unknown fields (matched case-sensitively, unlike encoding/json), duplicate
// fields, values of the wrong JSON type, negative or numeric durations, and
// any data after the object.
//
// A JSON null for a field means "unset", as if the field were absent.
func Decode(r io.Reader) (*Config, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("larger than %d bytes", MaxFileSize)
	}
	if err := checkStrict(data); err != nil {
		return nil, err
	}
	// The structural check above has vetted names and types with paths;
	// encoding/json now does the actual conversion, still strictly, as a
	// backstop.
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, err
	}
	return &c, nil
}

// checkStrict walks the JSON token stream alongside the Config type.
func checkStrict(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	ck := &checker{dec: dec}
	tok, err := dec.Token()
	if err == io.EOF {
		return errors.New("empty input: expected a JSON object")
	}
	if err != nil {
		return syntaxError(data, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("top level must be a JSON object, not %s", tokenKind(tok))
	}
	if err := ck.object("", reflect.TypeFor[Config]()); err != nil {
		return syntaxError(data, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		ck.errs = append(ck.errs, &FieldError{Message: fmt.Sprintf(
			"unexpected data after the top-level JSON object at %s", position(data, dec.InputOffset()))})
	}
	return errors.Join(ck.errs...)
}

// syntaxError turns a decoder error into one with a line and column, which
// is what someone editing the file needs.
func syntaxError(data []byte, err error) error {
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		return fmt.Errorf("invalid JSON at %s: %w", position(data, se.Offset), err)
	}
	if err == io.ErrUnexpectedEOF || err == io.EOF {
		return fmt.Errorf("invalid JSON: unexpected end of input")
	}
	return fmt.Errorf("invalid JSON: %w", err)
}

// position renders a byte offset as "line L, column C" (1-based).
func position(data []byte, off int64) string {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	before := data[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := len(before) - bytes.LastIndexByte(before, '\n')
	return fmt.Sprintf("line %d, column %d", line, col)
}

// checker validates the shape of a JSON document against a Go type. It
// collects field problems in errs and returns only fatal (syntax) errors.
// It recurses only along the Go type, which is shallow; values it does not
// expect are skipped iteratively, so hostile nesting cannot exhaust the
// stack.
type checker struct {
	dec  *json.Decoder
	errs []error
}

func (ck *checker) addf(path, format string, args ...any) {
	ck.errs = append(ck.errs, &FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
}

// value checks the next value in the stream against t.
func (ck *checker) value(path string, t reflect.Type) error {
	tok, err := ck.dec.Token()
	if err != nil {
		return err
	}
	if tok == nil {
		return nil // null: unset
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == reflect.TypeFor[Duration]() {
		if s, ok := tok.(string); ok {
			if _, err := parseDuration(s); err != nil {
				ck.addf(path, "%v", err)
			}
			return nil
		}
		ck.addf(path, "%v", errDurationNotString(tokenKind(tok)))
		return ck.skipRest(tok)
	}
	switch t.Kind() {
	case reflect.Struct:
		if d, ok := tok.(json.Delim); ok && d == '{' {
			return ck.object(path, t)
		}
		ck.addf(path, "must be a JSON object, not %s", tokenKind(tok))
	case reflect.Slice:
		if d, ok := tok.(json.Delim); ok && d == '[' {
			for i := 0; ck.dec.More(); i++ {
				if err := ck.value(fmt.Sprintf("%s[%d]", path, i), t.Elem()); err != nil {
					return err
				}
			}
			_, err := ck.dec.Token() // ']'
			return err
		}
		ck.addf(path, "must be a JSON array, not %s", tokenKind(tok))
	case reflect.String:
		if _, ok := tok.(string); !ok {
			ck.addf(path, "must be a JSON string, not %s", tokenKind(tok))
		}
	case reflect.Bool:
		if _, ok := tok.(bool); !ok {
			ck.addf(path, "must be true or false, not %s", tokenKind(tok))
		}
	case reflect.Int:
		n, ok := tok.(json.Number)
		if !ok {
			ck.addf(path, "must be an integer, not %s", tokenKind(tok))
			break
		}
		if v, err := n.Int64(); err != nil || reflect.Zero(t).OverflowInt(v) {
			ck.addf(path, "must be an integer, not %s", n)
		}
	}
	return ck.skipRest(tok)
}

// object checks the members of an object whose '{' was just read.
func (ck *checker) object(path string, t reflect.Type) error {
	fields := jsonFields(t)
	seen := make(map[string]bool)
	for ck.dec.More() {
		tok, err := ck.dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string) // object keys are always strings
		if seen[key] {
			ck.addf(path, "json: duplicate field %q", key)
		}
		seen[key] = true
		ft, ok := fields[key]
		if !ok {
			msg := fmt.Sprintf("json: unknown field %q", key)
			switch name, ok := closestField(key, fields); {
			case ok && strings.EqualFold(name, key):
				msg += fmt.Sprintf(" (field names are case-sensitive: did you mean %q?)", name)
			case ok:
				msg += fmt.Sprintf(" (did you mean %q?)", name)
			}
			ck.addf(path, "%s", msg)
			if err := ck.skipValue(); err != nil {
				return err
			}
			continue
		}
		if err := ck.value(joinPath(path, key), ft); err != nil {
			return err
		}
	}
	_, err := ck.dec.Token() // '}'
	return err
}

// skipValue consumes the next complete value.
func (ck *checker) skipValue() error {
	tok, err := ck.dec.Token()
	if err != nil {
		return err
	}
	return ck.skipRest(tok)
}

// skipRest consumes the rest of a value whose first token was tok.
func (ck *checker) skipRest(tok json.Token) error {
	d, ok := tok.(json.Delim)
	if !ok || (d != '{' && d != '[') {
		return nil
	}
	for depth := 1; depth > 0; {
		tok, err := ck.dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
	}
	return nil
}

// jsonFields maps the JSON names of t's fields to their types, following
// the encoding/json tag rules used in this package (no embedding).
func jsonFields(t reflect.Type) map[string]reflect.Type {
	m := make(map[string]reflect.Type, t.NumField())
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	return m
}

func tokenKind(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number, float64:
		return "a number"
	case string:
		return "a string"
	case json.Delim:
		if v == '{' {
			return "an object"
		}
		return "an array"
	}
	return fmt.Sprintf("%T", tok)
}

func joinPath(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

// closestField is the field name a misspelt key most likely meant: the
// nearest by edit distance, ignoring case, if it is close enough to be a
// typo (at most 1 edit for short names, 2 from 6 letters on). Ties go to
// the first name in sort order, so the message is the same every time.
func closestField[V any](key string, fields map[string]V) (string, bool) {
	best, bestDist := "", -1
	lk := strings.ToLower(key)
	for name := range fields {
		d := editDistance(lk, strings.ToLower(name))
		if bestDist < 0 || d < bestDist || (d == bestDist && name < best) {
			best, bestDist = name, d
		}
	}
	limit := 1
	if len(key) >= 6 {
		limit = 2
	}
	return best, bestDist >= 0 && bestDist <= limit
}

// editDistance is the optimal string alignment distance of a and b: the
// fewest insertions, deletions, substitutions and swaps of two adjacent
// bytes that turn one into the other ("trustDomian" is one swap from
// "trustdomain").
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
