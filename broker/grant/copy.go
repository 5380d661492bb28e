package grant

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// These clone helpers are unexported on purpose: controller-gen will generate the exported
// DeepCopy methods once the CRD is wired, and these must not collide with them. The Set hands
// out copies so that no caller can mutate a snapshot other goroutines are evaluating against.

func cloneGrant(g *AccessGrant) AccessGrant {
	out := AccessGrant{TypeMeta: g.TypeMeta}
	g.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Spec = cloneSpec(&g.Spec)
	return out
}

func cloneSpec(s *AccessGrantSpec) AccessGrantSpec {
	out := AccessGrantSpec{Effect: s.Effect}
	if s.Subjects != nil {
		out.Subjects = append([]Subject(nil), s.Subjects...)
	}
	if s.Secrets != nil {
		out.Secrets = make([]SecretGrant, len(s.Secrets))
		for i := range s.Secrets {
			out.Secrets[i] = cloneSecret(&s.Secrets[i])
		}
	}
	if s.Delivery != nil {
		out.Delivery = append([]Delivery(nil), s.Delivery...)
	}
	if s.Templates != nil {
		out.Templates = make([]TemplateFile, len(s.Templates))
		for i, t := range s.Templates {
			out.Templates[i] = TemplateFile{Path: t.Path, Template: t.Template}
			if t.Mode != nil {
				m := *t.Mode
				out.Templates[i].Mode = &m
			}
		}
	}
	return out
}

func cloneSecret(s *SecretGrant) SecretGrant {
	out := SecretGrant{Name: s.Name, Share: s.Share}
	if s.Source.Local != nil {
		l := *s.Source.Local
		out.Source.Local = &l
	}
	if s.Source.Vault != nil {
		v := *s.Source.Vault
		out.Source.Vault = &v
	}
	if s.Keys != nil {
		out.Keys = append([]string(nil), s.Keys...)
	}
	if s.Files != nil {
		out.Files = make([]FileMapping, len(s.Files))
		for i, f := range s.Files {
			out.Files[i] = FileMapping{Key: f.Key, Path: f.Path}
			if f.Mode != nil {
				m := *f.Mode
				out.Files[i].Mode = &m
			}
		}
	}
	if s.TTL != nil {
		out.TTL = &TTLBounds{Min: cloneDuration(s.TTL.Min), Max: cloneDuration(s.TTL.Max)}
	}
	if s.Refresh != nil {
		r := *s.Refresh
		out.Refresh = &r
	}
	if s.PKI != nil {
		p := *s.PKI
		p.DNSNames = append([]string(nil), s.PKI.DNSNames...)
		out.PKI = &p
	}
	return out
}

func cloneDuration(d *metav1.Duration) *metav1.Duration {
	if d == nil {
		return nil
	}
	c := *d
	return &c
}

// Default fills in the documented defaults of g in place: effect Allow, share ServiceAccount
// (Pod for engine pki), a local source's name defaulting to the secret's name, Vault engine kv-v2. Delivery stays
// empty (meaning every channel) and Files stays empty (one file per key, decided by the CSI
// layer once the keys are known). NewSet stores defaulted copies.
func Default(g *AccessGrant) {
	if g.Spec.Effect == "" {
		g.Spec.Effect = EffectAllow
	}
	for i := range g.Spec.Secrets {
		s := &g.Spec.Secrets[i]
		if s.Share == "" {
			s.Share = ShareModeServiceAccount
			if s.Source.Vault != nil && s.Source.Vault.Engine == VaultEnginePKI {
				// A certificate carries its workload's identity and a private key: one
				// per pod unless the grant says otherwise.
				s.Share = ShareModePod
			}
		}
		if s.Source.Local != nil && s.Source.Local.Name == "" {
			s.Source.Local.Name = s.Name
		}
		if s.Source.Vault != nil && s.Source.Vault.Engine == "" {
			s.Source.Vault.Engine = VaultEngineKVv2
		}
	}
}
