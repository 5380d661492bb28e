package identity

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// maxJSONDepth bounds nesting in headers and payloads. Kubernetes tokens
// nest three levels deep.
const maxJSONDepth = 16

var (
	errDuplicateKey = errors.New("duplicate key")
	errBadJSON      = errors.New("bad json")
)

// checkJSONObject reports errDuplicateKey if any object in data, at any
// depth, holds the same key twice, and errBadJSON if data is not exactly one
// JSON object. Keys are compared after Unicode simple case folding because
// encoding/json matches struct fields case-insensitively: {"iss":…,"ISS":…}
// is a duplicate for us, or a decoder could see a different issuer than a
// reviewer does.
func checkJSONObject(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	type frame struct {
		object    bool
		expectKey bool
		keys      map[string]struct{}
	}
	var stack []*frame
	valueDone := func() {
		if n := len(stack); n > 0 && stack[n-1].object {
			stack[n-1].expectKey = true
		}
	}
	first := true
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			if len(stack) != 0 || first {
				return errBadJSON
			}
			return nil
		}
		if err != nil {
			return errBadJSON
		}
		if first {
			if d, ok := tok.(json.Delim); !ok || d != '{' {
				return errBadJSON
			}
		} else if len(stack) == 0 {
			return errBadJSON // trailing data after the top-level object
		}
		first = false
		var top *frame
		if n := len(stack); n > 0 {
			top = stack[n-1]
		}
		if top != nil && top.object && top.expectKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				valueDone()
				continue
			}
			key, ok := tok.(string)
			if !ok {
				return errBadJSON
			}
			k := foldKey(key)
			if _, dup := top.keys[k]; dup {
				return errDuplicateKey
			}
			top.keys[k] = struct{}{}
			top.expectKey = false
			continue
		}
		switch d := tok.(type) {
		case json.Delim:
			switch d {
			case '{', '[':
				if len(stack) >= maxJSONDepth {
					return errBadJSON
				}
				stack = append(stack, &frame{object: d == '{', expectKey: d == '{', keys: map[string]struct{}{}})
			case ']':
				if top == nil || top.object {
					return errBadJSON
				}
				stack = stack[:len(stack)-1]
				valueDone()
			default:
				return errBadJSON
			}
		default:
			valueDone()
		}
	}
}

// foldKey maps every rune to the smallest rune of its simple case-folding
// orbit, so that keys equal under strings.EqualFold (including the Kelvin
// sign and long s) fold to the same string.
func foldKey(s string) string {
	return strings.Map(func(r rune) rune {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			if f < m {
				m = f
			}
		}
		return m
	}, s)
}

// object decodes a JSON object into raw members. Lookups are exact: a claim
// is only read under its exact name.
type object map[string]json.RawMessage

func parseObject(data []byte) (object, bool) {
	if isNull(data) {
		return nil, true
	}
	var o object
	if err := json.Unmarshal(data, &o); err != nil {
		return nil, false
	}
	return o, true
}

func isNull(data json.RawMessage) bool {
	return len(data) == 0 || string(data) == "null"
}

// str returns the string member key. present is false for a missing or null
// member; ok is false when the member is not a string.
func (o object) str(key string) (v string, present, ok bool) {
	raw, found := o[key]
	if !found || isNull(raw) {
		return "", false, true
	}
	if raw[0] != '"' {
		return "", true, false
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", true, false
	}
	return v, true, true
}

// obj returns the object member key (nil when missing or null).
func (o object) obj(key string) (object, bool) {
	raw, found := o[key]
	if !found || isNull(raw) {
		return nil, true
	}
	if raw[0] != '{' {
		return nil, false
	}
	return parseObject(raw)
}

// maxUnixSeconds is 9999-12-31T23:59:59Z; larger dates are not timestamps.
const maxUnixSeconds = 253402300799

// numericDate reads a JWT NumericDate (RFC 7519 §2): a JSON number of
// seconds since the epoch, possibly fractional. present is false for a
// missing or null member.
func (o object) numericDate(key string) (t time.Time, present, ok bool) {
	raw, found := o[key]
	if !found || isNull(raw) {
		return time.Time{}, false, true
	}
	if c := raw[0]; c != '-' && (c < '0' || c > '9') {
		return time.Time{}, true, false
	}
	s := string(raw)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > maxUnixSeconds {
			return time.Time{}, true, false
		}
		return time.Unix(n, 0).UTC(), true, true
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > maxUnixSeconds {
		return time.Time{}, true, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC(), true, true
}

// audience reads aud: a string or an array of strings (RFC 7519 §4.1.3).
func (o object) audience() (aud []string, ok bool) {
	raw, found := o["aud"]
	if !found || isNull(raw) {
		return nil, true
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, false
		}
		if s == "" {
			return nil, true
		}
		return []string{s}, true
	case '[':
		var list []json.RawMessage
		if err := json.Unmarshal(raw, &list); err != nil {
			return nil, false
		}
		for _, item := range list {
			if len(item) == 0 || item[0] != '"' {
				return nil, false
			}
			var s string
			if err := json.Unmarshal(item, &s); err != nil {
				return nil, false
			}
			if s != "" {
				aud = append(aud, s)
			}
		}
		return aud, true
	default:
		return nil, false
	}
}

// isDNSLabel reports whether s is an RFC 1123 label as Kubernetes defines it
// (namespace names): lower-case alphanumerics and '-', 1–63 characters,
// starting and ending with an alphanumeric.
func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// isDNSSubdomain reports whether s is an RFC 1123 subdomain as Kubernetes
// defines it (service account, pod and node names): dot-separated labels,
// at most 253 characters.
func isDNSSubdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if !isDNSLabel(label) {
			return false
		}
	}
	return true
}

// isUID accepts Kubernetes UIDs (UUIDs) and similar opaque identifiers while
// keeping what reaches logs and the audit trail short and printable.
func isUID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}
