package grant

import (
	"errors"
	"strings"
	"testing"
)

const pkiSource = `source: {vault: {mount: pki, engine: pki, role: web}}`

func pkiDoc(secretExtra string) string {
	return grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: cert, `+pkiSource+secretExtra+`}]`))
}

func TestParse_pkiOptions(t *testing.T) {
	grants, err := Parse([]byte(pkiDoc(`, ttl: {min: 10m, max: 1h}, pki: {dnsNames: ["$(serviceAccount).$(namespace).svc", "*.$(namespace).svc.cluster.local", "static.example"], commonName: "$(serviceAccount).$(namespace).svc", keyGeneration: Node, keyType: ECDSAP384}`)))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	p := grants[0].Spec.Secrets[0].PKI
	if p == nil || len(p.DNSNames) != 3 || p.KeyType != PKIKeyTypeECDSAP384 || p.KeyGeneration != PKIKeyGenerationNode {
		t.Fatalf("pki = %+v", p)
	}
	set := mustSet(t, pkiDoc(``))
	if got := set.Grants()[0].Spec.Secrets[0].Share; got != ShareModePod {
		t.Fatalf("default share of a pki secret = %s; want Pod", got)
	}
	if got := mustSet(t, pkiDoc(`, share: ServiceAccount`)).Grants()[0].Spec.Secrets[0].Share; got != ShareModeServiceAccount {
		t.Fatalf("explicit share = %s", got)
	}
	// Clones carry the options and do not share them.
	g := set.Evaluate(Request{Namespace: "demo", ServiceAccount: "app", Secret: "cert", Delivery: DeliveryCSI})
	if !g.Allowed {
		t.Fatal(g.Reason)
	}
	full := mustSet(t, pkiDoc(`, pki: {dnsNames: [a.svc]}`))
	d := full.Evaluate(Request{Namespace: "demo", ServiceAccount: "app", Secret: "cert", Delivery: DeliveryCSI})
	d.Secret.PKI.DNSNames[0] = "changed"
	if again := full.Evaluate(Request{Namespace: "demo", ServiceAccount: "app", Secret: "cert", Delivery: DeliveryCSI}); again.Secret.PKI.DNSNames[0] != "a.svc" {
		t.Fatal("a decision shares the grant's pki options")
	}
}

func TestValidate_pkiRejects(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"pki on another engine", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {vault: {mount: database, engine: database, role: app}}, pki: {dnsNames: [a.svc]}}]`)),
			`spec.secrets[0].pki: is only used by engine pki`},
		{"pki on a local source", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, pki: {}}]`)),
			`spec.secrets[0].pki: is only used by engine pki`},
		{"share Grant", pkiDoc(`, share: Grant`), `spec.secrets[0].share: Grant is not allowed with engine pki`},
		{"unknown placeholder", pkiDoc(`, pki: {dnsNames: ["$(pod).svc"]}`), `spec.secrets[0].pki.dnsNames[0]: "$(pod).svc" has the unknown placeholder "$(pod)": use $(namespace) or $(serviceAccount)`},
		{"unclosed placeholder", pkiDoc(`, pki: {dnsNames: ["$(namespace.svc"]}`), `has an unclosed "$("`},
		{"upper case", pkiDoc(`, pki: {dnsNames: ["Web.svc"]}`), `spec.secrets[0].pki.dnsNames[0]: "Web.svc" must be a DNS name`},
		{"wildcard inside", pkiDoc(`, pki: {dnsNames: ["a.*.svc"]}`), `may hold "*" only as its whole first label`},
		{"empty name", pkiDoc(`, pki: {dnsNames: [""]}`), `spec.secrets[0].pki.dnsNames[0]: "" must not be empty`},
		{"duplicate name", pkiDoc(`, pki: {dnsNames: [a.svc, a.svc]}`), `spec.secrets[0].pki.dnsNames[1]: duplicate name "a.svc"`},
		{"too many names", pkiDoc(`, pki: {dnsNames: [a1.svc, a2.svc, a3.svc, a4.svc, a5.svc, a6.svc, a7.svc, a8.svc, a9.svc, b1.svc, b2.svc, b3.svc, b4.svc, b5.svc, b6.svc, b7.svc, b8.svc]}`),
			`spec.secrets[0].pki.dnsNames: has 17 names, at most 16 are allowed`},
		{"long common name", pkiDoc(`, pki: {commonName: "` + strings.Repeat("a", 60) + `.svc.x"}`), `spec.secrets[0].pki.commonName: must be at most 64 bytes`},
		{"bad common name", pkiDoc(`, pki: {commonName: "a b"}`), `spec.secrets[0].pki.commonName: "a b" must be a DNS name`},
		{"bad key generation", pkiDoc(`, pki: {keyGeneration: Client}`), `spec.secrets[0].pki.keyGeneration: "Client" is not valid: use Node`},
		{"bad key type", pkiDoc(`, pki: {keyType: DSA}`), `spec.secrets[0].pki.keyType: "DSA" is not valid: use ECDSAP256`},
		{"key type with Vault", pkiDoc(`, pki: {keyGeneration: Vault, keyType: RSA2048}`), `spec.secrets[0].pki.keyType: is not used with keyGeneration Vault`},
		{"unknown pki field", pkiDoc(`, pki: {dnsName: [a.svc]}`), `spec.secrets[0].pki.dnsName: unknown field`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if !errors.Is(err, ErrInvalidGrant) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

func TestExpandPKIName(t *testing.T) {
	tests := []struct {
		pattern, ns, sa, want, wantErr string
	}{
		{pattern: "$(serviceAccount).$(namespace).svc", ns: "shop", sa: "web", want: "web.shop.svc"},
		{pattern: "*.$(namespace).svc", ns: "shop", sa: "web", want: "*.shop.svc"},
		{pattern: "static.example", ns: "shop", sa: "web", want: "static.example"},
		{pattern: "$(serviceAccount).svc", ns: "shop", sa: "a.b", want: "a.b.svc"},
		{pattern: "$(serviceAccount).svc", ns: "shop", sa: strings.Repeat("a", 250), wantErr: "expanded for this workload it must be at most 253 bytes"},
		{pattern: "$(podName).svc", ns: "shop", sa: "web", wantErr: "unknown placeholder"},
		{pattern: "$(serviceAccount).svc", ns: "shop", sa: "Web", wantErr: "must be a DNS name"},
	}
	for _, tc := range tests {
		got, err := ExpandPKIName(tc.pattern, tc.ns, tc.sa)
		switch {
		case tc.wantErr != "":
			if !errors.Is(err, ErrInvalidPKIName) || !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), tc.sa+".svc") {
				t.Errorf("ExpandPKIName(%q, %q) = %q, %v; want an error with %q", tc.pattern, tc.sa, got, err, tc.wantErr)
			}
		case err != nil || got != tc.want:
			t.Errorf("ExpandPKIName(%q) = %q, %v; want %q", tc.pattern, got, err, tc.want)
		}
	}
}

func FuzzValidate_pkiOptions(f *testing.F) {
	for _, s := range []string{"$(serviceAccount).$(namespace).svc", "*.x.svc", "$(", "$()", "$(namespace", "a..b", "*.*.a", "A.svc", strings.Repeat("a.", 130)} {
		f.Add(s, "$(serviceAccount).svc", "Node", "ECDSAP256")
	}
	f.Add("a.svc", "", "Vault", "")
	f.Add("a.svc", "x", "Vault", "RSA2048")
	f.Fuzz(func(t *testing.T, dns, cn, keyGen, keyType string) {
		g := AccessGrant{Spec: AccessGrantSpec{
			Subjects: []Subject{{Namespace: "demo", ServiceAccount: "app"}},
			Secrets: []SecretGrant{{Name: "cert", Source: SecretSource{Vault: &VaultSource{Mount: "pki", Engine: VaultEnginePKI, Role: "web"}},
				PKI: &PKIOptions{DNSNames: []string{dns}, CommonName: cn, KeyGeneration: PKIKeyGeneration(keyGen), KeyType: PKIKeyType(keyType)}}},
		}}
		g.Name = "g"
		err := Validate(&g)
		if err != nil {
			if !errors.Is(err, ErrInvalidGrant) {
				t.Fatalf("error %v does not match ErrInvalidGrant", err)
			}
			return
		}
		// A valid pattern expands, for a valid identity, to a valid name or a clear error.
		for _, p := range []string{dns, cn} {
			if p == "" {
				continue
			}
			n, err := ExpandPKIName(p, "demo", "app")
			if err != nil {
				if !errors.Is(err, ErrInvalidPKIName) {
					t.Fatalf("expand %q: %v", p, err)
				}
				continue
			}
			if dnsNameProblem(n) != "" || strings.Contains(n, "$(") {
				t.Fatalf("a valid pattern %q expanded to an invalid name %q", p, n)
			}
		}
	})
}
