package csi

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
)

// Volume attributes a pod spec may set.
const (
	AttrSecrets   = "secrets"   // "db,api-key": the secrets to deliver
	AttrGrant     = "grant"     // or: every secret of this AccessGrant
	AttrFiles     = "files"     // "db/password=db.pass,api-key/token=token": per-key file names
	AttrFileMode  = "fileMode"  // octal, at most 0777; default 0400 (0440 with an fsGroup)
	AttrEncoding  = "encoding"  // raw (default) or base64
	AttrBundle    = "bundle"    // also write every secret as one JSON file at this path
	AttrAPISocket = "apiSocket" // "true" (default) or "false": bind the workload socket in
	// AttrTemplatePrefix starts the attributes that render a file from a template:
	// "template/app.env": "DB_USER={{ .db.username }}" writes app.env.
	AttrTemplatePrefix = "template/"
)

// Volume-context keys kubelet adds (podInfoOnMount, tokenRequests, ephemeral volumes).
const (
	CtxPodName        = "csi.storage.k8s.io/pod.name"
	CtxPodNamespace   = "csi.storage.k8s.io/pod.namespace"
	CtxPodUID         = "csi.storage.k8s.io/pod.uid"
	CtxServiceAccount = "csi.storage.k8s.io/serviceAccount.name"
	CtxEphemeral      = "csi.storage.k8s.io/ephemeral"
	CtxTokens         = "csi.storage.k8s.io/serviceAccount.tokens" //nolint:gosec // a key name, not a credential
)

// APISocketName is the workload socket's name at the volume root; no file may use it.
const APISocketName = "keywarden.sock"

// Limits on volume attributes.
const (
	// MaxSecrets is the most secrets one volume may carry (the broker's watch limit).
	MaxSecrets = broker.MaxWatchNames
	// MaxFileMappings is the most entries of the files attribute.
	MaxFileMappings = 256
	// MaxContextKeys is the most keys of a volume context.
	MaxContextKeys = 32
	// MaxAttrLen is the longest attribute value, in bytes.
	MaxAttrLen = 16 << 10
	// MaxTokensLen is the longest serviceAccount.tokens value, in bytes.
	MaxTokensLen = 64 << 10
)

// Encoding is how secret values are written to files.
type Encoding string

// Encodings.
const (
	EncodingRaw    Encoding = "raw"
	EncodingBase64 Encoding = "base64"
)

// Request is a volume's validated attributes: what to write and how. It is compared as a whole
// to decide whether a second publish of a volume has the same arguments.
type Request struct {
	// Secrets are the requested secret names, in the order given; empty when Grant is set.
	Secrets []string `json:"secrets,omitempty"`
	// Grant names an AccessGrant whose secrets are all delivered.
	Grant string `json:"grant,omitempty"`
	// Files maps "<secret>/<key>" to a file path relative to the volume root.
	Files map[string]string `json:"files,omitempty"`
	// Mode is the files' permission bits; 0 means the default.
	Mode fs.FileMode `json:"mode,omitempty"`
	// Encoding of the file contents.
	Encoding Encoding `json:"encoding"`
	// Bundle, when set, is the path of a JSON file with every secret: {"secret":{"key":"value"}}.
	Bundle string `json:"bundle,omitempty"`
	// APISocket binds the workload API socket into the volume.
	APISocket bool `json:"apiSocket"`
	// Templates maps a file path to the template rendered into it (attributes
	// "template/<path>").
	Templates map[string]string `json:"templates,omitempty"`
}

// Equal reports whether two requests ask for the same volume.
func (r Request) Equal(o Request) bool {
	return slices.Equal(r.Secrets, o.Secrets) && r.Grant == o.Grant && mapsEqual(r.Files, o.Files) &&
		r.Mode == o.Mode && r.Encoding == o.Encoding && r.Bundle == o.Bundle && r.APISocket == o.APISocket &&
		mapsEqual(r.Templates, o.Templates)
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// PodInfo is what kubelet says about the pod (podInfoOnMount).
type PodInfo struct {
	Name, Namespace, UID, ServiceAccount string
}

// VolumeContext is a parsed NodePublishVolume volume_context.
type VolumeContext struct {
	Request Request
	Pod     PodInfo
	// Token is the pod's service-account token for the driver's audience.
	Token identity.Token
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidRequest, fmt.Sprintf(format, args...))
}

