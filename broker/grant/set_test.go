package grant

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestSet_Evaluate(t *testing.T) {
	set := mustSet(t,
		grantDoc("demo-app", specOf(`subjects: [{namespace: demo, serviceAccount: app}]`,
			`secrets: [{name: foo, source: {local: {}}}, {name: demo-db, source: {local: {}}, keys: [password]}]`)),
		grantDoc("any-ns", specOf(`subjects: [{namespace: "*", serviceAccount: metrics}]`, `secrets: [{name: metrics-token, source: {local: {}}}]`)),
		grantDoc("spiffe", specOf(`subjects: [{spiffeID: "spiffe://cluster.local/ns/*/sa/web"}]`, `secrets: [{name: web-cert, source: {local: {}}}]`)),
		grantDoc("grpc-only", specOf(`subjects: `+okSubjects, `secrets: [{name: api-key, source: {local: {}}}]`, `delivery: [GRPC]`)),
		grantDoc("shared-a", specOf(`subjects: [{namespace: demo, serviceAccount: "*"}]`, `secrets: [{name: shared, source: {local: {}}, share: Pod}]`)),
		grantDoc("shared-b", specOf(`subjects: [{namespace: demo, serviceAccount: app}]`, `secrets: [{name: shared, source: {local: {}}, share: Grant}]`)),
		grantDoc("block-legacy", specOf(`effect: Deny`, `subjects: [{namespace: legacy, serviceAccount: "*"}]`, `secrets: [{name: metrics-token, source: {local: {}}}]`)),
		grantDoc("z-allow-legacy", specOf(`subjects: [{namespace: legacy, serviceAccount: old}]`, `secrets: [{name: metrics-token, source: {local: {}}}]`)),
	)
	app := func(secret string, d Delivery) Request {
		return Request{Namespace: "demo", ServiceAccount: "app", Secret: secret, Delivery: d}
	}
	noGrant := func(r Request) string {
		return fmt.Sprintf("no grant allows service account %q to receive secret %q by %s", r.Namespace+"/"+r.ServiceAccount, r.Secret, r.Delivery)
	}
	tests := []struct {
		name      string
		req       Request
		allowed   bool
		grant     string
		reason    string
		wantShare ShareMode
	}{
		{"exact match", app("foo", DeliveryCSI), true, "demo-app", `allowed by grant "demo-app"`, ShareModeServiceAccount},
		{"exact match grpc", app("demo-db", DeliveryGRPC), true, "demo-app", `allowed by grant "demo-app"`, ShareModeServiceAccount},
		{"prefix is not a match: foo000", app("foo000", DeliveryCSI), false, "", noGrant(app("foo000", DeliveryCSI)), ""},
		{"prefix is not a match: foo.bar", app("foo.bar", DeliveryCSI), false, "", noGrant(app("foo.bar", DeliveryCSI)), ""},
		{"prefix is not a match: foo/bar", app("foo/bar", DeliveryCSI), false, "", noGrant(app("foo/bar", DeliveryCSI)), ""},
		{"shorter is not a match: fo", app("fo", DeliveryCSI), false, "", noGrant(app("fo", DeliveryCSI)), ""},
		{"case matters", app("FOO", DeliveryCSI), false, "", noGrant(app("FOO", DeliveryCSI)), ""},
		{"other service account", Request{Namespace: "demo", ServiceAccount: "other", Secret: "foo", Delivery: DeliveryCSI}, false, "", "", ""},
		{"other namespace", Request{Namespace: "prod", ServiceAccount: "app", Secret: "foo", Delivery: DeliveryCSI}, false, "", "", ""},
		{"namespace wildcard", Request{Namespace: "monitoring", ServiceAccount: "metrics", Secret: "metrics-token", Delivery: DeliveryCSI}, true, "any-ns", "", ShareModeServiceAccount},
		{"namespace wildcard needs a namespace", Request{ServiceAccount: "metrics", Secret: "metrics-token", Delivery: DeliveryCSI}, false, "", "", ""},
		{"spiffe pattern match", Request{SPIFFEID: "spiffe://cluster.local/ns/shop/sa/web", Secret: "web-cert", Delivery: DeliveryGRPC}, true, "spiffe", "", ShareModeServiceAccount},
		{"spiffe other trust domain", Request{SPIFFEID: "spiffe://evil.local/ns/shop/sa/web", Secret: "web-cert", Delivery: DeliveryGRPC}, false, "", `no grant allows SPIFFE ID "spiffe://evil.local/ns/shop/sa/web" to receive secret "web-cert" by GRPC`, ""},
		{"spiffe trust domain suffix", Request{SPIFFEID: "spiffe://cluster.local.evil/ns/shop/sa/web", Secret: "web-cert", Delivery: DeliveryGRPC}, false, "", "", ""},
		{"spiffe extra segment", Request{SPIFFEID: "spiffe://cluster.local/ns/shop/sa/web/extra", Secret: "web-cert", Delivery: DeliveryGRPC}, false, "", "", ""},
		{"spiffe missing segment", Request{SPIFFEID: "spiffe://cluster.local/ns/sa/web", Secret: "web-cert", Delivery: DeliveryGRPC}, false, "", "", ""},
		{"spiffe wildcard does not match empty segment", Request{SPIFFEID: "spiffe://cluster.local/ns//sa/web", Secret: "web-cert", Delivery: DeliveryGRPC}, false, "", "", ""},
		{"spiffe request with a star is not a wildcard", Request{SPIFFEID: "spiffe://cluster.local/ns/*/sa/web", Secret: "web-cert", Delivery: DeliveryGRPC}, false, "", "", ""},
		{"spiffe subject ignores namespace", Request{Namespace: "shop", ServiceAccount: "web", Secret: "web-cert", Delivery: DeliveryGRPC}, false, "", "", ""},
		{"deny overlapping allow", Request{Namespace: "legacy", ServiceAccount: "old", Secret: "metrics-token", Delivery: DeliveryCSI}, false, "block-legacy",
			`grant "block-legacy" denies service account "legacy/old" access to secret "metrics-token"`, ""},
		{"deny wins over wildcard allow", Request{Namespace: "legacy", ServiceAccount: "metrics", Secret: "metrics-token", Delivery: DeliveryCSI}, false, "block-legacy", "", ""},
		{"delivery mismatch", app("api-key", DeliveryCSI), false, "", noGrant(app("api-key", DeliveryCSI)), ""},
		{"delivery match", app("api-key", DeliveryGRPC), true, "grpc-only", "", ShareModeServiceAccount},
		{"empty delivery matches nothing", app("foo", ""), false, "", `no grant allows service account "demo/app" to receive secret "foo" by an unspecified delivery`, ""},
		{"unknown delivery matches nothing", app("foo", "HTTP"), false, "", "", ""},
		{"smallest grant name wins among allows", app("shared", DeliveryCSI), true, "shared-a", `allowed by grant "shared-a"`, ShareModePod},
		{"anonymous request", Request{Secret: "foo", Delivery: DeliveryCSI}, false, "", `no grant allows an anonymous caller to receive secret "foo" by CSI`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := set.Evaluate(tt.req)
			if d.Allowed != tt.allowed || d.Grant != tt.grant {
				t.Fatalf("Evaluate = {Allowed:%v Grant:%q Reason:%q}; want Allowed:%v Grant:%q", d.Allowed, d.Grant, d.Reason, tt.allowed, tt.grant)
			}
			if tt.reason != "" && d.Reason != tt.reason {
				t.Errorf("Reason = %q; want %q", d.Reason, tt.reason)
			}
			if d.Reason == "" {
				t.Error("Reason is empty")
			}
			if tt.allowed {
				if d.Secret == nil || d.Secret.Name != tt.req.Secret || d.Secret.Share != tt.wantShare {
					t.Errorf("Secret = %+v; want name %q share %q", d.Secret, tt.req.Secret, tt.wantShare)
				}
			} else if d.Secret != nil {
				t.Errorf("Secret = %+v on deny; want nil", d.Secret)
			}
		})
	}
}

