package vaultref

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Engine is the kind of Vault secrets engine a reference reads from.
type Engine string

// Engines.
const (
	KVv2     Engine = "kv-v2"
	KVv1     Engine = "kv-v1"
	Database Engine = "database"
	PKI      Engine = "pki"
	Generic  Engine = "generic"
)

// Leased reports whether the engine issues a new credential per read (database, pki) or may
// (generic), so that references to it carry a share owner.
func (e Engine) Leased() bool { return e == Database || e == PKI || e == Generic }

// Limits of the grammar.
const (
	// MaxLen bounds an encoded reference, in bytes.
	MaxLen = 4096
	// MaxPathLen bounds a mount, path or role, in bytes.
	MaxPathLen = 1024
	// MaxKeys bounds the chosen keys.
	MaxKeys = 64
	// MaxOwnerLen bounds an owner, in bytes.
	MaxOwnerLen = 512
)

// Owner kinds: who shares one dynamic credential.
const (
	OwnerPod            = "pod"   // pod/<uid>
	OwnerServiceAccount = "sa"    // sa/<namespace>/<name>
	OwnerGrant          = "grant" // grant/<grant name>
)

// ErrInvalid is wrapped by every error of Parse and Spec.Encode.
var ErrInvalid = errors.New("invalid vault reference")

// Spec is a decoded reference.
type Spec struct {
	// Engine is the secrets engine; required.
	Engine Engine
	// Mount is the engine's mount path, e.g. "secret".
	Mount string
	// Path is the secret's path inside the mount (kv-v1, kv-v2, generic).
	Path string
	// Role is the role a credential is issued for (database, pki).
	Role string
	// Version pins a kv-v2 version; 0 is the latest.
	Version int64
	// Keys are the chosen keys, sorted and distinct; empty means all.
	Keys []string
	// Owner says who shares a dynamic credential: "pod/<uid>", "sa/<ns>/<name>" or
	// "grant/<name>". Empty for static engines.
	Owner string

	// The certificate request of engine pki (empty for the others); pki.go checks them.
	PKI PKIRequest

	// Namespace is the Vault Enterprise namespace of the mount, e.g. "team-a" or
	// "team-a/prod"; empty uses the daemon's (vault.namespace). Encoded last, so references
	// without one keep their form.
	Namespace string
}

// PodOwner, ServiceAccountOwner and GrantOwner build owners.
func PodOwner(uid string) string { return OwnerPod + "/" + uid }
func ServiceAccountOwner(namespace, sa string) string {
	return OwnerServiceAccount + "/" + namespace + "/" + sa
}
func GrantOwner(name string) string { return OwnerGrant + "/" + name }

// Encode validates s and returns its canonical string. Keys are sorted and de-duplicated.
func (s Spec) Encode() (string, error) {
	s.Keys = slices.Compact(slices.Sorted(slices.Values(s.Keys)))
	if err := s.validate(); err != nil {
		return "", err
	}
	return s.encode(), nil
}

func (s Spec) encode() string {
	var b strings.Builder
	add := func(k, v string) {
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(url.QueryEscape(v))
	}
	add("engine", string(s.Engine))
	add("mount", s.Mount)
	if s.Path != "" {
		add("path", s.Path)
	}
	if s.Role != "" {
		add("role", s.Role)
	}
	if s.Version != 0 {
		add("version", strconv.FormatInt(s.Version, 10))
	}
	if len(s.Keys) > 0 {
		add("keys", strings.Join(s.Keys, ","))
	}
	if s.Owner != "" {
		add("owner", s.Owner)
	}
	s.PKI.encode(add)
	if s.Namespace != "" {
		add("namespace", s.Namespace)
	}
	return b.String()
}

func bad(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

var fields = []string{"engine", "mount", "path", "role", "version", "keys", "owner", "cn", "dns", "uri", "ttl", "minttl", "keygen", "keytype", "namespace"}

// Parse decodes a canonical reference. Anything else — unknown or repeated fields, fields out
// of order, a non-canonical escaping, values that break the grammar — is ErrInvalid. Error
// messages never repeat the input.
func Parse(ref string) (Spec, error) {
	if len(ref) > MaxLen {
		return Spec{}, bad("longer than %d bytes", MaxLen)
	}
	var s Spec
	seen := map[string]bool{}
	for part := range strings.SplitSeq(ref, "&") {
		k, raw, ok := strings.Cut(part, "=")
		if !ok || !slices.Contains(fields, k) {
			return Spec{}, bad("unknown or malformed field")
		}
		if seen[k] {
			return Spec{}, bad("field %s repeated", k)
		}
		seen[k] = true
		v, err := url.QueryUnescape(raw)
		if err != nil {
			return Spec{}, bad("field %s is not query-escaped", k)
		}
		switch k {
		case "engine":
			s.Engine = Engine(v)
		case "mount":
			s.Mount = v
		case "path":
			s.Path = v
		case "role":
			s.Role = v
		case "version":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return Spec{}, bad("version is not a number")
			}
			s.Version = n
		case "keys":
			s.Keys = strings.Split(v, ",")
		case "owner":
			s.Owner = v
		case "namespace":
			s.Namespace = v
		default:
			if err := s.PKI.decode(k, v); err != nil {
				return Spec{}, err
			}
		}
	}
	if err := s.validate(); err != nil {
		return Spec{}, err
	}
	if s.encode() != ref {
		return Spec{}, bad("not in canonical form")
	}
	return s, nil
}

