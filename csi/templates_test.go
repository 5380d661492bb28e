package csi

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/broker/grant"
)

func TestParseVolumeContext_templates(t *testing.T) {
	base := func(attrs map[string]string) map[string]string {
		return volumeContext("p", "uid-1", "tok-sekrit", attrs)
	}
	vc, err := ParseVolumeContext(base(map[string]string{AttrSecrets: "db,api", "template/app.env": "U={{ .db.u }}\nT={{ secret \"api\" \"t\" }}", "template/conf/c.yaml": "x"}), "keywarden")
	if err != nil {
		t.Fatal(err)
	}
	if len(vc.Request.Templates) != 2 || vc.Request.Templates["conf/c.yaml"] != "x" {
		t.Fatalf("templates = %v", vc.Request.Templates)
	}
	other := vc.Request
	other.Templates = map[string]string{"app.env": "y", "conf/c.yaml": "x"}
	if vc.Request.Equal(other) {
		t.Fatal("requests with different templates are equal")
	}
	cases := []struct {
		name  string
		attrs map[string]string
		want  string
	}{
		{"bad template", map[string]string{AttrSecrets: "db", "template/app.env": "A=1\nB={{ .db.u | nope }}"}, `attribute "template/app.env": line 2, column 14: function "nope" not defined`},
		{"unclosed", map[string]string{AttrSecrets: "db", "template/app.env": "{{ .db.u"}, `attribute "template/app.env": line 1, column 1: unclosed action`},
		{"range", map[string]string{AttrSecrets: "db", "template/a": "{{ range .db }}{{ end }}"}, "range is not allowed"},
		{"unlisted secret", map[string]string{AttrSecrets: "db", "template/a": "{{ .api.t }}"}, `names secret "api", which attribute "secrets" does not list`},
		{"escaping path", map[string]string{AttrSecrets: "db", "template/../x": "a"}, `must not contain ".." components`},
		{"absolute path", map[string]string{AttrSecrets: "db", "template//etc/x": "a"}, `must be relative`},
		{"writer name", map[string]string{AttrSecrets: "db", "template/..data/x": "a"}, `components must not start with ".."`},
		{"empty path", map[string]string{AttrSecrets: "db", "template/": "a"}, `must not be empty`},
		{"socket name", map[string]string{AttrSecrets: "db", "template/keywarden.sock": "a"}, `reserved for the workload API socket`},
		{"empty template", map[string]string{AttrSecrets: "db", "template/a": ""}, `the template is empty`},
		{"long key", map[string]string{AttrSecrets: "db", "template/" + strings.Repeat("a", 300): "x"}, `(309 bytes)`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseVolumeContext(base(tc.attrs), "keywarden")
			if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "tok-sekrit") {
				t.Fatal("the error repeats the token")
			}
		})
	}
}

func TestDriver_Publish_rendersTemplatesInTheSameSwap(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"username": "app", "password": "pw-sekrit-1"})
	e.b.set("api", "v1", map[string]string{"token": "api-sekrit-1"})
	mode := int32(0o440)
	e.b.mu.Lock()
	e.b.grants["demo"] = []string{"db", "api"}
	e.b.templates = map[string][]grant.TemplateFile{"demo": {
		{Path: "app.env", Template: "DB_USER={{ .db.username }}\nDB_PASSWORD={{ .db.password | squote }}\n"},
		{Path: "conf/jdbc.url", Template: "jdbc:postgresql://db/app?user={{ urlquery .db.username }}&password={{ urlquery .db.password }}", Mode: &mode},
	}}
	e.b.mu.Unlock()
	r, err := e.publish("p1", "secrets", map[string]string{AttrGrant: "demo", "template/api.env": `TOKEN={{ secret "api" "token" }}`})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"app.env":       "DB_USER=app\nDB_PASSWORD='pw-sekrit-1'\n",
		"conf/jdbc.url": "jdbc:postgresql://db/app?user=app&password=pw-sekrit-1",
		"api.env":       "TOKEN=api-sekrit-1",
		"db/password":   "pw-sekrit-1",
	}
	for p, w := range want {
		if got := readFile(t, filepath.Join(r.TargetPath, p)); got != w {
			t.Errorf("%s = %q, want %q", p, got, w)
		}
	}
	if fi, _ := os.Stat(filepath.Join(r.TargetPath, "conf/jdbc.url")); fi.Mode().Perm() != 0o440 {
		t.Errorf("template mode = %v; want the template's 0440", fi.Mode().Perm())
	}
	// A change of a referenced secret re-renders, in the swap that changes db/password.
	e.b.set("db", "v2", map[string]string{"username": "app2", "password": "pw-sekrit-2"})
	eventually(t, "the re-rendered template", func() bool {
		root, err := os.OpenRoot(filepath.Join(r.TargetPath, "..data"))
		if err != nil {
			return false
		}
		defer root.Close()
		env, _ := root.ReadFile("app.env")
		pw, _ := root.ReadFile("db/password")
		if string(pw) == "pw-sekrit-2" && string(env) != "DB_USER=app2\nDB_PASSWORD='pw-sekrit-2'\n" {
			t.Fatalf("db/password and app.env of different versions in one data directory: %q", env)
		}
		return string(env) == "DB_USER=app2\nDB_PASSWORD='pw-sekrit-2'\n"
	})
}

