package grant

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParse_valid(t *testing.T) {
	in := `# grants for the demo
apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata:
  name: demo-app
spec:
  effect: Allow
  subjects:
    - namespace: demo
      serviceAccount: app
    - spiffeID: spiffe://cluster.local/ns/demo/sa/*
  secrets:
    - name: demo-db
      source:
        local: {name: demo-db}
      keys: [password, username]
      files:
        - key: password
          path: db/password
          mode: 0400
        - key: username
          path: db/username
          mode: 288
      ttl: {min: 5m, max: 24h}
      refresh: {interval: 30s}
      share: ServiceAccount
    - name: api-key
      source:
        vault: {mount: secret, path: app/api, engine: kv-v2, version: 3}
  delivery: [CSI, GRPC]
---
---
{"apiVersion": "keywarden.io/v1alpha1", "kind": "AccessGrant", "metadata": {"name": "json-one"},
 "spec": {"subjects": [{"namespace": "*", "serviceAccount": "*"}], "secrets": [{"name": "db2", "source": {"vault": {"mount": "database", "engine": "database", "role": "ro"}}}]}}
`
	grants, err := Parse([]byte(in))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(grants) != 2 {
		t.Fatalf("got %d grants, want 2", len(grants))
	}
	g := grants[0]
	if g.Name != "demo-app" || len(g.Spec.Subjects) != 2 || len(g.Spec.Secrets) != 2 {
		t.Fatalf("unexpected grant: %+v", g)
	}
	s := g.Spec.Secrets[0]
	if *s.Files[0].Mode != 0o400 || *s.Files[1].Mode != 0o440 {
		t.Errorf("modes = %#o, %#o; want 0400, 0440", *s.Files[0].Mode, *s.Files[1].Mode)
	}
	if s.TTL.Min.Duration != 5*time.Minute || s.TTL.Max.Duration != 24*time.Hour || s.Refresh.Interval.Duration != 30*time.Second {
		t.Errorf("durations = %v %v %v", s.TTL.Min, s.TTL.Max, s.Refresh.Interval)
	}
	if v := g.Spec.Secrets[1].Source.Vault; v == nil || v.Version != 3 || v.Path != "app/api" {
		t.Errorf("vault source = %+v", v)
	}
	if grants[1].Name != "json-one" {
		t.Errorf("second grant = %q", grants[1].Name)
	}
}

func TestParse_empty(t *testing.T) {
	for _, in := range []string{"", "\n", "# nothing\n", "---\n---\n", "\xef\xbb\xbf", "[]", "# none\n[]\n---\n"} {
		grants, err := Parse([]byte(in))
		if err != nil || len(grants) != 0 {
			t.Errorf("Parse(%q) = %v, %v; want no grants, no error", in, grants, err)
		}
	}
}

