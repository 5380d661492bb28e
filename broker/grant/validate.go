package grant

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/keywarden/keywarden/broker/source/vaultref"
)

// FieldError is one problem with one field of a grant, saying how to fix it.
type FieldError struct {
	// Document locates the grant in a multi-document file, e.g. "document 2 (line 14)";
	// empty when the grant did not come from Parse.
	Document string
	// Field is the path of the offending field, e.g. "spec.subjects[0].namespace".
	Field string
	// Detail says what is wrong and how to fix it.
	Detail string
}

// Error implements error.
func (e *FieldError) Error() string {
	var b strings.Builder
	if e.Document != "" {
		b.WriteString(e.Document)
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Detail)
	return b.String()
}

// Is makes every FieldError match ErrInvalidGrant.
func (e *FieldError) Is(target error) bool { return target == ErrInvalidGrant }

// Errors is every problem found in one or more grants. Its Error joins them with "; " so that
// one log line holds them all.
type Errors []*FieldError

// Error implements error.
func (e Errors) Error() string {
	parts := make([]string, len(e))
	for i, fe := range e {
		parts[i] = fe.Error()
	}
	return strings.Join(parts, "; ")
}

// Is makes Errors match ErrInvalidGrant.
func (e Errors) Is(target error) bool { return target == ErrInvalidGrant }

// orNil returns nil for an empty list, so callers can `return errs.orNil()`.
func (e Errors) orNil() error {
	if len(e) == 0 {
		return nil
	}
	return e
}

type validator struct{ errs Errors }

func (v *validator) add(field, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Field: field, Detail: fmt.Sprintf(format, args...)})
}

// quote renders an untrusted value for an error message: quoted, and cut to 64 bytes so that a
// pasted blob cannot flood a log line.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}

// Validate checks one grant and reports every problem at once as Errors (which matches
// ErrInvalidGrant), each with its field path and how to fix it. It accepts grants before and
// after Default. An empty apiVersion or kind is accepted because informers strip them; Parse
// requires them.
func Validate(g *AccessGrant) error {
	if g == nil {
		return Errors{{Detail: "grant is nil"}}
	}
	v := &validator{}
	if g.APIVersion != "" && g.APIVersion != APIVersion {
		v.add("apiVersion", "must be %q, got %s", APIVersion, quote(g.APIVersion))
	}
	if g.Kind != "" && g.Kind != Kind {
		v.add("kind", "must be %q, got %s", Kind, quote(g.Kind))
	}
	v.object(g)
	return v.errs.orNil()
}

// object validates everything but apiVersion and kind.
func (v *validator) object(g *AccessGrant) {
	switch {
	case g.Name == "":
		v.add("metadata.name", `is required: set it to a DNS-1123 subdomain such as "demo-app"`)
	default:
		if msgs := validation.IsDNS1123Subdomain(g.Name); len(msgs) > 0 {
			v.add("metadata.name", "%s is not a valid name: use lower case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 bytes", quote(g.Name))
		}
	}
	if g.Namespace != "" {
		v.add("metadata.namespace", "AccessGrant is cluster-scoped: remove metadata.namespace")
	}
	v.spec(&g.Spec)
}

func (v *validator) spec(s *AccessGrantSpec) {
	switch s.Effect {
	case "", EffectAllow, EffectDeny:
	default:
		v.add("spec.effect", "%s is not valid: use Allow or Deny", quote(string(s.Effect)))
	}
	if len(s.Subjects) == 0 {
		v.add("spec.subjects", "at least one subject is required: add {namespace, serviceAccount} or {spiffeID}")
	}
	for i := range s.Subjects {
		v.subject(fmt.Sprintf("spec.subjects[%d]", i), &s.Subjects[i])
	}
	if len(s.Secrets) == 0 {
		v.add("spec.secrets", "at least one secret is required: add {name, source}")
	}
	seen := make(map[string]int, len(s.Secrets))
	for i := range s.Secrets {
		f := fmt.Sprintf("spec.secrets[%d]", i)
		sg := &s.Secrets[i]
		if j, dup := seen[sg.Name]; dup && sg.Name != "" {
			v.add(f+".name", "duplicate secret name %s (also spec.secrets[%d]): each name may appear once per grant", quote(sg.Name), j)
		} else {
			seen[sg.Name] = i
		}
		v.secret(f, sg)
	}
	v.templates(s)
	seenD := make(map[Delivery]bool, len(s.Delivery))
	for i, d := range s.Delivery {
		f := fmt.Sprintf("spec.delivery[%d]", i)
		switch d {
		case DeliveryCSI, DeliveryGRPC, DeliveryGRPCSealed:
			if seenD[d] {
				v.add(f, "duplicate delivery %s: list each channel once", quote(string(d)))
			}
			seenD[d] = true
		default:
			v.add(f, "%s is not valid: use CSI, GRPC or GRPCSealed (or omit delivery for every channel)", quote(string(d)))
		}
	}
}

