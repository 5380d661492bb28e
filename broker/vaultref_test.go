package broker

import (
	"testing"

	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

func TestResolveFor_vaultReferences(t *testing.T) {
	podA := identity.Workload{Namespace: "ns", ServiceAccount: "app", PodUID: "uid-a"}
	podB := identity.Workload{Namespace: "ns", ServiceAccount: "app", PodUID: "uid-b"}
	other := identity.Workload{Namespace: "ns", ServiceAccount: "other", PodUID: "uid-c"}
	kv := &grant.SecretGrant{Name: "db", Source: grant.SecretSource{Vault: &grant.VaultSource{Mount: "secret", Path: "app/db"}}, Keys: []string{"password"}}
	db := func(share grant.ShareMode) *grant.SecretGrant {
		return &grant.SecretGrant{Name: "db", Share: share, Source: grant.SecretSource{Vault: &grant.VaultSource{Mount: "database", Engine: grant.VaultEngineDatabase, Role: "app"}}}
	}
	tests := []struct {
		name     string
		sg       *grant.SecretGrant
		a, b     identity.Workload
		same     bool
		wantPath string
	}{
		{"kv shared by everyone", kv, podA, other, true, "engine=kv-v2&mount=secret&path=app%2Fdb&keys=password"},
		{"database per service account: same sa", db(""), podA, podB, true, "engine=database&mount=database&role=app&owner=sa%2Fns%2Fapp"},
		{"database per service account: other sa", db(grant.ShareModeServiceAccount), podA, other, false, ""},
		{"database per pod", db(grant.ShareModePod), podA, podB, false, "engine=database&mount=database&role=app&owner=pod%2Fuid-a"},
		{"database per grant", db(grant.ShareModeGrant), podA, other, true, "engine=database&mount=database&role=app&owner=grant%2Fg1"},
		{"kv in a namespace", &grant.SecretGrant{Name: "db", Source: grant.SecretSource{Vault: &grant.VaultSource{Mount: "secret", Path: "a", Namespace: "team-a/prod"}}},
			podA, other, true, "engine=kv-v2&mount=secret&path=a&namespace=team-a%2Fprod"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dec := grant.Decision{Allowed: true, Grant: "g1", Secret: tt.sg}
			ra, _, err := resolveFor(tt.a, dec)
			if err != nil {
				t.Fatal(err)
			}
			rb, _, err := resolveFor(tt.b, dec)
			if err != nil {
				t.Fatal(err)
			}
			if (ra == rb) != tt.same {
				t.Fatalf("refs %v and %v: same = %v, want %v", ra, rb, ra == rb, tt.same)
			}
			if ra.Source != VaultSourceName {
				t.Fatalf("source = %q", ra.Source)
			}
			if tt.wantPath != "" && ra.Path != tt.wantPath {
				t.Fatalf("path = %q, want %q", ra.Path, tt.wantPath)
			}
			if _, err := vaultref.Parse(ra.Path); err != nil {
				t.Fatalf("reference does not parse: %v", err)
			}
		})
	}
}

func TestResolveFor_podShareNeedsPodBinding(t *testing.T) {
	sg := &grant.SecretGrant{Name: "db", Share: grant.ShareModePod, Source: grant.SecretSource{Vault: &grant.VaultSource{Mount: "database", Engine: grant.VaultEngineDatabase, Role: "app"}}}
	if _, _, err := resolveFor(identity.Workload{Namespace: "ns", ServiceAccount: "app"}, grant.Decision{Allowed: true, Grant: "g", Secret: sg}); err == nil {
		t.Fatal("per-pod credential resolved without a pod UID")
	}
	if _, _, err := resolve(sg); err == nil {
		t.Fatal("resolve without a caller built a leased reference")
	}
}