func TestDriver_rotation_renderFailureKeepsOldFiles(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"username": "app", "password": "pw-sekrit-1"})
	r, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db", "template/app.env": "U={{ .db.username }}"})
	if err != nil {
		t.Fatal(err)
	}
	// The new version lacks the key the template needs: nothing is written, the old files stay.
	e.b.set("db", "v2", map[string]string{"password": "pw-sekrit-2"})
	eventually(t, "the render failure to be logged", func() bool {
		return strings.Contains(e.logs.String(), "old files kept") && strings.Contains(e.logs.String(), `map has no entry for key \"username\"`)
	})
	if got := readFile(t, filepath.Join(r.TargetPath, "app.env")); got != "U=app" {
		t.Fatalf("app.env = %q; want the old file", got)
	}
	if got := readFile(t, filepath.Join(r.TargetPath, "db/password")); got != "pw-sekrit-1" {
		t.Fatalf("db/password = %q; want the old file (one swap for all files)", got)
	}
	// The next good version is written.
	e.b.set("db", "v3", map[string]string{"username": "app3", "password": "pw-sekrit-3"})
	eventually(t, "the next good version", func() bool { return readFile(t, filepath.Join(r.TargetPath, "app.env")) == "U=app3" })
}

func TestDriver_Publish_templateFailuresWriteNothing(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"username": "app", "password": "pw-sekrit-1"})
	e.b.mu.Lock()
	e.b.grants["demo"] = []string{"db"}
	e.b.templates = map[string][]grant.TemplateFile{"demo": {{Path: "app.env", Template: "x"}}}
	e.b.mu.Unlock()
	for _, tc := range []struct {
		name  string
		attrs map[string]string
		want  string
	}{
		{"missing key", map[string]string{AttrSecrets: "db", "template/a.env": "{{ .db.nokey }}"}, `attribute "template/a.env": the template cannot be rendered: line 1, column 7: map has no entry for key "nokey"`},
		{"collides with a key file", map[string]string{AttrSecrets: "db", "template/db/password": "x"}, `the file "db/password" is also a secret's file`},
		{"collides with the grant", map[string]string{AttrGrant: "demo", "template/app.env": "y"}, `the grant "demo" already renders this file`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := e.publish("p-"+strings.ReplaceAll(tc.name, " ", "-"), "secrets", tc.attrs) // pod names: letters, digits, -
			if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "pw-sekrit") {
				t.Fatal("the error repeats a secret value")
			}
			if _, err := os.Lstat(filepath.Join(r.TargetPath, "..data")); err == nil {
				t.Fatal("a refused publish wrote files")
			}
		})
	}
}

func FuzzParseVolumeContext_templates(f *testing.F) {
	f.Add("app.env", "U={{ .db.username }}\n")
	f.Add("../x", "{{ .db.u")
	f.Add("a/b", `{{ secret "db" "k" | quote }}`)
	f.Add("..data", "{{ range . }}{{ end }}")
	f.Fuzz(func(t *testing.T, path, tmpl string) {
		vc := volumeContext("p", "uid-1", "tok", map[string]string{AttrSecrets: "db", AttrTemplatePrefix + path: tmpl})
		got, err := ParseVolumeContext(vc, "keywarden")
		if err != nil {
			if !errors.Is(err, ErrInvalidRequest) {
				t.Fatalf("error without ErrInvalidRequest: %v", err)
			}
			return
		}
		for p, src := range got.Request.Templates {
			if validateVolumePath(p) != nil {
				t.Fatalf("accepted unsafe template path %q", p)
			}
			if _, err := grant.ParseTemplate(src); err != nil {
				t.Fatalf("accepted a template that does not parse: %v", err)
			}
		}
	})
}