func TestSet_Evaluate_notGrantedAndNonexistentAreIdentical(t *testing.T) {
	set := mustSet(t,
		grantDoc("other", specOf(`subjects: [{namespace: other, serviceAccount: app}]`, `secrets: [{name: exists, source: {local: {}}}]`)))
	exists := set.Evaluate(Request{Namespace: "demo", ServiceAccount: "app", Secret: "exists", Delivery: DeliveryCSI})
	missing := set.Evaluate(Request{Namespace: "demo", ServiceAccount: "app", Secret: "missing", Delivery: DeliveryCSI})
	if exists.Allowed || missing.Allowed {
		t.Fatal("unexpected allow")
	}
	// The reasons differ only in the requested name, which the caller already knows.
	norm := func(d Decision, name string) Decision {
		d.Reason = strings.ReplaceAll(d.Reason, fmt.Sprintf("%q", name), `"NAME"`)
		return d
	}
	if a, b := norm(exists, "exists"), norm(missing, "missing"); a.Grant != b.Grant || a.Reason != b.Reason || a.Secret != b.Secret {
		t.Errorf("decisions differ:\n  granted to another: %+v\n  does not exist:     %+v", a, b)
	}
}

func TestSet_Evaluate_noGrants(t *testing.T) {
	for name, set := range map[string]*Set{"empty": mustSet(t), "nil": nil} {
		d := set.Evaluate(Request{Namespace: "demo", ServiceAccount: "app", Secret: "db", Delivery: DeliveryCSI})
		want := Decision{Reason: `no grant allows service account "demo/app" to receive secret "db" by CSI`}
		if d.Allowed || d.Grant != "" || d.Secret != nil || d.Reason != want.Reason {
			t.Errorf("%s set: Evaluate = %+v; want %+v", name, d, want)
		}
	}
}