func (v *validator) subject(f string, s *Subject) {
	hasK8s := s.Namespace != "" || s.ServiceAccount != ""
	hasSPIFFE := s.SPIFFEID != ""
	switch {
	case hasK8s && hasSPIFFE:
		v.add(f, "set either namespace+serviceAccount or spiffeID, not both")
		return
	case !hasK8s && !hasSPIFFE:
		v.add(f, "set either namespace+serviceAccount or spiffeID")
		return
	case hasSPIFFE:
		if _, detail := parseSPIFFE(s.SPIFFEID, true); detail != "" {
			v.add(f+".spiffeID", "%s: %s", quote(s.SPIFFEID), detail)
		}
		return
	}
	switch {
	case s.Namespace == "":
		v.add(f+".namespace", `is required with serviceAccount: set a namespace or "*"`)
	case s.Namespace == "*":
	case len(validation.IsDNS1123Label(s.Namespace)) > 0:
		v.add(f+".namespace", `%s is not a valid namespace: use a DNS-1123 label (lower case letters, digits and '-', at most 63 bytes) or "*"`, quote(s.Namespace))
	}
	switch {
	case s.ServiceAccount == "":
		v.add(f+".serviceAccount", `is required with namespace: set a service account name or "*"`)
	case s.ServiceAccount == "*":
	case len(validation.IsDNS1123Subdomain(s.ServiceAccount)) > 0:
		v.add(f+".serviceAccount", `%s is not a valid service account name: use a DNS-1123 subdomain (lower case letters, digits, '-' and '.') or "*"`, quote(s.ServiceAccount))
	}
}

func (v *validator) secret(f string, s *SecretGrant) {
	if s.Name == "" {
		v.add(f+".name", "is required: set the name workloads ask for")
	} else if err := ValidateSecretName(s.Name); err != nil {
		v.add(f+".name", "%s: %s", quote(s.Name), detailOf(err, ErrInvalidSecretName))
	}
	v.source(f+".source", s)
	v.pki(f, s)

	keys := make(map[string]bool, len(s.Keys))
	for i, k := range s.Keys {
		kf := fmt.Sprintf("%s.keys[%d]", f, i)
		if d := keyProblem(k); d != "" {
			v.add(kf, "%s", d)
			continue
		}
		if keys[k] {
			v.add(kf, "duplicate key %s: list each key once", quote(k))
		}
		keys[k] = true
	}

	paths := make(map[string]int, len(s.Files))
	for i := range s.Files {
		fm := &s.Files[i]
		ff := fmt.Sprintf("%s.files[%d]", f, i)
		if fm.Key == "" {
			v.add(ff+".key", "is required: name the secret key written to this file")
		} else if d := keyProblem(fm.Key); d != "" {
			v.add(ff+".key", "%s", d)
		} else if len(s.Keys) > 0 && !keys[fm.Key] {
			v.add(ff+".key", "%s is not in %s.keys: add it there or remove this file", quote(fm.Key), f)
		}
		if fm.Path == "" {
			v.add(ff+".path", "is required: set a path relative to the volume root, e.g. db/password")
		} else if err := ValidateFilePath(fm.Path); err != nil {
			v.add(ff+".path", "%s: %s", quote(fm.Path), detailOf(err, ErrInvalidFilePath))
		} else if j, dup := paths[fm.Path]; dup {
			v.add(ff+".path", "duplicate path %s (also %s.files[%d]): give each file its own path", quote(fm.Path), f, j)
		} else {
			paths[fm.Path] = i
		}
		if fm.Mode != nil && (*fm.Mode < 0 || *fm.Mode > 0o777) {
			v.add(ff+".mode", "%#o is not valid: use permission bits between 0 and 0777 (no setuid, setgid or sticky bit)", *fm.Mode)
		}
	}
	// A path that is also a directory of another file cannot be written.
	for p, i := range paths {
		for dir := p; ; {
			k := strings.LastIndexByte(dir, '/')
			if k < 0 {
				break
			}
			dir = dir[:k]
			if j, ok := paths[dir]; ok {
				v.add(fmt.Sprintf("%s.files[%d].path", f, j), "%s is also a directory of %s.files[%d] (%s): rename one of them", quote(dir), f, i, quote(p))
			}
		}
	}

	if s.TTL != nil {
		tf := f + ".ttl"
		if s.TTL.Min == nil && s.TTL.Max == nil {
			v.add(tf, "set min, max or both, or remove ttl")
		}
		if s.TTL.Min != nil && s.TTL.Min.Duration <= 0 {
			v.add(tf+".min", "%s is not valid: must be greater than 0, e.g. 5m", s.TTL.Min.Duration)
		}
		if s.TTL.Max != nil && s.TTL.Max.Duration <= 0 {
			v.add(tf+".max", "%s is not valid: must be greater than 0, e.g. 24h", s.TTL.Max.Duration)
		}
		if s.TTL.Min != nil && s.TTL.Max != nil && s.TTL.Min.Duration > s.TTL.Max.Duration {
			v.add(tf, "min (%s) is greater than max (%s): make min ≤ max", s.TTL.Min.Duration, s.TTL.Max.Duration)
		}
	}
	if s.Refresh != nil && s.Refresh.Interval.Duration < time.Second {
		v.add(f+".refresh.interval", "%s is too short: use at least 1s", s.Refresh.Interval.Duration)
	}
	switch s.Share {
	case "", ShareModePod, ShareModeServiceAccount, ShareModeGrant:
	default:
		v.add(f+".share", "%s is not valid: use Pod, ServiceAccount or Grant", quote(string(s.Share)))
	}
}