func (s Spec) validate() error {
	if d := PathProblem(s.Mount); d != "" {
		return bad("mount %s", d)
	}
	switch s.Engine {
	case KVv2, KVv1, Generic:
		if d := PathProblem(s.Path); d != "" {
			return bad("path %s", d)
		}
		if s.Role != "" {
			return bad("role is not used by engine %s", s.Engine)
		}
	case Database, PKI:
		if !ValidRole(s.Role) {
			return bad("role must be a single name of printable ASCII")
		}
		if s.Path != "" {
			return bad("path is not used by engine %s", s.Engine)
		}
	default:
		return bad("unknown engine")
	}
	if s.Version < 0 || (s.Version != 0 && s.Engine != KVv2) {
		return bad("version must be 0, or positive with engine kv-v2")
	}
	if len(s.Keys) > MaxKeys {
		return bad("more than %d keys", MaxKeys)
	}
	for i, k := range s.Keys {
		if !ValidKey(k) {
			return bad("key %d is not a valid key", i)
		}
		if i > 0 && s.Keys[i-1] >= k {
			return bad("keys must be sorted and distinct")
		}
	}
	if s.Engine.Leased() {
		if err := validOwner(s.Owner); err != nil {
			return err
		}
	} else if s.Owner != "" {
		return bad("owner is only used by leased engines")
	}
	if s.Namespace != "" {
		if d := NamespaceProblem(s.Namespace); d != "" {
			return bad("namespace %s", d)
		}
	}
	if s.Engine != PKI && !s.PKI.IsZero() {
		return bad("certificate fields are only used by engine pki")
	}
	return s.PKI.validate()
}

func validOwner(o string) error {
	if o == "" {
		return bad("owner is required for leased engines")
	}
	if len(o) > MaxOwnerLen {
		return bad("owner longer than %d bytes", MaxOwnerLen)
	}
	kind, rest, _ := strings.Cut(o, "/")
	parts := strings.Split(rest, "/")
	want := map[string]int{OwnerPod: 1, OwnerServiceAccount: 2, OwnerGrant: 1}[kind]
	if want == 0 {
		return bad("owner kind must be pod, sa or grant")
	}
	if len(parts) != want {
		return bad("owner %s has %d parts, want %d", kind, len(parts), want)
	}
	for _, p := range parts {
		if !ownerPart(p) {
			return bad("owner part must be 1-253 bytes of [a-zA-Z0-9._:-]")
		}
	}
	return nil
}

func ownerPart(p string) bool {
	if p == "" || len(p) > 253 {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == ':') {
			return false
		}
	}
	return true
}

// PathProblem checks a Vault mount, path or role: relative segments of printable ASCII without
// "." or "..", so that neither a reference nor the grant it comes from can reach outside what
// it names. It returns "" when p is valid, else what is wrong, as a phrase to follow the
// field's name ("must …"); the phrase never repeats p. This is the one grammar: the grant
// validator calls it too.
func PathProblem(p string) string {
	if p == "" {
		return "is required"
	}
	if len(p) > MaxPathLen {
		return fmt.Sprintf("must be at most %d bytes", MaxPathLen)
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= 0x20 || c >= 0x7f || c == '?' || c == '#' || c == '%' || c == '*' || c == '+' {
			return "must contain only printable ASCII without spaces, '?', '#', '%', '*' or '+'"
		}
	}
	for seg := range strings.SplitSeq(p, "/") {
		switch seg {
		case "":
			return `must not start or end with "/" or contain "//"`
		case ".", "..":
			return `must not contain "." or ".." segments`
		}
	}
	return ""
}

// MaxNamespaceLen bounds a namespace path, in bytes.
const MaxNamespaceLen = 255

// NamespaceProblem checks a Vault namespace path ("team-a", "team-a/prod"): segments of
// [a-zA-Z0-9_-] separated by "/", without a leading or trailing "/" (Vault's own names allow
// more; these are the ones that need no escaping in a header, a reference or a log line).
// "root" and "sys" segments are refused: "root" is the root namespace, which is written as
// no namespace at all. It returns "" when ns is valid, else a phrase that never repeats ns.
func NamespaceProblem(ns string) string {
	if ns == "" {
		return "is required"
	}
	if len(ns) > MaxNamespaceLen {
		return fmt.Sprintf("must be at most %d bytes", MaxNamespaceLen)
	}
	for seg := range strings.SplitSeq(ns, "/") {
		if seg == "" {
			return `must not start or end with "/" or contain "//"`
		}
		if seg == "root" || seg == "sys" {
			return `must not contain "root" or "sys" segments (leave it empty for the root namespace)`
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "must be segments of letters, digits, '-' and '_' separated by \"/\""
			}
		}
	}
	return ""
}

// ValidRole reports whether r is a valid database or PKI role: a valid path of one segment.
func ValidRole(r string) bool { return PathProblem(r) == "" && !strings.Contains(r, "/") }

// ValidKey reports whether k is a valid secret key: the ConfigMap key grammar
// ([-._a-zA-Z0-9]{1,253}, not starting with ".."), since a key is also a file name.
func ValidKey(k string) bool {
	if k == "" || len(k) > 253 || strings.HasPrefix(k, "..") || k == "." {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}
