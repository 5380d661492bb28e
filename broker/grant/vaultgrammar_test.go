package grant

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/keywarden/keywarden/broker/source/vaultref"
)

// vaultGrant is a valid grant but for its one Vault secret clause.
func vaultGrant(vs VaultSource, keys []string) *AccessGrant {
	return &AccessGrant{
		ObjectMeta: metav1.ObjectMeta{Name: "g"},
		Spec: AccessGrantSpec{
			Subjects: []Subject{{Namespace: "demo", ServiceAccount: "app"}},
			Secrets:  []SecretGrant{{Name: "db", Source: SecretSource{Vault: &vs}, Keys: keys}},
		},
	}
}

// specOfGrant is the reference the broker encodes for the clause (broker.vaultRef).
func specOfGrant(vs VaultSource, keys []string) vaultref.Spec {
	e := vs.Engine
	if e == "" {
		e = VaultEngineKVv2
	}
	s := vaultref.Spec{Engine: vaultref.Engine(e), Mount: vs.Mount, Path: vs.Path, Role: vs.Role, Version: vs.Version, Keys: keys}
	if s.Engine.Leased() {
		s.Owner = vaultref.ServiceAccountOwner("demo", "app")
	}
	return s
}

// agree checks that the grant validator and the Vault reference grammar accept the same
// clauses: a grant that validates always yields a reference the Vault source accepts, and a
// clause the reference grammar rejects never validates.
func agree(t *testing.T, vs VaultSource, keys []string) {
	t.Helper()
	gerr := Validate(vaultGrant(vs, keys))
	_, rerr := specOfGrant(vs, keys).Encode()
	if (gerr == nil) != (rerr == nil) {
		t.Errorf("%+v keys %q: grant.Validate = %v, vaultref Encode = %v; they must agree", vs, keys, gerr, rerr)
	}
}

var vaultGrammarCases = []string{
	"secret", "kv/team", "a/b/c", "a.b", "a-b_c:d", "x@y", "",
	"/lead", "trail/", "a//b", "a/./b", "a/../b", "..", ".", "a b", "a\tb", "a?b", "a#b", "a%2Fb",
	"a*b", "a+b", "é", "a\x00b", "a\x7fb", strings.Repeat("p", vaultref.MaxPathLen), strings.Repeat("p", vaultref.MaxPathLen+1),
}

func TestValidate_vaultGrammarAgreesWithVaultref(t *testing.T) {
	for _, p := range vaultGrammarCases {
		agree(t, VaultSource{Mount: p, Path: "app/db"}, nil)
		agree(t, VaultSource{Mount: "secret", Path: p}, nil)
		agree(t, VaultSource{Mount: "secret", Path: p, Engine: VaultEngineKVv1}, nil)
		agree(t, VaultSource{Mount: "database", Role: p, Engine: VaultEngineDatabase}, nil)
		agree(t, VaultSource{Mount: "pki", Role: p, Engine: VaultEnginePKI}, nil)
	}
	for _, k := range []string{"password", "tls.crt", "a_b-c", "..x", ".", "..", "a/b", "a b", "é", "", strings.Repeat("k", 253), strings.Repeat("k", 254)} {
		agree(t, VaultSource{Mount: "secret", Path: "app/db"}, []string{k})
	}
	for _, v := range []int64{-1, 0, 3} {
		agree(t, VaultSource{Mount: "secret", Path: "p", Version: v}, nil)
		agree(t, VaultSource{Mount: "secret", Path: "p", Version: v, Engine: VaultEngineKVv1}, nil)
	}
}

// The grant validator's key check is vaultref.ValidKey; it must stay the ConfigMap key grammar
// that it replaced, since a key is also a file name in the volume.
func TestKeyProblem_isConfigMapKeyGrammar(t *testing.T) {
	for _, k := range []string{"password", "tls.crt", "a_b-c", "..x", ".", "..", ".a", "a..", "a/b", "a b", "é", strings.Repeat("k", 253), strings.Repeat("k", 254)} {
		if got, want := keyProblem(k) == "", len(validation.IsConfigMapKey(k)) == 0; got != want {
			t.Errorf("key %q: accepted = %v, ConfigMap key grammar says %v", k, got, want)
		}
	}
}

func FuzzValidate_vaultGrammarAgreesWithVaultref(f *testing.F) {
	for _, p := range vaultGrammarCases[:20] {
		f.Add(p, "password")
	}
	f.Fuzz(func(t *testing.T, p, key string) {
		agree(t, VaultSource{Mount: p, Path: "app/db"}, nil)
		agree(t, VaultSource{Mount: "secret", Path: p}, nil)
		agree(t, VaultSource{Mount: "database", Role: p, Engine: VaultEngineDatabase}, nil)
		agree(t, VaultSource{Mount: "secret", Path: "app/db"}, []string{key})
		if got, want := keyProblem(key) == "", len(validation.IsConfigMapKey(key)) == 0; got != want {
			t.Errorf("key %q: accepted = %v, ConfigMap key grammar says %v", key, got, want)
		}
	})
}