func TestSet_Evaluate_returnsCopies(t *testing.T) {
	set := mustSet(t, grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, keys: [a]}]`)))
	r := Request{Namespace: "demo", ServiceAccount: "app", Secret: "db", Delivery: DeliveryCSI}
	d := set.Evaluate(r)
	d.Secret.Keys[0] = "mutated"
	d.Secret.Source.Local.Name = "mutated"
	gs := set.Grants()
	gs[0].Spec.Secrets[0].Keys[0] = "mutated"
	gs[0].Spec.Subjects[0].Namespace = "mutated"
	d2 := set.Evaluate(r)
	if !d2.Allowed || d2.Secret.Keys[0] != "a" || d2.Secret.Source.Local.Name != "db" {
		t.Errorf("Set was mutated through a returned copy: %+v", d2.Secret)
	}
}

func TestSet_Grants_sortedAndDefaulted(t *testing.T) {
	set := mustSet(t,
		grantDoc("zeta", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}}]`)),
		grantDoc("alpha", specOf(`subjects: `+okSubjects, `secrets: [{name: v, source: {vault: {mount: secret, path: p}}}]`)))
	gs := set.Grants()
	if set.Len() != 2 || len(gs) != 2 || gs[0].Name != "alpha" || gs[1].Name != "zeta" {
		t.Fatalf("Grants = %v", gs)
	}
	if gs[0].Spec.Effect != EffectAllow || gs[0].Spec.Secrets[0].Share != ShareModeServiceAccount ||
		gs[0].Spec.Secrets[0].Source.Vault.Engine != VaultEngineKVv2 || gs[1].Spec.Secrets[0].Source.Local.Name != "db" {
		t.Errorf("defaults not applied: %+v", gs)
	}
	var nilSet *Set
	if nilSet.Len() != 0 || nilSet.Grants() != nil {
		t.Error("nil Set is not empty")
	}
}

func TestNewSet_errors(t *testing.T) {
	grants, err := Parse([]byte(grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: `+okSecrets))))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewSet([]AccessGrant{grants[0], grants[0]}); !errors.Is(err, ErrDuplicateGrant) || !strings.Contains(err.Error(), `"g"`) {
		t.Errorf("duplicate: err = %v", err)
	}
	bad := grants[0]
	bad.Spec.Subjects = nil
	if _, err := NewSet([]AccessGrant{bad}); !errors.Is(err, ErrInvalidGrant) ||
		!strings.Contains(err.Error(), `grant "g": spec.subjects: at least one subject is required`) {
		t.Errorf("invalid: err = %v", err)
	}
}

func TestMerge(t *testing.T) {
	a := mustSet(t, grantDoc("a", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}}]`)))
	b := mustSet(t, grantDoc("b", specOf(`effect: Deny`, `subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}}]`)))
	m, err := Merge(a, nil, b)
	if err != nil {
		t.Fatal(err)
	}
	if m.Len() != 2 {
		t.Fatalf("Len = %d", m.Len())
	}
	if d := m.Evaluate(Request{Namespace: "demo", ServiceAccount: "app", Secret: "db", Delivery: DeliveryCSI}); d.Allowed || d.Grant != "b" {
		t.Errorf("merged Deny does not win: %+v", d)
	}
	if d := a.Evaluate(Request{Namespace: "demo", ServiceAccount: "app", Secret: "db", Delivery: DeliveryCSI}); !d.Allowed {
		t.Errorf("Merge changed an input set: %+v", d)
	}
	if _, err := Merge(a, b, a); !errors.Is(err, ErrDuplicateGrant) || !strings.Contains(err.Error(), `"a" defined by more than one source`) {
		t.Errorf("duplicate across sources: err = %v", err)
	}
	if m, err := Merge(); err != nil || m.Len() != 0 {
		t.Errorf("Merge() = %v, %v", m, err)
	}
}

