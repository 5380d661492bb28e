package grant

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Limits of the name and path grammars.
const (
	// MaxSecretNameLen is the longest secret name, in bytes (a DNS subdomain's limit).
	MaxSecretNameLen = 253
	// MaxFilePathLen is the longest file path inside a volume, in bytes (Linux PATH_MAX).
	MaxFilePathLen = 4096
	// MaxFileComponentLen is the longest path component, in bytes (Linux NAME_MAX).
	MaxFileComponentLen = 255
	// MaxSPIFFEIDLen is the longest SPIFFE ID or pattern, in bytes (the SPIFFE spec's limit).
	MaxSPIFFEIDLen = 2048
)

var (
	// ErrInvalidSecretName is wrapped by every error of ValidateSecretName.
	ErrInvalidSecretName = errors.New("invalid secret name")
	// ErrInvalidFilePath is wrapped by every error of ValidateFilePath.
	ErrInvalidFilePath = errors.New("invalid file path")
)

// ValidateSecretName checks the grammar of a secret name a workload may request: 1–253 bytes
// of [a-z0-9]([-a-z0-9._]*[a-z0-9])?, without "..". The grammar has no "/" so that a name can
// never be read as a path or a prefix of another name. The error never repeats the name (it may
// come from an untrusted request); callers add it, quoted, where that is safe.
func ValidateSecretName(name string) error {
	bad := func(detail string) error { return fmt.Errorf("%w: %s", ErrInvalidSecretName, detail) }
	switch {
	case name == "":
		return bad("must not be empty")
	case len(name) > MaxSecretNameLen:
		return bad(fmt.Sprintf("must be at most %d bytes, got %d", MaxSecretNameLen, len(name)))
	case strings.IndexByte(name, 0) >= 0:
		return bad("must not contain NUL")
	case strings.IndexByte(name, '/') >= 0:
		return bad(`must not contain "/"`)
	case strings.Contains(name, ".."):
		return bad(`must not contain ".."`)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
		if alnum {
			continue
		}
		if c >= 'A' && c <= 'Z' {
			return bad("must be lower case")
		}
		if (c == '-' || c == '.' || c == '_') && i != 0 && i != len(name)-1 {
			continue
		}
		return bad("must consist of lower case letters, digits, '-', '.' and '_', and start and end with a letter or digit")
	}
	return nil
}

// ValidateFilePath checks a file path relative to a volume root. It rejects rather than
// cleans (CVE-2020-8567): the path must be non-empty, at most 4096 bytes, valid UTF-8 without
// NUL or control characters, relative (no leading "/"), without empty components (no "//" or
// trailing "/"), without "." components, and without components starting with ".." (which
// covers ".." itself and the atomic writer's "..data"-style names). Each component is at most
// 255 bytes. The error never repeats the path.
func ValidateFilePath(p string) error {
	bad := func(detail string) error { return fmt.Errorf("%w: %s", ErrInvalidFilePath, detail) }
	switch {
	case p == "":
		return bad("must not be empty")
	case len(p) > MaxFilePathLen:
		return bad(fmt.Sprintf("must be at most %d bytes, got %d", MaxFilePathLen, len(p)))
	case strings.IndexByte(p, 0) >= 0:
		return bad("must not contain NUL")
	case !utf8.ValidString(p):
		return bad("must be valid UTF-8")
	case p[0] == '/':
		return bad(`must be relative: remove the leading "/"`)
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return bad("must not contain control characters")
		}
	}
	for c := range strings.SplitSeq(p, "/") {
		switch {
		case c == "":
			return bad(`must not contain empty components ("//" or a trailing "/")`)
		case c == ".":
			return bad(`must not contain "." components`)
		case c == "..":
			return bad(`must not contain ".." components`)
		case strings.HasPrefix(c, ".."):
			return bad(`components must not start with ".." (reserved for the atomic writer)`)
		case len(c) > MaxFileComponentLen:
			return bad(fmt.Sprintf("each component must be at most %d bytes, got %d", MaxFileComponentLen, len(c)))
		}
	}
	return nil
}

// spiffePattern is a parsed SPIFFE ID or pattern: an exact trust domain and path segments,
// where a segment "*" matches any one segment.
type spiffePattern struct {
	trustDomain string
	segments    []string
}

// parseSPIFFE parses an ID (wildcards false) or a pattern (wildcards true). It returns a
// detail saying how to fix the input when it is invalid.
func parseSPIFFE(s string, wildcards bool) (spiffePattern, string) {
	const scheme = "spiffe://"
	if len(s) > MaxSPIFFEIDLen {
		return spiffePattern{}, fmt.Sprintf("must be at most %d bytes", MaxSPIFFEIDLen)
	}
	if !strings.HasPrefix(s, scheme) {
		return spiffePattern{}, `must start with "spiffe://"`
	}
	rest := s[len(scheme):]
	td, path, hasPath := strings.Cut(rest, "/")
	if td == "" {
		return spiffePattern{}, "the trust domain is missing: write spiffe://<trust-domain>/<path>"
	}
	if strings.Contains(td, "*") {
		return spiffePattern{}, "the trust domain cannot be a wildcard: name it exactly"
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if !((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_') {
			return spiffePattern{}, "the trust domain may contain only lower case letters, digits, '.', '-' and '_' (no port, user info or upper case)"
		}
	}
	if !hasPath || path == "" {
		return spiffePattern{}, "a path is required, e.g. spiffe://cluster.local/ns/demo/sa/app"
	}
	segs := strings.Split(path, "/")
	for _, seg := range segs {
		switch {
		case seg == "":
			return spiffePattern{}, `the path must not contain empty segments ("//" or a trailing "/")`
		case seg == "." || seg == "..":
			return spiffePattern{}, `the path must not contain "." or ".." segments`
		case seg == "*" && wildcards:
			continue
		case strings.Contains(seg, "*"):
			if wildcards {
				return spiffePattern{}, `a wildcard must be a whole path segment "*", not part of one`
			}
			return spiffePattern{}, `a SPIFFE ID must not contain "*"`
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_') {
				return spiffePattern{}, "path segments may contain only letters, digits, '.', '-' and '_' (no query, fragment or percent-encoding)"
			}
		}
	}
	return spiffePattern{trustDomain: td, segments: segs}, ""
}

// match reports whether the (already parsed, wildcard-free) id matches the pattern: the same
// trust domain, the same number of segments, and each segment equal or "*".
func (p spiffePattern) match(id spiffePattern) bool {
	if p.trustDomain != id.trustDomain || len(p.segments) != len(id.segments) {
		return false
	}
	for i, s := range p.segments {
		if s != "*" && s != id.segments[i] {
			return false
		}
	}
	return true
}
