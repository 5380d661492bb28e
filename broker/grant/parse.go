package grant

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// MaxDocumentSize is the largest grants input Parse accepts, in bytes.
const MaxDocumentSize = 4 << 20

// Parse decodes one or more AccessGrants from YAML or JSON and validates each of them.
// Documents are separated by "---" lines; empty documents (and an empty input) are skipped, so
// an empty file means no grants. Decoding is strict: unknown and duplicate fields are errors.
// Every problem of every document is reported at once as Errors (matching ErrInvalidGrant),
// each naming its document as "document N (line L)", counting from 1, and its field path.
// Two grants with the same name also match ErrDuplicateGrant. Parse returns the grants as
// written, without defaults: NewSet applies them.
func Parse(data []byte) ([]AccessGrant, error) {
	if len(data) > MaxDocumentSize {
		return nil, Errors{{Detail: fmt.Sprintf("input is %d bytes, more than the limit of %d", len(data), MaxDocumentSize)}}
	}
	var (
		grants []AccessGrant
		errs   Errors
		names  = map[string]string{}
		dup    bool
	)
	for i, doc := range splitDocuments(data) {
		where := fmt.Sprintf("document %d (line %d)", i+1, doc.line)
		g, docErrs, decoded := parseDocument(doc.data)
		if g == nil && len(docErrs) == 0 {
			continue // empty document
		}
		if decoded {
			v := &validator{}
			v.object(g)
			docErrs = append(docErrs, v.errs...)
		}
		if g != nil && g.Name != "" {
			if other, ok := names[g.Name]; ok {
				docErrs = append(docErrs, &FieldError{Field: "metadata.name", Detail: fmt.Sprintf("duplicate grant name %s (also %s): grant names must be unique", quote(g.Name), other)})
				dup = true
			} else {
				names[g.Name] = where
			}
		}
		for _, e := range docErrs {
			e.Document = where
		}
		errs = append(errs, docErrs...)
		if len(docErrs) == 0 {
			grants = append(grants, *g)
		}
	}
	if len(errs) > 0 {
		if dup {
			return nil, &duplicateError{errs}
		}
		return nil, errs
	}
	return grants, nil
}

// duplicateError is Errors that also matches ErrDuplicateGrant.
type duplicateError struct{ Errors }

func (e *duplicateError) Is(target error) bool {
	return target == ErrDuplicateGrant || target == ErrInvalidGrant
}

// Unwrap gives errors.As access to the Errors list.
func (e *duplicateError) Unwrap() error { return e.Errors }

// ExplicitlyEmpty reports whether data says "no grants" on purpose: one document that is the
// empty list "[]" (comments and blank documents aside). An empty file, or one of comments only,
// also parses to no grants, but may be a file caught half-written.
func ExplicitlyEmpty(data []byte) bool {
	explicit := false
	for _, doc := range splitDocuments(data) {
		j, err := yaml.YAMLToJSONStrict(doc.data)
		if err != nil {
			return false
		}
		switch j = bytes.TrimSpace(j); {
		case len(j) == 0, bytes.Equal(j, []byte("null")):
		case bytes.Equal(j, []byte("[]")):
			explicit = true
		default:
			return false
		}
	}
	return explicit
}

type document struct {
	data []byte
	line int // 1-based line of the document's first line
}

// splitDocuments cuts YAML input at "---" separator lines (a line that is exactly "---", or
// "---" followed by a space or tab and more content, which then belongs to the next document).
// Every separator starts a new document, so a forgotten separator never silently drops a grant:
// the YAML decoder would read only the first of two documents in one chunk.
func splitDocuments(data []byte) []document {
	var (
		docs  []document
		cur   bytes.Buffer
		start = 1
		line  = 0
	)
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	for len(data) > 0 {
		line++
		var l []byte
		if k := bytes.IndexByte(data, '\n'); k >= 0 {
			l, data = data[:k+1], data[k+1:]
		} else {
			l, data = data, nil
		}
		trimmed := bytes.TrimRight(l, "\r\n")
		if bytes.Equal(trimmed, []byte("---")) || bytes.HasPrefix(trimmed, []byte("--- ")) || bytes.HasPrefix(trimmed, []byte("---\t")) {
			docs = append(docs, document{data: bytes.Clone(cur.Bytes()), line: start})
			cur.Reset()
			start = line
			cur.Write(trimmed[3:])
			cur.WriteByte('\n')
			continue
		}
		cur.Write(l)
	}
	docs = append(docs, document{data: bytes.Clone(cur.Bytes()), line: start})
	return docs
}