func TestSet_Explain(t *testing.T) {
	set := mustSet(t,
		grantDoc("demo-app", specOf(`subjects: [{spiffeID: "spiffe://td/x"}, {namespace: demo, serviceAccount: app}]`, `secrets: [{name: other, source: {local: {}}}, {name: db, source: {local: {}}}]`, `delivery: [GRPC]`)),
		grantDoc("web", specOf(`subjects: [{namespace: web, serviceAccount: "*"}]`, `secrets: [{name: cert, source: {local: {}}}]`)),
		grantDoc("web-deny", specOf(`effect: Deny`, `subjects: [{namespace: web, serviceAccount: legacy}]`, `secrets: [{name: cert, source: {local: {}}}]`)),
		grantDoc("z-db", specOf(`subjects: [{namespace: prod, serviceAccount: app}]`, `secrets: [{name: db, source: {local: {}}}]`)),
	)
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{"allowed", Request{Namespace: "demo", ServiceAccount: "app", Secret: "db", Delivery: DeliveryGRPC}, `request: namespace="demo" serviceAccount="app" spiffeID="" secret="db" delivery="GRPC"
decision: ALLOW by grant "demo-app"
grants (4):
  demo-app  Allow  subject=yes[1]   secret=yes[1]   delivery=yes  => match
  web       Allow  subject=no       secret=no       delivery=yes
  web-deny  Deny   subject=no       secret=no       delivery=yes
  z-db      Allow  subject=no       secret=yes[0]   delivery=yes
`},
		{"delivery near miss", Request{Namespace: "demo", ServiceAccount: "app", Secret: "db", Delivery: DeliveryCSI}, `request: namespace="demo" serviceAccount="app" spiffeID="" secret="db" delivery="CSI"
decision: DENY (no grant allows service account "demo/app" to receive secret "db" by CSI)
grants (4):
  demo-app  Allow  subject=yes[1]   secret=yes[1]   delivery=no
  web       Allow  subject=no       secret=no       delivery=yes
  web-deny  Deny   subject=no       secret=no       delivery=yes
  z-db      Allow  subject=no       secret=yes[0]   delivery=yes
hint: grant "demo-app" matches except for delivery: add CSI to its spec.delivery
`},
		{"denied by deny", Request{Namespace: "web", ServiceAccount: "legacy", Secret: "cert", Delivery: DeliveryCSI}, `request: namespace="web" serviceAccount="legacy" spiffeID="" secret="cert" delivery="CSI"
decision: DENY by grant "web-deny"
grants (4):
  demo-app  Allow  subject=no       secret=no       delivery=no
  web       Allow  subject=yes[0]   secret=yes[0]   delivery=yes  => match
  web-deny  Deny   subject=yes[0]   secret=yes[0]   delivery=yes  => match
  z-db      Allow  subject=no       secret=no       delivery=yes
hint: Deny grant "web-deny" matches and a Deny always wins: remove secret "cert" from it or narrow its subjects
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := set.Explain(tt.req)
			if got := e.String(); got != tt.want {
				t.Errorf("Explain().String() =\n%s\nwant\n%s", got, tt.want)
			}
			if d := set.Evaluate(tt.req); d.Allowed != e.Decision.Allowed || d.Grant != e.Decision.Grant || d.Reason != e.Decision.Reason {
				t.Errorf("Explain decision %+v differs from Evaluate %+v", e.Decision, d)
			}
		})
	}
	hints := []struct {
		name string
		req  Request
		want string
	}{
		{"subject near miss", Request{Namespace: "staging", ServiceAccount: "app", Secret: "db", Delivery: DeliveryCSI},
			`grant "z-db" covers secret "db" but not this workload: add subject {namespace: staging, serviceAccount: app} to it`},
		{"nothing close", Request{Namespace: "demo", ServiceAccount: "app", Secret: "new", Delivery: DeliveryCSI},
			`add an Allow grant with subject {namespace: demo, serviceAccount: app} and secret "new" (delivery CSI)`},
		{"spiffe caller", Request{SPIFFEID: "spiffe://td/y", Secret: "new", Delivery: DeliveryGRPC},
			`add an Allow grant with subject {spiffeID: spiffe://td/y} and secret "new" (delivery GRPC)`},
		{"invalid name", Request{Namespace: "demo", ServiceAccount: "app", Secret: "../x", Delivery: DeliveryCSI},
			`the requested secret name is invalid (must not contain "/"): no grant can match it`},
		{"no delivery", Request{Namespace: "demo", ServiceAccount: "app", Secret: "db"},
			`the request must name a delivery: CSI or GRPC`},
		{"no identity", Request{Secret: "db", Delivery: DeliveryCSI},
			`the request has no identity (namespace+serviceAccount or SPIFFE ID): no grant can match it`},
	}
	for _, tt := range hints {
		t.Run(tt.name, func(t *testing.T) {
			if got := set.Explain(tt.req).Hint; got != tt.want {
				t.Errorf("Hint = %q; want %q", got, tt.want)
			}
		})
	}
	var nilSet *Set
	if e := nilSet.Explain(Request{Namespace: "a", ServiceAccount: "b", Secret: "c", Delivery: DeliveryCSI}); e.Decision.Allowed || e.Hint == "" {
		t.Errorf("nil Set Explain = %+v", e)
	}
}

// GRPC covers sealed responses (for Allow and Deny alike); GRPCSealed alone requires them.
func TestSet_Evaluate_sealedDelivery(t *testing.T) {
	set := mustSet(t,
		grantDoc("sealed-only", specOf(`subjects: [{namespace: demo, serviceAccount: app}]`, `secrets: [{name: db, source: {local: {}}}]`, `delivery: [GRPCSealed]`)),
		grantDoc("grpc", specOf(`subjects: [{namespace: demo, serviceAccount: app}]`, `secrets: [{name: api, source: {local: {}}}]`, `delivery: [GRPC]`)),
		grantDoc("every-channel", specOf(`subjects: [{namespace: demo, serviceAccount: app}]`, `secrets: [{name: cfg, source: {local: {}}}]`)),
		grantDoc("allow-legacy", specOf(`subjects: [{namespace: legacy, serviceAccount: app}]`, `secrets: [{name: api, source: {local: {}}}]`)),
		grantDoc("deny-legacy-grpc", specOf(`effect: Deny`, `subjects: [{namespace: legacy, serviceAccount: app}]`, `secrets: [{name: api, source: {local: {}}}]`, `delivery: [GRPC]`)),
	)
	req := func(ns, secret string, d Delivery) Request {
		return Request{Namespace: ns, ServiceAccount: "app", Secret: secret, Delivery: d}
	}
	tests := []struct {
		name    string
		req     Request
		allowed bool
		reason  string
	}{
		{"sealed-only grant, sealed request", req("demo", "db", DeliveryGRPCSealed), true, `allowed by grant "sealed-only"`},
		{"sealed-only grant, plain request", req("demo", "db", DeliveryGRPC), false, `no grant allows service account "demo/app" to receive secret "db" by GRPC`},
		{"sealed-only grant, CSI", req("demo", "db", DeliveryCSI), false, ""},
		{"GRPC grant allows sealed", req("demo", "api", DeliveryGRPCSealed), true, `allowed by grant "grpc"`},
		{"every channel allows sealed", req("demo", "cfg", DeliveryGRPCSealed), true, ""},
		{"a GRPC Deny denies sealed too", req("legacy", "api", DeliveryGRPCSealed), false, `grant "deny-legacy-grpc" denies service account "legacy/app"`},
		{"no grant: the reason names the sealed channel", req("demo", "nope", DeliveryGRPCSealed), false,
			`no grant allows service account "demo/app" to receive secret "nope" by GRPC with a sealed response`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := set.Evaluate(tt.req)
			if d.Allowed != tt.allowed || (tt.reason != "" && !strings.Contains(d.Reason, tt.reason)) {
				t.Fatalf("Evaluate = %v %q; want %v containing %q", d.Allowed, d.Reason, tt.allowed, tt.reason)
			}
		})
	}
}