func TestExplicitlyEmpty(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"[]", true},
		{"# every grant withdrawn\n[]\n", true},
		{"---\n[]\n---\n", true},
		{"", false},
		{"\n\n", false},
		{"# nothing\n", false},
		{"---\n---\n", false},
		{"[]\n---\n" + grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: `+okSecrets)), false},
		{"[a]", false},
		{"{}", false},
		{"[", false},
	}
	for _, tt := range tests {
		if got := ExplicitlyEmpty([]byte(tt.in)); got != tt.want {
			t.Errorf("ExplicitlyEmpty(%q) = %v; want %v", tt.in, got, tt.want)
		}
	}
}

func TestParse_rejects(t *testing.T) {
	long := strings.Repeat("a", 254)
	comp256 := strings.Repeat("c", 256)
	tests := []struct {
		name string
		in   string
		want []string // each must appear in the error
	}{
		{"unknown top-level field", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: `+okSecrets)) + "status: {}\n",
			[]string{`document 1 (line 1): status: unknown field: remove it or check its spelling`}},
		{"unknown nested field", grantDoc("g", specOf(`subjects: [{namespce: demo, serviceAccount: app}]`, `secrets: `+okSecrets)),
			[]string{`spec.subjects[0].namespce: unknown field`}},
		{"unknown field deep in secrets", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {nmae: x}}}]`)),
			[]string{`spec.secrets[0].source.local.nmae: unknown field`}},
		{"duplicate yaml key", "apiVersion: keywarden.io/v1alpha1\napiVersion: x\n", []string{`not valid YAML`, `already set`}},
		{"wrong apiVersion", strings.Replace(grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: `+okSecrets)), "v1alpha1", "v1", 1),
			[]string{`apiVersion: must be "keywarden.io/v1alpha1", got "keywarden.io/v1"`}},
		{"missing apiVersion", "kind: AccessGrant\nmetadata: {name: g}\nspec: " + specOf(`subjects: `+okSubjects, `secrets: `+okSecrets),
			[]string{`apiVersion: is required: set it to "keywarden.io/v1alpha1"`}},
		{"wrong kind", strings.Replace(grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: `+okSecrets)), "kind: AccessGrant", "kind: Secret", 1),
			[]string{`kind: must be "AccessGrant", got "Secret"`}},
		{"missing name", "apiVersion: keywarden.io/v1alpha1\nkind: AccessGrant\nspec: " + specOf(`subjects: `+okSubjects, `secrets: `+okSecrets),
			[]string{`metadata.name: is required`}},
		{"bad name", grantDoc("Demo_App", specOf(`subjects: `+okSubjects, `secrets: `+okSecrets)),
			[]string{`metadata.name: "Demo_App" is not a valid name`}},
		{"namespaced", strings.Replace(grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: `+okSecrets)), "{name: g}", "{name: g, namespace: x}", 1),
			[]string{`metadata.namespace: AccessGrant is cluster-scoped`}},
		{"duplicate grant names in one file",
			grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: `+okSecrets)) + "---\n" + grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: `+okSecrets)),
			[]string{`document 2 (line 5): metadata.name: duplicate grant name "g" (also document 1 (line 1))`}},
		{"empty subjects", grantDoc("g", specOf(`subjects: []`, `secrets: `+okSecrets)),
			[]string{`spec.subjects: at least one subject is required`}},
		{"missing subjects", grantDoc("g", specOf(`secrets: `+okSecrets)),
			[]string{`spec.subjects: at least one subject is required`}},
		{"subject with both forms", grantDoc("g", specOf(`subjects: [{namespace: demo, serviceAccount: app, spiffeID: "spiffe://td/x"}]`, `secrets: `+okSecrets)),
			[]string{`spec.subjects[0]: set either namespace+serviceAccount or spiffeID, not both`}},
		{"subject with neither", grantDoc("g", specOf(`subjects: [{}]`, `secrets: `+okSecrets)),
			[]string{`spec.subjects[0]: set either namespace+serviceAccount or spiffeID`}},
		{"namespace without service account", grantDoc("g", specOf(`subjects: [{namespace: demo}]`, `secrets: `+okSecrets)),
			[]string{`spec.subjects[0].serviceAccount: is required with namespace`}},
		{"bad namespace", grantDoc("g", specOf(`subjects: [{namespace: Demo_NS, serviceAccount: app}]`, `secrets: `+okSecrets)),
			[]string{`spec.subjects[0].namespace: "Demo_NS" is not a valid namespace`}},
		{"partial namespace wildcard", grantDoc("g", specOf(`subjects: [{namespace: "dem*", serviceAccount: app}]`, `secrets: `+okSecrets)),
			[]string{`spec.subjects[0].namespace: "dem*" is not a valid namespace`}},
		{"bad service account", grantDoc("g", specOf(`subjects: [{namespace: demo, serviceAccount: "a/b"}]`, `secrets: `+okSecrets)),
			[]string{`spec.subjects[0].serviceAccount: "a/b" is not a valid service account name`}},
		{"spiffe partial wildcard", grantDoc("g", specOf(`subjects: [{spiffeID: "spiffe://cluster.local/ns/demo/sa/ap*"}]`, `secrets: `+okSecrets)),
			[]string{`spec.subjects[0].spiffeID: "spiffe://cluster.local/ns/demo/sa/ap*": a wildcard must be a whole path segment "*", not part of one`}},
		{"spiffe wildcard trust domain", grantDoc("g", specOf(`subjects: [{spiffeID: "spiffe://*/ns/demo"}]`, `secrets: `+okSecrets)),
			[]string{`the trust domain cannot be a wildcard`}},
		{"spiffe partial wildcard trust domain", grantDoc("g", specOf(`subjects: [{spiffeID: "spiffe://*.local/ns/demo"}]`, `secrets: `+okSecrets)),
			[]string{`the trust domain cannot be a wildcard`}},
		{"not spiffe", grantDoc("g", specOf(`subjects: [{spiffeID: "https://cluster.local/ns/demo"}]`, `secrets: `+okSecrets)),
			[]string{`must start with "spiffe://"`}},
		{"spiffe no path", grantDoc("g", specOf(`subjects: [{spiffeID: "spiffe://cluster.local"}]`, `secrets: `+okSecrets)),
			[]string{`a path is required`}},
		{"spiffe port", grantDoc("g", specOf(`subjects: [{spiffeID: "spiffe://cluster.local:443/x"}]`, `secrets: `+okSecrets)),
			[]string{`the trust domain may contain only`}},
		{"spiffe dotdot", grantDoc("g", specOf(`subjects: [{spiffeID: "spiffe://td/ns/../x"}]`, `secrets: `+okSecrets)),
			[]string{`must not contain "." or ".." segments`}},
		{"empty secrets", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: []`)),
			[]string{`spec.secrets: at least one secret is required`}},
		{"duplicate secret names", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}}, {name: db, source: {local: {}}}]`)),
			[]string{`spec.secrets[1].name: duplicate secret name "db" (also spec.secrets[0])`}},
		{"secret name ../x", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: "../x", source: {local: {}}}]`)),
			[]string{`spec.secrets[0].name: "../x": must not contain "/"`}},
		{"secret name a/b", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: "a/b", source: {local: {}}}]`)),
			[]string{`spec.secrets[0].name: "a/b": must not contain "/"`}},
		{"secret name a..b", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: "a..b", source: {local: {}}}]`)),
			[]string{`spec.secrets[0].name: "a..b": must not contain ".."`}},
		{"secret name NUL", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: "a\0b", source: {local: {}}}]`)),
			[]string{`spec.secrets[0].name: "a\x00b": must not contain NUL`}},
		{"secret name 254 bytes", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: `+long+`, source: {local: {}}}]`)),
			[]string{`spec.secrets[0].name: "aaaa`, `must be at most 253 bytes, got 254`}},
		{"secret name uppercase", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: DB, source: {local: {}}}]`)),
			[]string{`spec.secrets[0].name: "DB": must be lower case`}},
		{"secret name missing", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{source: {local: {}}}]`)),
			[]string{`spec.secrets[0].name: is required`}},
		{"duration in words", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, ttl: {min: 5 minutes}}]`)),
			[]string{`spec.secrets[0].ttl.min: "5 minutes" is not a duration: use Go duration syntax`}},
		{"duration bad refresh", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, refresh: {interval: soon}}]`)),
			[]string{`spec.secrets[0].refresh.interval: "soon" is not a duration`}},
		{"duration number", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, ttl: {max: 30}}]`)),
			[]string{`spec.secrets[0].ttl.max: wrong type: expected a duration string`}},
		{"negative duration", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, ttl: {min: -5m}}]`)),
			[]string{`spec.secrets[0].ttl.min: -5m0s is not valid: must be greater than 0`}},
		{"min greater than max", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, ttl: {min: 2h, max: 1h}}]`)),
			[]string{`spec.secrets[0].ttl: min (2h0m0s) is greater than max (1h0m0s)`}},
		{"empty ttl", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, ttl: {}}]`)),
			[]string{`spec.secrets[0].ttl: set min, max or both`}},
		{"refresh too fast", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, refresh: {interval: 500ms}}]`)),
			[]string{`spec.secrets[0].refresh.interval: 500ms is too short: use at least 1s`}},
		{"file path ../x", fileDoc(`"../x"`, ""), []string{`spec.secrets[0].files[0].path: "../x": must not contain ".." components`}},
		{"file path /abs", fileDoc(`/abs`, ""), []string{`spec.secrets[0].files[0].path: "/abs": must be relative: remove the leading "/"`}},
		{"file path a/../../b", fileDoc(`a/../../b`, ""), []string{`"a/../../b": must not contain ".." components`}},
		{"file path ..data", fileDoc(`..data`, ""), []string{`"..data": components must not start with ".."`}},
		{"file path NUL", fileDoc(`"a\0b"`, ""), []string{`"a\x00b": must not contain NUL`}},
		{"file path 256-byte component", fileDoc("x/"+comp256, ""), []string{`each component must be at most 255 bytes, got 256`}},
		{"file path trailing slash", fileDoc(`a/`, ""), []string{`must not contain empty components`}},
		{"file mode 01777", fileDoc(`p`, `, mode: 01777`), []string{`spec.secrets[0].files[0].mode: 01777 is not valid: use permission bits between 0 and 0777`}},
		{"file mode 0o1000", fileDoc(`p`, `, mode: 0o1000`), []string{`spec.secrets[0].files[0].mode: 01000 is not valid`}},
		{"file mode negative", fileDoc(`p`, `, mode: -1`), []string{`spec.secrets[0].files[0].mode: -01 is not valid`}},
		{"file mode string", fileDoc(`p`, `, mode: rw`), []string{`spec.secrets.files.mode: wrong type: expected an integer, got string`}},
		{"file mode too big", fileDoc(`p`, `, mode: 99999999999`), []string{`spec.secrets.files.mode: wrong type: expected an integer, got number`}},
		{"two files same path", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, files: [{key: a, path: p}, {key: b, path: p}]}]`)),
			[]string{`spec.secrets[0].files[1].path: duplicate path "p" (also spec.secrets[0].files[0])`}},
		{"file is a directory of another", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, files: [{key: a, path: d}, {key: b, path: d/x}]}]`)),
			[]string{`spec.secrets[0].files[0].path: "d" is also a directory of spec.secrets[0].files[1] ("d/x")`}},
		{"file key not in keys", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, keys: [a], files: [{key: b, path: p}]}]`)),
			[]string{`spec.secrets[0].files[0].key: "b" is not in spec.secrets[0].keys: add it there or remove this file`}},
		{"file key missing", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, files: [{path: p}]}]`)),
			[]string{`spec.secrets[0].files[0].key: is required`}},
		{"bad key", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, keys: ["..k"]}]`)),
			[]string{`spec.secrets[0].keys[0]: "..k" is not a valid key`}},
		{"duplicate key", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, keys: [a, a]}]`)),
			[]string{`spec.secrets[0].keys[1]: duplicate key "a"`}},
		{"bad share", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, share: Node}]`)),
			[]string{`spec.secrets[0].share: "Node" is not valid: use Pod, ServiceAccount or Grant`}},
		{"bad effect", grantDoc("g", specOf(`effect: Permit`, `subjects: `+okSubjects, `secrets: `+okSecrets)),
			[]string{`spec.effect: "Permit" is not valid: use Allow or Deny`}},
		{"lower-case effect", grantDoc("g", specOf(`effect: deny`, `subjects: `+okSubjects, `secrets: `+okSecrets)),
			[]string{`spec.effect: "deny" is not valid`}},
		{"bad delivery", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: `+okSecrets, `delivery: [CSI, HTTP]`)),
			[]string{`spec.delivery[1]: "HTTP" is not valid: use CSI, GRPC or GRPCSealed`}},
		{"duplicate delivery", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: `+okSecrets, `delivery: [CSI, CSI]`)),
			[]string{`spec.delivery[1]: duplicate delivery "CSI"`}},
		{"both local and vault", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}, vault: {mount: secret, path: x}}}]`)),
			[]string{`spec.secrets[0].source: set exactly one of local or vault, not both`}},
		{"no source", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {}}]`)),
			[]string{`spec.secrets[0].source: set one of local or vault`}},
		{"bad local name", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {name: "../etc"}}}]`)),
			[]string{`spec.secrets[0].source.local.name: "../etc"`}},
		{"vault without mount", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {vault: {path: x}}}]`)),
			[]string{`spec.secrets[0].source.vault.mount: is required`}},
		{"vault path traversal", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {vault: {mount: secret, path: "a/../../sys"}}}]`)),
			[]string{`spec.secrets[0].source.vault.path: "a/../../sys": must not contain "." or ".." segments`}},
		{"vault kv without path", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {vault: {mount: secret}}}]`)),
			[]string{`spec.secrets[0].source.vault.path: is required for engine kv-v2`}},
		{"vault database without role", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {vault: {mount: database, engine: database}}}]`)),
			[]string{`spec.secrets[0].source.vault.role: is required for engine database`}},
		{"vault bad engine", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {vault: {mount: s, path: p, engine: kv3}}}]`)),
			[]string{`spec.secrets[0].source.vault.engine: "kv3" is not valid`}},
		{"vault namespace trailing slash", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {vault: {mount: s, path: p, namespace: "team/"}}}]`)),
			[]string{`spec.secrets[0].source.vault.namespace: "team/": must not start or end with "/"`}},
		{"vault namespace root", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {vault: {mount: s, path: p, namespace: root}}}]`)),
			[]string{`spec.secrets[0].source.vault.namespace: "root": must not contain "root"`}},
		{"vault namespace traversal", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {vault: {mount: s, path: p, namespace: "a/../b"}}}]`)),
			[]string{`spec.secrets[0].source.vault.namespace: "a/../b": must be segments of letters`}},
		{"vault version on kv-v1", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {vault: {mount: s, path: p, engine: kv-v1, version: 2}}}]`)),
			[]string{`spec.secrets[0].source.vault.version: is only used by engine kv-v2`}},
		{"wrong type", grantDoc("g", specOf(`subjects: [{namespace: [demo], serviceAccount: app}]`, `secrets: `+okSecrets)),
			[]string{`spec.subjects.namespace: wrong type: expected a string, got array`}},
		{"scalar document", "hello\n", []string{`document 1 (line 1): a document must be an AccessGrant object`}},
		{"list document", "- a\n- b\n", []string{`a document must be an AccessGrant object`}},
		{"bad yaml", "a: b: c\n", []string{`document 1 (line 1): not valid YAML`}},
		{"error in second document", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: `+okSecrets)) + "---\n# two\n" + grantDoc("h", specOf(`subjects: []`, `secrets: `+okSecrets)),
			[]string{`document 2 (line 5): spec.subjects: at least one subject is required`}},
		{"all problems at once", grantDoc("g", specOf(`effect: Maybe`, `subjects: [{}]`, `secrets: []`)),
			[]string{`spec.effect: "Maybe" is not valid`, `spec.subjects[0]: set either`, `spec.secrets: at least one secret`}},
		{"separator with content", grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: `+okSecrets)) + "--- {kind: x}\n",
			[]string{`document 2 (line 5): apiVersion: is required`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			grants, err := Parse([]byte(tt.in))
			if err == nil {
				t.Fatalf("Parse succeeded with %d grants; want error containing %q", len(grants), tt.want)
			}
			if !errors.Is(err, ErrInvalidGrant) {
				t.Errorf("error %v does not match ErrInvalidGrant", err)
			}
			if grants != nil {
				t.Errorf("grants = %v on error; want nil", grants)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n  %s\ndoes not contain\n  %s", err, w)
				}
			}
		})
	}
}

