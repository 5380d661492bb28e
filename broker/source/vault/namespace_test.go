package vault

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

// seenNamespaces returns the namespaces the fake saw per call, sorted for messages.
func (f *fakeVault) seenNamespaces() map[string][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]string{}
	for k, v := range f.namespaces {
		out[k] = slices.Sorted(maps.Keys(v))
	}
	return out
}

// exerciseAllKinds sends every kind of request the source makes: login, KV v2 data and
// metadata, KV v1 (and the mount lookup after its 404), database lease issue, renewal and
// revocation, a PKI issue, and the token's renewal.
func exerciseAllKinds(t *testing.T, e *env, spec func(vaultref.Spec) vaultref.Spec) {
	t.Helper()
	ctx := ctxT(t)
	e.f.putKV2("a", map[string]any{"k": "s3cr3t"})
	e.f.kv1["b"] = map[string]any{"k": "s3cr3t"}
	get := func(s vaultref.Spec) *source.Secret {
		t.Helper()
		sec, err := e.s.Fetch(ctx, ref(t, spec(s)))
		if err != nil {
			t.Fatalf("fetch %s %s: %v", s.Engine, s.Mount, err)
		}
		return sec
	}
	get(kv2("a"))
	e.clock.Step(time.Second)
	get(kv2("a")) // metadata check
	get(vaultref.Spec{Engine: vaultref.KVv1, Mount: "kv1", Path: "b"})
	if _, err := e.s.Fetch(ctx, ref(t, spec(vaultref.Spec{Engine: vaultref.KVv1, Mount: "kv1", Path: "missing"}))); !errors.Is(err, source.ErrNotFound) {
		t.Fatalf("missing kv1: %v", err)
	}
	db := spec(vaultref.Spec{Engine: vaultref.Database, Mount: "database", Role: "app", Owner: vaultref.PodOwner("u1")})
	s1 := get(db)
	e.clock.SetTime(s1.RenewAfter)
	s2 := get(db) // renewal
	e.f.mu.Lock()
	e.f.refuse = true
	e.f.mu.Unlock()
	e.clock.SetTime(s2.RenewAfter)
	get(db) // refused renewal → a new lease, the old one revoked after the grace
	e.clock.Step(11 * time.Second)
	e.s.reap(context.Background())

	newFakePKI(t, e)
	get(vaultref.Spec{Engine: vaultref.PKI, Mount: "pki", Role: "web", Owner: vaultref.PodOwner("uid-1"),
		PKI: vaultref.PKIRequest{URISAN: testSPIFFE, KeyGen: vaultref.KeyGenVault}})

	e.s.auth.mu.Lock()
	tok, ttl := e.s.auth.token, e.s.auth.ttl
	e.s.auth.mu.Unlock()
	e.s.auth.renew(ctx, tok, ttl)

	for _, want := range []string{"PUT sys/leases/renew", "PUT sys/leases/revoke", "PUT pki/issue/web", "POST auth/token/renew-self",
		"GET secret/metadata/a", "GET sys/internal/ui/mounts/kv1"} {
		if e.f.count(want) == 0 {
			t.Fatalf("no %s was sent", want)
		}
	}
}

func TestSource_namespace_daemonWideOnEveryRequest(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Namespace = "team-a" })
	e.f.health["enterprise"] = true
	exerciseAllKinds(t, e, func(s vaultref.Spec) vaultref.Spec { return s })
	for call, nss := range e.f.seenNamespaces() {
		want := []string{"team-a"}
		if call == "GET sys/health" {
			want = []string{""} // asked in the root namespace
		}
		if !slices.Equal(nss, want) {
			t.Errorf("%s carried namespaces %q, want %q", call, nss, want)
		}
	}
	if n := e.f.count("GET sys/health"); n != 1 {
		t.Errorf("sys/health asked %d times, want once", n)
	}
}

