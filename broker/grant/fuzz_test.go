package grant

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte(simpleGrant("a")))
	f.Add([]byte(simpleGrant("a") + "---\n" + simpleGrant("b")))
	f.Add([]byte(fileDoc(`db/password`, `, mode: 0400`)))
	f.Add([]byte(grantDoc("g", specOf(`effect: Deny`, `subjects: [{spiffeID: "spiffe://td/ns/*/sa/x"}]`,
		`secrets: [{name: db, source: {vault: {mount: secret, path: a/b}}, ttl: {min: 5m, max: 1h}, refresh: {interval: 30s}}]`, `delivery: [CSI]`))))
	f.Add([]byte(grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {vault: {mount: database, engine: database, role: app, namespace: team-a/prod}}}]`))))
	f.Add([]byte("--- {a: 1}\n---\n- x\n"))
	f.Add([]byte("key: &a [*a]\n"))
	f.Add([]byte(`{"apiVersion": "keywarden.io/v1alpha1"}`))
	f.Add([]byte("# none\n[]\n"))
	f.Add([]byte(grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: cert, source: {vault: {mount: pki, engine: pki, role: web}}, ttl: {max: 1h}, pki: {dnsNames: ["$(serviceAccount).$(namespace).svc"], keyGeneration: Vault}}]`))))
	f.Add([]byte(grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}}]`, `templates: [{path: app.env, template: "U={{ .db.u | quote }}\n{{ secret \"db\" \"p\" }}"}]`))))
	f.Fuzz(func(t *testing.T, data []byte) {
		grants, err := Parse(data)
		if ExplicitlyEmpty(data) && (err != nil || len(grants) != 0) {
			t.Fatalf("an explicit empty list parsed to %d grants, %v", len(grants), err)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidGrant) {
				t.Fatalf("error %v does not match ErrInvalidGrant", err)
			}
			return
		}
		// What Parse accepts, NewSet accepts, and evaluating it never panics.
		set, err := NewSet(grants)
		if err != nil {
			t.Fatalf("NewSet rejected parsed grants: %v", err)
		}
		for _, g := range set.Grants() {
			for _, s := range g.Spec.Secrets {
				_ = set.Evaluate(Request{Namespace: "demo", ServiceAccount: "app", SPIFFEID: "spiffe://td/ns/a/sa/x", Secret: s.Name, Delivery: DeliveryCSI})
				_ = set.Explain(Request{Namespace: "demo", ServiceAccount: "app", Secret: s.Name, Delivery: DeliveryGRPC}).String()
			}
		}
	})
}

func FuzzValidateFilePath(f *testing.F) {
	for _, s := range []string{"db/password", "../x", "/abs", "a/../../b", "..data", "a\x00b", "a//b", "a/", ".", "x/" + strings.Repeat("c", 256), "é/ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		err := ValidateFilePath(p)
		if err != nil {
			if !errors.Is(err, ErrInvalidFilePath) {
				t.Fatalf("error %v does not match ErrInvalidFilePath", err)
			}
			// The message is one of a fixed set: it never grows with (repeats) the input.
			if len(err.Error()) > 160 {
				t.Fatalf("error too long, may repeat the path: %v", err)
			}
			return
		}
		// Whatever is accepted stays inside the volume and is a plain relative name.
		if p == "" || len(p) > MaxFilePathLen || strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) || !utf8.ValidString(p) {
			t.Fatalf("accepted %q", p)
		}
		for _, c := range strings.Split(p, "/") {
			if c == "" || c == "." || strings.HasPrefix(c, "..") || len(c) > MaxFileComponentLen {
				t.Fatalf("accepted %q with component %q", p, c)
			}
		}
	})
}

func FuzzValidateSecretName(f *testing.F) {
	for _, s := range []string{"db", "demo-db", "a.b_c", "../x", "a/b", "a\x00", "A", strings.Repeat("a", 254), "-a", "a-", "a..b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidateSecretName(name)
		if err != nil {
			if !errors.Is(err, ErrInvalidSecretName) {
				t.Fatalf("error %v does not match ErrInvalidSecretName", err)
			}
			if len(err.Error()) > 160 {
				t.Fatalf("error too long, may repeat the name: %v", err)
			}
			return
		}
		if name == "" || len(name) > MaxSecretNameLen || strings.ContainsAny(name, "/\x00") || strings.Contains(name, "..") {
			t.Fatalf("accepted %q", name)
		}
		for i := 0; i < len(name); i++ {
			c := name[i]
			if !((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_') {
				t.Fatalf("accepted %q with byte %q", name, c)
			}
		}
		// A valid name is also a valid single-component file path.
		if err := ValidateFilePath(name); err != nil {
			t.Fatalf("valid secret name %q is not a valid file path: %v", name, err)
		}
	})
}

func TestValidateSecretName(t *testing.T) {
	tests := []struct {
		name string
		want string // "" = valid
	}{
		{"db", ""},
		{"demo-db.v2_x", ""},
		{"0", ""},
		{strings.Repeat("a", 253), ""},
		{"", "must not be empty"},
		{strings.Repeat("a", 254), "must be at most 253 bytes, got 254"},
		{"../x", `must not contain "/"`},
		{"a/b", `must not contain "/"`},
		{"a..b", `must not contain ".."`},
		{"a\x00b", "must not contain NUL"},
		{"Db", "must be lower case"},
		{"-db", "must consist of"},
		{"db.", "must consist of"},
		{"d b", "must consist of"},
	}
	for _, tt := range tests {
		err := ValidateSecretName(tt.name)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("ValidateSecretName(%q) = %v; want nil", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalidSecretName)):
			t.Errorf("ValidateSecretName(%q) = %v; want %q", tt.name, err, tt.want)
		}
	}
}

func TestValidateFilePath(t *testing.T) {
	tests := []struct {
		path string
		want string
	}{
		{"password", ""},
		{"db/password", ""},
		{"a/.hidden", ""},
		{"a/b.", ""},
		{strings.Repeat("c", 255), ""},
		{"", "must not be empty"},
		{"../x", `must not contain ".." components`},
		{"/abs", "must be relative"},
		{"a/../../b", `must not contain ".." components`},
		{"..data", `components must not start with ".."`},
		{"a/..2026_01_01", `components must not start with ".."`},
		{"a\x00b", "must not contain NUL"},
		{"a\nb", "must not contain control characters"},
		{"\xff", "must be valid UTF-8"},
		{"./a", `must not contain "." components`},
		{"a//b", "must not contain empty components"},
		{strings.Repeat("c", 256), "each component must be at most 255 bytes, got 256"},
		{strings.Repeat("a/", 2048) + "a", "must be at most 4096 bytes, got 4097"},
	}
	for _, tt := range tests {
		err := ValidateFilePath(tt.path)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("ValidateFilePath(%q) = %v; want nil", tt.path, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalidFilePath)):
			t.Errorf("ValidateFilePath(%q) = %v; want %q", tt.path, err, tt.want)
		}
	}
}

func BenchmarkSet_Evaluate(b *testing.B) {
	var docs []string
	for i := range 1000 {
		docs = append(docs, grantDoc(fmt.Sprintf("grant-%04d", i), specOf(
			fmt.Sprintf(`subjects: [{namespace: ns-%d, serviceAccount: app}, {spiffeID: "spiffe://cluster.local/ns/ns-%d/sa/*"}]`, i, i),
			fmt.Sprintf(`secrets: [{name: db-%d, source: {local: {}}}, {name: shared, source: {local: {}}}]`, i))))
	}
	set := mustSet(b, docs...)
	reqs := map[string]Request{
		"allow":        {Namespace: "ns-500", ServiceAccount: "app", Secret: "db-500", Delivery: DeliveryCSI},
		"deny-no-name": {Namespace: "ns-500", ServiceAccount: "app", Secret: "missing", Delivery: DeliveryCSI},
		"shared-last":  {Namespace: "ns-999", ServiceAccount: "app", Secret: "shared", Delivery: DeliveryCSI},
		"spiffe":       {SPIFFEID: "spiffe://cluster.local/ns/ns-999/sa/web", Secret: "shared", Delivery: DeliveryGRPC},
	}
	for name, r := range reqs {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = set.Evaluate(r)
			}
		})
	}
}
