package vaultref

import (
	"errors"
	"strings"
	"testing"
)

func TestSpec_Encode_roundTrip(t *testing.T) {
	tests := []struct {
		name string
		spec Spec
		want string
	}{
		{"kv-v2 whole", Spec{Engine: KVv2, Mount: "secret", Path: "app/db"}, "engine=kv-v2&mount=secret&path=app%2Fdb"},
		{"kv-v2 pinned keys", Spec{Engine: KVv2, Mount: "kv/team", Path: "a", Version: 3, Keys: []string{"b", "a", "b"}},
			"engine=kv-v2&mount=kv%2Fteam&path=a&version=3&keys=a%2Cb"},
		{"kv-v1", Spec{Engine: KVv1, Mount: "old", Path: "x=y&z"}, "engine=kv-v1&mount=old&path=x%3Dy%26z"},
		{"database per sa", Spec{Engine: Database, Mount: "database", Role: "app", Owner: ServiceAccountOwner("ns", "app")},
			"engine=database&mount=database&role=app&owner=sa%2Fns%2Fapp"},
		{"pki per pod", Spec{Engine: PKI, Mount: "pki", Role: "web", Owner: PodOwner("0f1e-22")}, "engine=pki&mount=pki&role=web&owner=pod%2F0f1e-22"},
		{"generic per grant", Spec{Engine: Generic, Mount: "aws", Path: "creds/x", Owner: GrantOwner("g1")}, "engine=generic&mount=aws&path=creds%2Fx&owner=grant%2Fg1"},
		{"kv-v2 in a namespace", Spec{Engine: KVv2, Mount: "secret", Path: "a", Namespace: "team-a/prod"}, "engine=kv-v2&mount=secret&path=a&namespace=team-a%2Fprod"},
		{"database in a namespace", Spec{Engine: Database, Mount: "db", Role: "app", Owner: PodOwner("u"), Namespace: "team_b"},
			"engine=database&mount=db&role=app&owner=pod%2Fu&namespace=team_b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.spec.Encode()
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if got != tt.want {
				t.Fatalf("Encode = %q, want %q", got, tt.want)
			}
			back, err := Parse(got)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			again, _ := back.Encode()
			if again != got {
				t.Fatalf("round trip = %q, want %q", again, got)
			}
		})
	}
}

func TestParse_rejects(t *testing.T) {
	long := strings.Repeat("a", MaxLen+1)
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"unknown field", "engine=kv-v2&mount=s&path=p&x=1"},
		{"repeated", "engine=kv-v2&mount=s&path=p&path=q"},
		{"out of order", "mount=s&engine=kv-v2&path=p"},
		{"bad engine", "engine=kv3&mount=s&path=p"},
		{"no mount", "engine=kv-v2&path=p"},
		{"traversal", "engine=kv-v2&mount=s&path=a%2F..%2Fsys"},
		{"leading slash", "engine=kv-v2&mount=%2Fs&path=p"},
		{"double slash", "engine=kv-v2&mount=s&path=a%2F%2Fb"},
		{"space", "engine=kv-v2&mount=s&path=a+b"},
		{"non canonical escape", "engine=kv-v2&mount=s&path=app/db"},
		{"bad escape", "engine=kv-v2&mount=s&path=%zz"},
		{"version on kv-v1", "engine=kv-v1&mount=s&path=p&version=2"},
		{"negative version", "engine=kv-v2&mount=s&path=p&version=-1"},
		{"version not number", "engine=kv-v2&mount=s&path=p&version=x"},
		{"leading zero version", "engine=kv-v2&mount=s&path=p&version=03"},
		{"role on kv", "engine=kv-v2&mount=s&path=p&role=r"},
		{"path on database", "engine=database&mount=d&path=p&owner=pod%2Fu"},
		{"role with slash", "engine=database&mount=d&role=a%2Fb&owner=pod%2Fu"},
		{"database without owner", "engine=database&mount=d&role=r"},
		{"owner on kv", "engine=kv-v2&mount=s&path=p&owner=pod%2Fu"},
		{"bad owner kind", "engine=database&mount=d&role=r&owner=node%2Fn"},
		{"owner parts", "engine=database&mount=d&role=r&owner=sa%2Fns"},
		{"owner chars", "engine=database&mount=d&role=r&owner=pod%2Fa%3Fb"},
		{"unsorted keys", "engine=kv-v2&mount=s&path=p&keys=b%2Ca"},
		{"duplicate keys", "engine=kv-v2&mount=s&path=p&keys=a%2Ca"},
		{"bad key", "engine=kv-v2&mount=s&path=p&keys=..x"},
		{"empty key", "engine=kv-v2&mount=s&path=p&keys="},
		{"too long", long},
		{"no equals", "engine"},
		{"empty namespace", "engine=kv-v2&mount=s&path=p&namespace="},
		{"namespace first", "namespace=a&engine=kv-v2&mount=s&path=p"},
		{"namespace trailing slash", "engine=kv-v2&mount=s&path=p&namespace=team%2F"},
		{"namespace leading slash", "engine=kv-v2&mount=s&path=p&namespace=%2Fteam"},
		{"namespace traversal", "engine=kv-v2&mount=s&path=p&namespace=team%2F.."},
		{"namespace root", "engine=kv-v2&mount=s&path=p&namespace=root"},
		{"namespace space", "engine=kv-v2&mount=s&path=p&namespace=a+b"},
		{"namespace newline", "engine=kv-v2&mount=s&path=p&namespace=a%0Ab"},
		{"namespace too long", "engine=kv-v2&mount=s&path=p&namespace=" + strings.Repeat("n", MaxNamespaceLen+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.in)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) err = %v, want ErrInvalid", tt.in, err)
			}
			if len(tt.in) > 8 && strings.Contains(err.Error(), tt.in) {
				t.Fatalf("error repeats the input: %v", err)
			}
		})
	}
}

func TestValidKey(t *testing.T) {
	for k, want := range map[string]bool{"password": true, "tls.crt": true, "a_b-c": true, "": false, ".": false, "..x": false, "a/b": false, "a b": false, strings.Repeat("k", 254): false} {
		if got := ValidKey(k); got != want {
			t.Errorf("ValidKey(%q) = %v, want %v", k, got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"engine=kv-v2&mount=secret&path=app%2Fdb",
		"engine=kv-v2&mount=kv%2Fteam&path=a&version=3&keys=a%2Cb",
		"engine=database&mount=database&role=app&owner=sa%2Fns%2Fapp",
		"engine=generic&mount=aws&path=creds%2Fx&owner=grant%2Fg1",
		"engine=kv-v2&mount=s&path=a%2F..%2Fsys",
		"engine=pki&mount=pki&role=web&owner=pod%2Fuid-1&cn=web.shop.svc&dns=web.shop.svc%2C%2A.shop.svc&uri=spiffe%3A%2F%2Fcluster.local%2Fns%2Fshop%2Fsa%2Fweb&ttl=900&minttl=60",
		"engine=pki&mount=pki&role=web&owner=sa%2Fshop%2Fweb&uri=spiffe%3A%2F%2Ftd%2Fx&keygen=vault",
		"engine=pki&mount=pki&role=web&owner=pod%2Fu&keytype=rsa2048",
		"engine=kv-v2&mount=secret&path=a&namespace=team-a%2Fprod",
		"engine=kv-v2&mount=s&path=p&namespace=root",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := Parse(in)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		// Accepted references are canonical: they re-encode to themselves.
		out, err := s.Encode()
		if err != nil || out != in {
			t.Fatalf("accepted %q but Encode = %q, %v", in, out, err)
		}
	})
}