// fileDoc is a grant whose one secret has one file at path (a YAML scalar) plus extra fields.
func fileDoc(path, extra string) string {
	return grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}, files: [{key: k, path: `+path+extra+`}]}]`))
}

func TestParse_duplicateNames_isErrDuplicateGrant(t *testing.T) {
	d := grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: `+okSecrets))
	_, err := Parse([]byte(d + "---\n" + d))
	if !errors.Is(err, ErrDuplicateGrant) || !errors.Is(err, ErrInvalidGrant) {
		t.Fatalf("err = %v; want ErrDuplicateGrant and ErrInvalidGrant", err)
	}
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 1 {
		t.Fatalf("errors.As(Errors) = %v", errs)
	}
}

func TestParse_tooLarge(t *testing.T) {
	_, err := Parse(make([]byte, MaxDocumentSize+1))
	if err == nil || !strings.Contains(err.Error(), "more than the limit") {
		t.Fatalf("err = %v", err)
	}
}

func TestValidate_nilAndTypeMeta(t *testing.T) {
	if err := Validate(nil); err == nil {
		t.Error("Validate(nil) succeeded")
	}
	grants, err := Parse([]byte(grantDoc("g", specOf(`subjects: `+okSubjects, `secrets: `+okSecrets))))
	if err != nil {
		t.Fatal(err)
	}
	g := grants[0]
	g.APIVersion, g.Kind = "", "" // as an informer hands them over
	if err := Validate(&g); err != nil {
		t.Errorf("Validate without TypeMeta: %v", err)
	}
	g.Kind = "Pod"
	if err := Validate(&g); err == nil || !strings.Contains(err.Error(), `kind: must be "AccessGrant", got "Pod"`) {
		t.Errorf("Validate with wrong kind: %v", err)
	}
}