// parseDocument decodes one YAML or JSON document. It returns (nil, nil, false) for an empty
// one; decoded is true when g holds the whole document and is worth validating.
func parseDocument(y []byte) (g *AccessGrant, errs Errors, decoded bool) {
	j, err := yaml.YAMLToJSONStrict(y)
	if err != nil {
		return nil, Errors{{Detail: "not valid YAML: " + redactYAMLError(err)}}, false
	}
	j = bytes.TrimSpace(j)
	if bytes.Equal(j, []byte("null")) || len(j) == 0 || bytes.Equal(j, []byte("[]")) {
		return nil, nil, false // "[]" is the explicit empty list: no grants, on purpose
	}
	if j[0] != '{' {
		return nil, Errors{{Detail: "a document must be an AccessGrant object (apiVersion, kind, metadata, spec)"}}, false
	}

	// encoding/json reports a metav1.Duration parse error without its field; find those
	// first, with their paths, in a generic decode.
	var generic map[string]any
	if _, err := kjson.UnmarshalStrict(j, &generic); err == nil {
		if errs := durationProblems(generic); len(errs) > 0 {
			return &AccessGrant{}, errs, false
		}
	}

	g = &AccessGrant{}
	strict, err := kjson.UnmarshalStrict(j, g, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return g, Errors{decodeError(err)}, false
	}
	for _, se := range strict {
		errs = append(errs, strictError(se))
	}
	switch {
	case g.APIVersion == "":
		errs = append(errs, &FieldError{Field: "apiVersion", Detail: fmt.Sprintf("is required: set it to %q", APIVersion)})
	case g.APIVersion != APIVersion:
		errs = append(errs, &FieldError{Field: "apiVersion", Detail: fmt.Sprintf("must be %q, got %s", APIVersion, quote(g.APIVersion))})
	}
	switch {
	case g.Kind == "":
		errs = append(errs, &FieldError{Field: "kind", Detail: fmt.Sprintf("is required: set it to %q", Kind)})
	case g.Kind != Kind:
		errs = append(errs, &FieldError{Field: "kind", Detail: fmt.Sprintf("must be %q, got %s", Kind, quote(g.Kind))})
	}
	return g, errs, true
}

// strictError turns sigs.k8s.io/json's `unknown field "spec.x"` into a FieldError on spec.x.
func strictError(err error) *FieldError {
	msg := err.Error()
	for _, p := range []struct{ prefix, detail string }{
		{"unknown field ", "unknown field: remove it or check its spelling"},
		{"duplicate field ", "duplicate field: set it once"},
	} {
		if rest, ok := strings.CutPrefix(msg, p.prefix); ok {
			if field, uerr := unquote(rest); uerr == nil {
				return &FieldError{Field: field, Detail: p.detail}
			}
		}
	}
	return &FieldError{Detail: oneLine(msg)}
}

func unquote(s string) (string, error) {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return "", errors.New("not quoted")
	}
	return s[1 : len(s)-1], nil
}

// decodeError rewrites a JSON type error without repeating the offending value.
func decodeError(err error) *FieldError {
	msg := err.Error()
	// "json: cannot unmarshal number into Go struct field S.spec.subjects.namespace of type string"
	if rest, ok := strings.CutPrefix(msg, "json: cannot unmarshal "); ok {
		got, rest, _ := strings.Cut(rest, " into ")
		got, _, _ = strings.Cut(got, " ") // drop a number's value
		if after, ok := strings.CutPrefix(rest, "Go struct field "); ok {
			path, typ, _ := strings.Cut(after, " of type ")
			if k := strings.IndexByte(path, '.'); k >= 0 {
				path = path[k+1:] // drop the Go type name
			}
			return &FieldError{Field: path, Detail: fmt.Sprintf("wrong type: expected %s, got %s", jsonTypeName(typ), got)}
		}
		return &FieldError{Detail: "a document must be an AccessGrant object (apiVersion, kind, metadata, spec)"}
	}
	return &FieldError{Detail: oneLine(msg)}
}

func jsonTypeName(goType string) string {
	switch goType {
	case "string":
		return "a string"
	case "int32", "int64", "int":
		return "an integer"
	case "bool":
		return "a boolean"
	}
	if strings.HasPrefix(goType, "[]") {
		return "a list"
	}
	if strings.HasPrefix(goType, "map[") || strings.Contains(goType, ".") {
		return "an object"
	}
	return goType
}

// yamlQuoted matches what the YAML decoder quotes in its errors: values ("cannot decode !!str
// `hunter2` as a !!int"), anchors ('x'), keys ("x"), and Go-syntax dumps of invalid keys.
var yamlQuoted = regexp.MustCompile("`[^`]*`|'[^']*'|\"(?:[^\"\\\\]|\\\\.)*\"|invalid map key: .*")

// redactYAMLError keeps a YAML error's line and kind but drops anything it quotes: a grants
// file is not secret, but an administrator may paste a token into the wrong place.
func redactYAMLError(err error) string {
	return oneLine(yamlQuoted.ReplaceAllStringFunc(err.Error(), func(m string) string {
		if strings.HasPrefix(m, "invalid map key") {
			return "invalid map key: a key must be a string"
		}
		return "<value>"
	}))
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// durationProblems checks the duration fields of a generically decoded grant.
func durationProblems(doc map[string]any) Errors {
	spec, _ := doc["spec"].(map[string]any)
	secrets, _ := spec["secrets"].([]any)
	var errs Errors
	check := func(field string, v any) {
		s, ok := v.(string)
		if !ok {
			if v != nil {
				errs = append(errs, &FieldError{Field: field, Detail: `wrong type: expected a duration string such as "30s", "5m" or "24h"`})
			}
			return
		}
		if _, err := time.ParseDuration(s); err != nil {
			errs = append(errs, &FieldError{Field: field, Detail: fmt.Sprintf(`%s is not a duration: use Go duration syntax such as "30s", "5m" or "24h"`, quote(s))})
		}
	}
	for i, s := range secrets {
		sm, _ := s.(map[string]any)
		f := fmt.Sprintf("spec.secrets[%d]", i)
		if ttl, ok := sm["ttl"].(map[string]any); ok {
			if v, ok := ttl["min"]; ok {
				check(f+".ttl.min", v)
			}
			if v, ok := ttl["max"]; ok {
				check(f+".ttl.max", v)
			}
		}
		if r, ok := sm["refresh"].(map[string]any); ok {
			if v, ok := r["interval"]; ok {
				check(f+".refresh.interval", v)
			}
		}
	}
	return errs
}
