package grant

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestParseTemplate_rejects(t *testing.T) {
	tests := []struct {
		name, src string
		line, col int
		want      string
	}{
		{"empty", "", 0, 0, "the template is empty"},
		{"too long", strings.Repeat("x", MaxTemplateLen+1), 0, 0, "at most 16384 are allowed"},
		{"unclosed action", "A=1\nB={{ .db.password\n", 2, 3, `unclosed action: close every "{{" with "}}"`},
		{"unknown function", "A={{ .db.user }}\n\nC={{ nosuch .db.password }}", 3, 6, `function "nosuch" not defined: use one of secret, quote`},
		{"printf refused", "X={{ printf \"%999999999d\" 1 }}", 1, 6, `function "printf" is not allowed`},
		{"call refused", "{{ call .f }}", 1, 4, `function "call" is not allowed`},
		{"range refused", "a\n  {{ range .db }}x{{ end }}", 2, 12, "range is not allowed"},
		{"define refused", "x\ny {{ define \"a\" }}{{ template \"a\" }}{{ end }}", 2, 3, "define is not allowed"},
		{"block refused", "{{ block \"a\" . }}x{{ end }}", 1, 1, "block is not allowed"},
		{"template refused", "{{ template \"x\" }}", 1, 13, "template is not allowed"},
		{"missing end", "{{ if .db.a }}x", 1, 1, "unexpected EOF: close every if and with with {{ end }}"},
		{"stray end", "a {{ end }}", 1, 3, "unexpected {{end}}"},
		{"dash in a field", "{{ .api-key.token }}", 1, 8, `bad character U+002D '-': secret names with '-' or '.' are reached with {{ secret "name" "key" }}`},
		{"unterminated string", "{{ secret \"db }}", 1, 1, "unterminated quoted string"},
		{"nested bad function", "{{ quote (lower (nope .x)) }}", 1, 18, `function "nope" not defined`},
		{"bad function in if", "{{ if (js .x) }}y{{ end }}", 1, 8, `function "js" is not allowed`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseTemplate(tc.src)
			var te *TemplateError
			if !errors.As(err, &te) || !errors.Is(err, ErrTemplate) {
				t.Fatalf("err = %v; want a *TemplateError", err)
			}
			if te.Line != tc.line || te.Column != tc.col || !strings.Contains(te.Detail, tc.want) {
				t.Fatalf("err = line %d col %d %q; want line %d col %d and %q", te.Line, te.Column, te.Detail, tc.line, tc.col, tc.want)
			}
		})
	}
}

func TestParseTemplate_secrets(t *testing.T) {
	tp, err := ParseTemplate(`{{ .db.username }} {{ $.api.token }} {{ secret "api-key" "k" }} {{ with .cfg }}{{ .inner }}{{ end }} {{ if .flag.on }}x{{ else }}{{ .other.y }}{{ end }}`)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tp.Secrets(), ","); got != "api,api-key,cfg,db,flag,other" {
		t.Fatalf("Secrets() = %s", got)
	}
}