func (v *validator) source(f string, s *SecretGrant) {
	src := &s.Source
	switch {
	case src.Local != nil && src.Vault != nil:
		v.add(f, "set exactly one of local or vault, not both")
		return
	case src.Local == nil && src.Vault == nil:
		v.add(f, "set one of local or vault")
		return
	case src.Local != nil:
		if n := src.Local.Name; n != "" {
			if err := ValidateSecretName(n); err != nil {
				v.add(f+".local.name", "%s: %s", quote(n), detailOf(err, ErrInvalidSecretName))
			}
		}
		return
	}
	vs := src.Vault
	if vs.Mount == "" {
		v.add(f+".vault.mount", `is required: set the engine's mount path, e.g. "secret"`)
	} else if d := vaultref.PathProblem(vs.Mount); d != "" {
		v.add(f+".vault.mount", "%s: %s", quote(vs.Mount), d)
	}
	if vs.Path != "" {
		if d := vaultref.PathProblem(vs.Path); d != "" {
			v.add(f+".vault.path", "%s: %s", quote(vs.Path), d)
		}
	}
	if vs.Role != "" {
		if !vaultref.ValidRole(vs.Role) {
			v.add(f+".vault.role", `%s: use a single name without "/"`, quote(vs.Role))
		}
	}
	if vs.Namespace != "" {
		if d := vaultref.NamespaceProblem(vs.Namespace); d != "" {
			v.add(f+".vault.namespace", "%s: %s", quote(vs.Namespace), d)
		}
	}
	if vs.Version < 0 {
		v.add(f+".vault.version", "%d is not valid: use 0 (latest) or a positive version", vs.Version)
	}
	switch vs.Engine {
	case "", VaultEngineKVv2, VaultEngineKVv1, VaultEngineGeneric:
		if vs.Path == "" {
			v.add(f+".vault.path", "is required for engine %s: set the secret's path inside the mount", engineName(vs.Engine))
		}
		if vs.Role != "" {
			v.add(f+".vault.role", "is not used by engine %s: remove it", engineName(vs.Engine))
		}
		if vs.Version != 0 && vs.Engine != "" && vs.Engine != VaultEngineKVv2 {
			v.add(f+".vault.version", "is only used by engine kv-v2: remove it")
		}
	case VaultEngineDatabase, VaultEnginePKI:
		if vs.Role == "" {
			v.add(f+".vault.role", "is required for engine %s: set the role credentials are issued for", vs.Engine)
		}
		if vs.Path != "" {
			v.add(f+".vault.path", "is not used by engine %s: remove it and set role", vs.Engine)
		}
		if vs.Version != 0 {
			v.add(f+".vault.version", "is only used by engine kv-v2: remove it")
		}
	default:
		v.add(f+".vault.engine", "%s is not valid: use kv-v2, kv-v1, database, pki or generic", quote(string(vs.Engine)))
	}
}

func engineName(e VaultEngine) string {
	if e == "" {
		return string(VaultEngineKVv2)
	}
	return string(e)
}

// keyProblem checks a secret key with the grammar the Vault reference enforces (vaultref.ValidKey:
// the ConfigMap key grammar, since a key is also the default file name).
func keyProblem(k string) string {
	if k == "" {
		return "must not be empty"
	}
	if !vaultref.ValidKey(k) {
		return fmt.Sprintf("%s is not a valid key: use letters, digits, '-', '_' and '.', not starting with \"..\", at most 253 bytes", quote(k))
	}
	return ""
}

// detailOf strips the sentinel prefix from a Validate* error for use as a FieldError detail.
func detailOf(err, sentinel error) string {
	msg := err.Error()
	if errors.Is(err, sentinel) {
		msg = strings.TrimPrefix(msg, sentinel.Error()+": ")
	}
	return msg
}