// ParseVolumeContext validates a volume_context: the volume attributes from the pod spec and
// the pod information and token kubelet adds. audience selects the token. Unknown keys are
// rejected so a typo does not silently change what is delivered. Errors name the attribute and
// how to fix it; they never repeat the token.
func ParseVolumeContext(vc map[string]string, audience string) (VolumeContext, error) {
	var out VolumeContext
	if len(vc) == 0 {
		return out, invalid("volume_context is empty: set the volume attribute %q (or %q) and install the CSIDriver object with podInfoOnMount and tokenRequests", AttrSecrets, AttrGrant)
	}
	if len(vc) > MaxContextKeys {
		return out, invalid("volume_context has %d keys, at most %d are allowed", len(vc), MaxContextKeys)
	}
	for k, v := range vc {
		limit := MaxAttrLen
		if k == CtxTokens {
			limit = MaxTokensLen
		}
		if len(v) > limit {
			return out, invalid("attribute %q is %d bytes, at most %d are allowed", k, len(v), limit)
		}
		switch k {
		case AttrSecrets, AttrGrant, AttrFiles, AttrFileMode, AttrEncoding, AttrBundle, AttrAPISocket,
			CtxPodName, CtxPodNamespace, CtxPodUID, CtxServiceAccount, CtxEphemeral, CtxTokens:
		default:
			if strings.HasPrefix(k, AttrTemplatePrefix) {
				continue
			}
			if len(k) > 64 {
				return out, invalid("unknown attribute (%d bytes); allowed: %s", len(k), allowedAttrs())
			}
			return out, invalid("unknown attribute %q; allowed: %s", k, allowedAttrs())
		}
	}
	req, err := parseRequest(vc)
	if err != nil {
		return out, err
	}
	out.Request = req
	if out.Pod, err = parsePod(vc); err != nil {
		return out, err
	}
	if out.Token, err = parseTokens(vc[CtxTokens], audience); err != nil {
		return out, err
	}
	return out, nil
}

func allowedAttrs() string {
	return strings.Join([]string{AttrSecrets, AttrGrant, AttrFiles, AttrFileMode, AttrEncoding, AttrBundle, AttrAPISocket, AttrTemplatePrefix + "<path>"}, ", ")
}

// ParseRequest validates the volume attributes alone (no pod information or token).
func ParseRequest(attrs map[string]string) (Request, error) {
	return parseRequest(attrs)
}

func parseRequest(vc map[string]string) (Request, error) {
	r := Request{Encoding: EncodingRaw, APISocket: true}
	secrets, hasSecrets := vc[AttrSecrets]
	g, hasGrant := vc[AttrGrant]
	switch {
	case hasSecrets == hasGrant:
		return r, invalid("set exactly one of the attributes %q (a comma-separated list of secret names) or %q (an AccessGrant name)", AttrSecrets, AttrGrant)
	case hasGrant:
		if err := grant.ValidateSecretName(g); err != nil {
			return r, invalid("attribute %q: %v", AttrGrant, strings.Replace(err.Error(), "secret name", "grant name", 1))
		}
		r.Grant = g
	default:
		names := strings.Split(secrets, ",")
		if len(names) > MaxSecrets {
			return r, invalid("attribute %q names %d secrets, at most %d are allowed per volume", AttrSecrets, len(names), MaxSecrets)
		}
		seen := make(map[string]bool, len(names))
		for i, n := range names {
			n = strings.TrimSpace(n)
			if err := grant.ValidateSecretName(n); err != nil {
				return r, invalid("attribute %q, entry %d: %v", AttrSecrets, i+1, err)
			}
			if seen[n] {
				return r, invalid("attribute %q names secret %q twice", AttrSecrets, n)
			}
			seen[n] = true
			r.Secrets = append(r.Secrets, n)
		}
	}
	if v, ok := vc[AttrFiles]; ok {
		files, err := parseFiles(v)
		if err != nil {
			return r, err
		}
		r.Files = files
	}
	if v, ok := vc[AttrFileMode]; ok {
		m, err := strconv.ParseUint(v, 8, 32)
		if err != nil || m > 0o777 || len(v) > 5 {
			return r, invalid("attribute %q: want an octal mode of at most 0777, such as \"0400\" or \"0440\"", AttrFileMode)
		}
		if m&0o400 == 0 {
			return r, invalid("attribute %q: the owner must be able to read the files (include 0400)", AttrFileMode)
		}
		r.Mode = fs.FileMode(m)
	}
	if v, ok := vc[AttrEncoding]; ok {
		switch Encoding(v) {
		case EncodingRaw, EncodingBase64:
			r.Encoding = Encoding(v)
		default:
			return r, invalid("attribute %q: want %q or %q", AttrEncoding, EncodingRaw, EncodingBase64)
		}
	}
	if v, ok := vc[AttrBundle]; ok {
		if err := validateVolumePath(v); err != nil {
			return r, invalid("attribute %q: %v", AttrBundle, err)
		}
		r.Bundle = v
	}
	if v, ok := vc[AttrAPISocket]; ok {
		switch v {
		case "true":
		case "false":
			r.APISocket = false
		default:
			return r, invalid("attribute %q: want \"true\" or \"false\"", AttrAPISocket)
		}
	}
	tmpls, err := parseTemplates(vc, r.Secrets)
	if err != nil {
		return r, err
	}
	r.Templates = tmpls
	return r, nil
}