func TestTemplate_Render(t *testing.T) {
	data := SecretData{
		"db":      {"username": "v-app-1", "password": `p'a"s s&=`},
		"api-key": {"token": "tok-123", "b64": "aGVsbG8="},
	}
	tests := []struct {
		name, src, want string
	}{
		{"env file", "DB_USER={{ .db.username }}\nDB_PASSWORD={{ .db.password | squote }}\n", "DB_USER=v-app-1\nDB_PASSWORD='p'\\''a\"s s&='\n"},
		{"jdbc url", "jdbc:postgresql://h:5432/db?user={{ urlquery .db.username }}&password={{ urlquery .db.password }}", "jdbc:postgresql://h:5432/db?user=v-app-1&password=p%27a%22s+s%26%3D"},
		{"yaml quote", "password: {{ .db.password | quote }}", `password: "p'a\"s s&="`},
		{"json", `{"p": {{ json .db.password }}}`, `{"p": "p'a\"s s\u0026="}`},
		{"secret function", `{{ secret "api-key" "token" }}`, "tok-123"},
		{"index", `{{ index . "api-key" "token" }}`, "tok-123"},
		{"base64", `{{ b64dec (secret "api-key" "b64") }} {{ b64enc "hi" }}`, "hello aGk="},
		{"join list", `{{ join "," (list .db.username (secret "api-key" "token")) }}`, "v-app-1,tok-123"},
		{"default trim upper lower", `{{ default "x" "" }} {{ trim "  a  " }} {{ upper "a" }} {{ lower "B" }}`, "x a A b"},
		{"if eq", `{{ if eq .db.username "v-app-1" }}yes{{ else }}no{{ end }}`, "yes"},
		{"with", `{{ with .db }}{{ .username }}{{ end }}`, "v-app-1"},
		{"print", `{{ print "a" .db.username }}`, "av-app-1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tp, err := ParseTemplate(tc.src)
			if err != nil {
				t.Fatalf("ParseTemplate: %v", err)
			}
			got, err := tp.Render(context.Background(), data)
			if err != nil || string(got) != tc.want {
				t.Fatalf("Render = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestTemplate_Render_fails(t *testing.T) {
	data := SecretData{"db": {"username": "v-app-1", "password": "hunter2-secret"}}
	tests := []struct {
		name, src, want string
	}{
		{"missing key", "A=1\nB={{ .db.nokey }}", `line 2, column 9: map has no entry for key "nokey": the volume (or grant) has no secret or key of that name`},
		{"missing secret", "{{ .other.x }}", `map has no entry for key "other"`},
		{"secret function missing key", `{{ secret "db" "nokey" }}`, `secret "db" has no key "nokey"`},
		{"secret function missing secret", `{{ secret "nope" "k" }}`, `secret "nope" is not among this file's secrets`},
		{"bad base64", `{{ b64dec .db.password }}`, "b64dec: the value is not standard base64"},
		// A value used as a secret name is not repeated in the error.
		{"value as a name", `{{ secret .db.password "k" }}`, `secret "[REDACTED]" is not among`},
		// A variable doubled again and again stops at the function budget.
		{"doubling bomb", `{{ $a := print .db.password .db.password }}` + strings.Repeat(`{{ $a = print $a $a }}`, 40), "the template produces too much output"},
		{"join bomb", `{{ $a := list .db.password .db.password }}{{ $s := join "," $a }}` + strings.Repeat(`{{ $s = join $s (list $s $s) }}`, 30), "the template produces too much output"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tp, err := ParseTemplate(tc.src)
			if err != nil {
				t.Fatalf("ParseTemplate: %v", err)
			}
			_, err = tp.Render(context.Background(), data)
			if !errors.Is(err, ErrRender) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2-secret") {
				t.Fatalf("the error repeats a secret value: %v", err)
			}
		})
	}
}

func TestTemplate_Render_outputCap(t *testing.T) {
	big := strings.Repeat("x", MaxRenderedLen/4+1)
	tp, err := ParseTemplate(`{{ .s.v }}{{ .s.v }}{{ .s.v }}{{ .s.v }}`)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tp.Render(context.Background(), SecretData{"s": {"v": big}})
	if !errors.Is(err, ErrRender) || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("err = %v; want the output cap", err)
	}
}

func TestTemplate_Render_canceled(t *testing.T) {
	tp, err := ParseTemplate(`{{ quote .s.v }}`)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := tp.Render(ctx, SecretData{"s": {"v": "x"}}); !errors.Is(err, ErrRender) || !strings.Contains(err.Error(), "canceled") {
		t.Fatalf("err = %v; want canceled", err)
	}
}

func TestValidate_templates(t *testing.T) {
	tmplDoc := func(effect, templates string) string {
		return grantDoc("g", specOf(effect, `subjects: `+okSubjects, `secrets: [{name: db, source: {local: {}}}, {name: api-key, source: {local: {}}}]`, `templates: `+templates))
	}
	grants, err := Parse([]byte(tmplDoc("", `[{path: app.env, template: "U={{ .db.u }} T={{ secret \"api-key\" \"t\" }}", mode: 0440}]`)))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got := mustSet(t, tmplDoc("", `[{path: app.env, template: "x"}]`)).Grants()[0].Spec.Templates; len(got) != 1 || got[0].Path != "app.env" {
		t.Fatalf("templates after NewSet = %+v", got)
	}
	if tf := grants[0].Spec.Templates; len(tf) != 1 || tf[0].Mode == nil || *tf[0].Mode != 0o440 {
		t.Fatalf("templates = %+v", tf)
	}
	tests := []struct {
		name, doc, want string
	}{
		{"bad template", tmplDoc("", `[{path: app.env, template: "A=1\nB={{ .db.u "}]`), `spec.templates[0].template: line 2, column 3: unclosed action`},
		{"unknown secret", tmplDoc("", `[{path: app.env, template: "{{ .nope.x }}"}]`), `spec.templates[0].template: names secret "nope", which this grant does not list in spec.secrets`},
		{"path escapes", tmplDoc("", `[{path: ../x, template: "x"}]`), `spec.templates[0].path: "../x": must not contain ".." components`},
		{"absolute path", tmplDoc("", `[{path: /etc/x, template: "x"}]`), `spec.templates[0].path: "/etc/x": must be relative`},
		{"writer name", tmplDoc("", `[{path: ..data, template: "x"}]`), `components must not start with ".."`},
		{"duplicate path", tmplDoc("", `[{path: a, template: "x"}, {path: a, template: "y"}]`), `spec.templates[1].path: duplicate path "a"`},
		{"missing path", tmplDoc("", `[{template: "x"}]`), `spec.templates[0].path: is required`},
		{"empty template", tmplDoc("", `[{path: a, template: ""}]`), `spec.templates[0].template: the template is empty`},
		{"bad mode", tmplDoc("", `[{path: a, template: "x", mode: 01777}]`), `spec.templates[0].mode: 01777 is not valid`},
		{"deny with templates", tmplDoc("effect: Deny", `[{path: a, template: "x"}]`), `spec.templates: a Deny grant delivers nothing: remove templates`},
		{"unknown field", tmplDoc("", `[{path: a, template: "x", file: y}]`), `spec.templates[0].file: unknown field`},
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

// FuzzTemplate parses any input and renders what parses with the fixed function set: no
// panic, errors of the documented kinds, bounded output, and no secret value in an error.
func FuzzTemplate(f *testing.F) {
	for _, s := range []string{
		"DB_USER={{ .db.username }}\nDB_PASSWORD={{ .db.password | squote }}\n",
		"jdbc:postgresql://h/db?user={{ urlquery .db.username }}&password={{ urlquery .db.password }}",
		`{{ secret "api-key" "token" | quote }}`, `{{ join "," (list .db.username .db.password) }}`,
		`{{ if eq .db.username "x" }}a{{ else }}b{{ end }}`, `{{ with .db }}{{ .password | b64enc | b64dec }}{{ end }}`,
		`{{ $a := print .db.password .db.password }}{{ $a = print $a $a }}{{ $a }}`, `{{ range .db }}{{ end }}`,
		`{{ define "a" }}{{ template "a" }}{{ end }}{{ template "a" }}`, `{{ index . "api-key" "token" | len }}`,
		`{{ slice .db.password 1 3 }}`, `{{ .db.nokey }}`, "{{", "{{ /* c */ }}", `{{ default "d" (trim (upper .db.username)) }}`,
	} {
		f.Add(s)
	}
	data := SecretData{"db": {"username": "v-user", "password": "fuzz-secret-value"}, "api-key": {"token": "tok-fuzz-value"}}
	f.Fuzz(func(t *testing.T, src string) {
		tp, err := ParseTemplate(src)
		if err != nil {
			var te *TemplateError
			if !errors.As(err, &te) || !errors.Is(err, ErrTemplate) {
				t.Fatalf("parse error %v is not a TemplateError", err)
			}
			if te.Line < 0 || te.Column < 0 || (te.Line > 0 && te.Line > strings.Count(src, "\n")+1) {
				t.Fatalf("position %d:%d outside the input", te.Line, te.Column)
			}
			return
		}
		out, err := tp.Render(context.Background(), data)
		if err != nil {
			if !errors.Is(err, ErrRender) {
				t.Fatalf("render error %v does not match ErrRender", err)
			}
			for _, v := range []string{"fuzz-secret-value", "tok-fuzz-value"} {
				if strings.Contains(err.Error(), v) {
					t.Fatalf("render error repeats a secret value: %v", err)
				}
			}
			return
		}
		if len(out) > MaxRenderedLen {
			t.Fatalf("output of %d bytes passed the cap", len(out))
		}
	})
}
