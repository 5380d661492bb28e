package grant

import (
	"errors"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Placeholders a PKI name may use; ExpandPKIName replaces them with the caller's identity.
const (
	PlaceholderNamespace      = "$(namespace)"
	PlaceholderServiceAccount = "$(serviceAccount)"
)

// Limits of PKI options.
const (
	// MaxPKIDNSNames is the most DNS names of one certificate.
	MaxPKIDNSNames = 16
	// MaxCommonNameLen is X.509's upper bound for a common name (ub-common-name), in bytes.
	MaxCommonNameLen = 64
)

// ErrInvalidPKIName is wrapped by every error of ExpandPKIName.
var ErrInvalidPKIName = errors.New("invalid certificate name")

// ExpandPKIName replaces the placeholders of a DNS name or common name pattern with the
// caller's namespace and service account and checks the result: a DNS-1123 subdomain, with
// an optional leading "*." wildcard label. The error never repeats the name.
func ExpandPKIName(pattern, namespace, serviceAccount string) (string, error) {
	if d := pkiPatternProblem(pattern); d != "" {
		return "", fmt.Errorf("%w: %s", ErrInvalidPKIName, d)
	}
	name := strings.ReplaceAll(pattern, PlaceholderNamespace, namespace)
	name = strings.ReplaceAll(name, PlaceholderServiceAccount, serviceAccount)
	if d := dnsNameProblem(name); d != "" {
		return "", fmt.Errorf("%w: expanded for this workload it %s", ErrInvalidPKIName, d)
	}
	return name, nil
}

// pkiPatternProblem checks a DNS name pattern: only the two placeholders, and a valid DNS
// name once they are replaced by a one-letter label.
func pkiPatternProblem(p string) string {
	if p == "" {
		return "must not be empty"
	}
	rest := p
	for {
		k := strings.Index(rest, "$(")
		if k < 0 {
			break
		}
		end := strings.IndexByte(rest[k:], ')')
		if end < 0 {
			return `has an unclosed "$(": write $(namespace) or $(serviceAccount)`
		}
		switch ph := rest[k : k+end+1]; ph {
		case PlaceholderNamespace, PlaceholderServiceAccount:
		default:
			return fmt.Sprintf("has the unknown placeholder %s: use $(namespace) or $(serviceAccount)", quote(ph))
		}
		rest = rest[k+end+1:]
	}
	sample := strings.ReplaceAll(p, PlaceholderNamespace, "n")
	sample = strings.ReplaceAll(sample, PlaceholderServiceAccount, "s")
	return dnsNameProblem(sample)
}

// dnsNameProblem checks a DNS SAN: a DNS-1123 subdomain, optionally "*." and one.
func dnsNameProblem(n string) string {
	base := strings.TrimPrefix(n, "*.")
	if strings.Contains(base, "*") {
		return `may hold "*" only as its whole first label ("*.example.svc")`
	}
	if len(n) > validation.DNS1123SubdomainMaxLength {
		return fmt.Sprintf("must be at most %d bytes", validation.DNS1123SubdomainMaxLength)
	}
	if len(validation.IsDNS1123Subdomain(base)) > 0 {
		return "must be a DNS name: lower case letters, digits, '-' and '.', each label starting and ending with a letter or digit"
	}
	return ""
}

// pki validates the pki options of a secret clause.
func (v *validator) pki(f string, s *SecretGrant) {
	isPKI := s.Source.Vault != nil && s.Source.Vault.Engine == VaultEnginePKI
	if isPKI && s.Share == ShareModeGrant {
		v.add(f+".share", "Grant is not allowed with engine pki: a certificate carries its workload's identity, so every workload of the grant would get another's; use Pod (the default) or ServiceAccount")
	}
	p := s.PKI
	if p == nil {
		return
	}
	pf := f + ".pki"
	if !isPKI {
		v.add(pf, "is only used by engine pki: remove it or set source.vault.engine: pki")
		return
	}
	if len(p.DNSNames) > MaxPKIDNSNames {
		v.add(pf+".dnsNames", "has %d names, at most %d are allowed", len(p.DNSNames), MaxPKIDNSNames)
	}
	seen := make(map[string]bool, len(p.DNSNames))
	for i, n := range p.DNSNames {
		nf := fmt.Sprintf("%s.dnsNames[%d]", pf, i)
		if d := pkiPatternProblem(n); d != "" {
			v.add(nf, "%s %s", quote(n), d)
			continue
		}
		if seen[n] {
			v.add(nf, "duplicate name %s: list each name once", quote(n))
		}
		seen[n] = true
	}
	if p.CommonName != "" {
		if d := pkiPatternProblem(p.CommonName); d != "" {
			v.add(pf+".commonName", "%s %s", quote(p.CommonName), d)
		} else if !strings.Contains(p.CommonName, "$(") && len(p.CommonName) > MaxCommonNameLen {
			v.add(pf+".commonName", "must be at most %d bytes (X.509's limit): use a shorter name and put long names in dnsNames", MaxCommonNameLen)
		}
	}
	switch p.KeyGeneration {
	case "", PKIKeyGenerationNode:
	case PKIKeyGenerationVault:
		if p.KeyType != "" {
			v.add(pf+".keyType", "is not used with keyGeneration Vault (the role's key_type applies): remove it")
		}
	default:
		v.add(pf+".keyGeneration", "%s is not valid: use Node (the key never leaves the node) or Vault", quote(string(p.KeyGeneration)))
	}
	switch p.KeyType {
	case "", PKIKeyTypeECDSAP256, PKIKeyTypeECDSAP384, PKIKeyTypeRSA2048:
	default:
		v.add(pf+".keyType", "%s is not valid: use ECDSAP256 (the default), ECDSAP384 or RSA2048", quote(string(p.KeyType)))
	}
}

// templates validates spec.templates: paths, the template language, and that each template
// names only secrets of the grant.
func (v *validator) templates(s *AccessGrantSpec) {
	if len(s.Templates) == 0 {
		return
	}
	if s.Effect == EffectDeny {
		v.add("spec.templates", "a Deny grant delivers nothing: remove templates")
		return
	}
	if len(s.Templates) > MaxTemplates {
		v.add("spec.templates", "has %d templates, at most %d are allowed", len(s.Templates), MaxTemplates)
	}
	names := make(map[string]bool, len(s.Secrets))
	for _, sg := range s.Secrets {
		names[sg.Name] = true
	}
	paths := make(map[string]int, len(s.Templates))
	for i := range s.Templates {
		tf := &s.Templates[i]
		f := fmt.Sprintf("spec.templates[%d]", i)
		if tf.Path == "" {
			v.add(f+".path", "is required: set a path relative to the volume root, e.g. app.env")
		} else if err := ValidateFilePath(tf.Path); err != nil {
			v.add(f+".path", "%s: %s", quote(tf.Path), detailOf(err, ErrInvalidFilePath))
		} else if j, dup := paths[tf.Path]; dup {
			v.add(f+".path", "duplicate path %s (also spec.templates[%d]): give each file its own path", quote(tf.Path), j)
		} else {
			paths[tf.Path] = i
		}
		if tf.Mode != nil && (*tf.Mode < 0 || *tf.Mode > 0o777) {
			v.add(f+".mode", "%#o is not valid: use permission bits between 0 and 0777 (no setuid, setgid or sticky bit)", *tf.Mode)
		}
		t, err := ParseTemplate(tf.Template)
		if err != nil {
			v.add(f+".template", "%v", err)
			continue
		}
		for _, ref := range t.Secrets() {
			if !names[ref] {
				v.add(f+".template", "names secret %s, which this grant does not list in spec.secrets: add it there or fix the name", quote(ref))
			}
		}
	}
}

// MaxTemplates is the most templates of one grant.
const MaxTemplates = 16