// parseTemplates takes the "template/<path>" attributes: each path is confined like any file
// name, each template must parse with the fixed function set, and, when the volume lists its
// secrets, name only those.
func parseTemplates(vc map[string]string, secrets []string) (map[string]string, error) {
	var out map[string]string
	for _, k := range slices.Sorted(maps.Keys(vc)) {
		p, ok := strings.CutPrefix(k, AttrTemplatePrefix)
		if !ok {
			continue
		}
		if err := validateVolumePath(p); err != nil {
			return nil, invalid("attribute %q: the file path after %q: %v", attrName(k), AttrTemplatePrefix, err)
		}
		t, err := grant.ParseTemplate(vc[k])
		if err != nil {
			return nil, invalid("attribute %q: %v", attrName(k), err)
		}
		if secrets != nil {
			for _, ref := range t.Secrets() {
				if !slices.Contains(secrets, ref) {
					return nil, invalid("attribute %q names secret %q, which attribute %q does not list: add it there or fix the name", attrName(k), ref, AttrSecrets)
				}
			}
		}
		if out == nil {
			out = map[string]string{}
		}
		out[p] = vc[k]
	}
	return out, nil
}

// attrName is an attribute key fit for an error message.
func attrName(k string) string {
	if len(k) > 80 || !utf8.ValidString(k) {
		return fmt.Sprintf("%s… (%d bytes)", strings.ToValidUTF8(k[:min(len(k), 40)], ""), len(k))
	}
	return k
}

// validateVolumePath is grant.ValidateFilePath plus the names the driver reserves.
func validateVolumePath(p string) error {
	if err := grant.ValidateFilePath(p); err != nil {
		return err
	}
	if first, _, _ := strings.Cut(p, "/"); first == APISocketName {
		return fmt.Errorf("%w: %q is reserved for the workload API socket", grant.ErrInvalidFilePath, APISocketName)
	}
	return nil
}

// parseFiles parses "<secret>/<key>=<path>,…".
func parseFiles(v string) (map[string]string, error) {
	entries := strings.Split(v, ",")
	if len(entries) > MaxFileMappings {
		return nil, invalid("attribute %q has %d entries, at most %d are allowed", AttrFiles, len(entries), MaxFileMappings)
	}
	out := make(map[string]string, len(entries))
	for i, e := range entries {
		src, path, ok := strings.Cut(strings.TrimSpace(e), "=")
		if !ok {
			return nil, invalid("attribute %q, entry %d: want <secret>/<key>=<file path>", AttrFiles, i+1)
		}
		name, key, ok := strings.Cut(src, "/")
		if !ok || key == "" {
			return nil, invalid("attribute %q, entry %d: want <secret>/<key>=<file path>", AttrFiles, i+1)
		}
		if err := grant.ValidateSecretName(name); err != nil {
			return nil, invalid("attribute %q, entry %d: %v", AttrFiles, i+1, err)
		}
		if len(key) > grant.MaxSecretNameLen || strings.ContainsAny(key, "\x00,=") {
			return nil, invalid("attribute %q, entry %d: the key must be at most %d bytes without NUL, ',' or '='", AttrFiles, i+1, grant.MaxSecretNameLen)
		}
		if err := validateVolumePath(path); err != nil {
			return nil, invalid("attribute %q, entry %d: %v", AttrFiles, i+1, err)
		}
		if _, dup := out[src]; dup {
			return nil, invalid("attribute %q, entry %d: %s is mapped twice", AttrFiles, i+1, src)
		}
		out[src] = path
	}
	return out, nil
}

func parsePod(vc map[string]string) (PodInfo, error) {
	p := PodInfo{Name: vc[CtxPodName], Namespace: vc[CtxPodNamespace], UID: vc[CtxPodUID], ServiceAccount: vc[CtxServiceAccount]}
	if p.UID == "" || p.Name == "" || p.Namespace == "" {
		return p, invalid("volume_context lacks the pod's name, namespace or UID: set podInfoOnMount: true on the CSIDriver object")
	}
	if err := validatePodUID(p.UID); err != nil {
		return p, err
	}
	if v, ok := vc[CtxEphemeral]; ok && v != "true" {
		return p, invalid("only ephemeral inline volumes are supported (%s is %q)", CtxEphemeral, v)
	}
	return p, nil
}

// validatePodUID accepts what kubelet puts in pod directory names: letters, digits and '-'.
func validatePodUID(uid string) error {
	if uid == "" || len(uid) > 64 {
		return invalid("pod UID must be 1 to 64 characters")
	}
	for _, c := range []byte(uid) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return invalid("pod UID may contain only letters, digits and '-'")
		}
	}
	return nil
}

// parseTokens takes the token for audience out of kubelet's JSON
// {"<audience>":{"token":"…","expirationTimestamp":"…"}}. Decoding errors are replaced by a
// fixed message: encoding/json can quote parts of its input.
func parseTokens(v, audience string) (identity.Token, error) {
	if v == "" {
		return identity.Token{}, invalid("volume_context has no service-account token: set tokenRequests with audience %q on the CSIDriver object", audience)
	}
	var m map[string]struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal([]byte(v), &m); err != nil {
		return identity.Token{}, invalid("%s is not the JSON kubelet writes", CtxTokens)
	}
	t, ok := m[audience]
	if !ok || t.Token == "" {
		return identity.Token{}, invalid("%s has no token for audience %q: add it to the CSIDriver's tokenRequests", CtxTokens, audience)
	}
	return identity.NewToken(t.Token), nil
}