func TestSource_namespace_perSourceAndAuth(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Namespace = "team-a"; c.Auth.Namespace = "platform" })
	e.f.health["enterprise"] = true
	exerciseAllKinds(t, e, func(s vaultref.Spec) vaultref.Spec { s.Namespace = "team-b/prod"; return s })
	for call, nss := range e.f.seenNamespaces() {
		var want []string
		switch {
		case call == "GET sys/health":
			want = []string{""}
		case strings.Contains(call, "auth/"):
			want = []string{"platform"} // login, token renewal
		default:
			want = []string{"team-b/prod"} // the reference's own, also for lease renewal and revocation
		}
		if !slices.Equal(nss, want) {
			t.Errorf("%s carried namespaces %q, want %q", call, nss, want)
		}
	}
}

func TestSource_namespace_noneSendsNoHeader(t *testing.T) {
	e := newEnv(t, nil)
	exerciseAllKinds(t, e, func(s vaultref.Spec) vaultref.Spec { return s })
	for call, nss := range e.f.seenNamespaces() {
		if !slices.Equal(nss, []string{""}) {
			t.Errorf("%s carried namespaces %q, want none", call, nss)
		}
	}
	if n := e.f.count("GET sys/health"); n != 0 {
		t.Errorf("sys/health asked %d times without a namespace", n)
	}
}

func TestSource_namespace_refusedByOpenSourceVault(t *testing.T) {
	t.Run("daemon-wide: refused before login", func(t *testing.T) {
		e := newEnv(t, func(c *Config) { c.Namespace = "team-a" })
		if err := e.s.CheckNamespaces(ctxT(t)); !errors.Is(err, ErrNamespaceUnsupported) {
			t.Fatalf("CheckNamespaces = %v", err)
		}
		e.f.putKV2("a", map[string]any{"k": "s3cr3t"})
		_, err := e.s.Fetch(ctxT(t), ref(t, kv2("a")))
		if !errors.Is(err, ErrNamespaceUnsupported) || !errors.Is(err, source.ErrUnavailable) {
			t.Fatalf("Fetch = %v", err)
		}
		if n := e.f.count("PUT auth/kubernetes/login"); n != 0 {
			t.Fatalf("logged in %d times with a namespace the server ignores", n)
		}
		if !strings.Contains(e.logs.String(), "not Vault Enterprise") {
			t.Fatal("the refusal was not logged")
		}
	})
	t.Run("per source: refused, the rest served", func(t *testing.T) {
		e := newEnv(t, nil)
		if err := e.s.CheckNamespaces(ctxT(t)); err != nil {
			t.Fatalf("CheckNamespaces without a namespace = %v", err)
		}
		e.f.putKV2("a", map[string]any{"k": "s3cr3t"})
		ns := kv2("a")
		ns.Namespace = "team-a"
		if _, err := e.s.Fetch(ctxT(t), ref(t, ns)); !errors.Is(err, ErrNamespaceUnsupported) {
			t.Fatalf("Fetch in a namespace = %v", err)
		}
		if e.f.count("GET secret/data/a") != 0 {
			t.Fatal("a namespaced read reached the root namespace")
		}
		if _, err := e.s.Fetch(ctxT(t), ref(t, kv2("a"))); err != nil {
			t.Fatalf("Fetch without a namespace = %v", err)
		}
	})
	t.Run("old server without the enterprise field: version decides", func(t *testing.T) {
		e := newEnv(t, func(c *Config) { c.Namespace = "team-a" })
		delete(e.f.health, "enterprise")
		e.f.health["version"] = "1.12.3+ent"
		if err := e.s.CheckNamespaces(ctxT(t)); err != nil {
			t.Fatalf("CheckNamespaces = %v", err)
		}
	})
}

func TestNew_badNamespace(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"daemon-wide": func(c *Config) { c.Namespace = "a//b" },
		"auth":        func(c *Config) { c.Auth.Namespace = "/x" },
		"root":        func(c *Config) { c.Namespace = "root" },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := Config{Address: "http://127.0.0.1:1", Auth: AuthConfig{Method: MethodKubernetes, Role: "r", TokenFile: "/t"}, Logger: slog.New(slog.DiscardHandler)}
			mutate(&cfg)
			if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "namespace") {
				t.Fatalf("New = %v", err)
			}
		})
	}
}
