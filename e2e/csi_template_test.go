//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// templateGrant renders a .env file and a JDBC URL from a database lease of the grant's
// secret "pg" into every volume that names the grant.
func templateGrant(pgAddr string) func(ns string) string {
	return func(ns string) string {
		return fmt.Sprintf(`---
apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: app-tmpl}
spec:
  subjects: [{namespace: %s, serviceAccount: app}]
  secrets:
    - name: pg
      source: {vault: {mount: database, engine: database, role: app}}
  templates:
    - path: app.env
      template: |
        DB_USER={{ .pg.username }}
        DB_PASSWORD={{ .pg.password | squote }}
    - path: jdbc.url
      template: "jdbc:postgresql://%s/postgres?user={{ urlquery .pg.username }}&password={{ urlquery .pg.password }}&sslmode=disable"
`, ns, pgAddr)
	}
}

// tmplSnapshot reads files of one volume through one resolution of "..data".
func tmplSnapshot(t *testing.T, target string, names ...string) map[string]string {
	t.Helper()
	for attempt := 0; ; attempt++ {
		root, err := os.OpenRoot(filepath.Join(target, "..data"))
		if err == nil {
			out := map[string]string{}
			for _, n := range names {
				b, rerr := root.ReadFile(n)
				if rerr != nil {
					err = rerr
					break
				}
				out[n] = string(b)
			}
			root.Close()
			if err == nil {
				return out
			}
		}
		if attempt > 100 {
			t.Fatalf("read %v from %s: %v", names, target, err)
		}
		time.Sleep(10 * time.Millisecond) // swapped mid-read: read again
	}
}

// jdbcLogin parses the JDBC URL the template rendered and logs in to PostgreSQL with it.
func (e *csiVaultEnv) jdbcLogin(t *testing.T, jdbc string) (user, pass string) {
	t.Helper()
	u, err := url.Parse(strings.TrimPrefix(jdbc, "jdbc:"))
	if err != nil || !strings.HasPrefix(jdbc, "jdbc:postgresql://") || u.Host != e.pg.Addr() {
		t.Fatalf("jdbc.url is not a PostgreSQL JDBC URL for %s (%v)", e.pg.Addr(), err)
	}
	user, pass = u.Query().Get("user"), u.Query().Get("password")
	remember(pass)
	if err := e.pg.CanLogin(ctx(t), user, pass); err != nil {
		t.Fatalf("the JDBC URL's credentials do not log in: %v", err)
	}
	return user, pass
}

// TestCSI_vaultTemplates: a grant's templates render a .env file and a JDBC URL from a real
// database lease, and the JDBC credentials log in to PostgreSQL; a volume's own template
// attribute renders a config.yaml from two secrets. When the lease is re-issued and when the
// KV secret changes, the rendered files follow in the same swap as the secrets' files. A bad
// template is refused with its line and column: in a volume attribute (the publish fails and
// writes nothing) and in the grants file (rejected, the last good grants stay in force).
func TestCSI_vaultTemplates(t *testing.T) {
	const ttl, maxTTL = 6 * time.Second, 15 * time.Second
	e := startCSIVault(t, csiVaultOptions{withPostgres: true, dbTTL: ttl, dbMaxTTL: maxTTL})
	// The grant needs PostgreSQL's address: written once the environment is up.
	good := csiVaultGrant(e.ns) + templateGrant(e.pg.Addr())(e.ns)
	writeFile(t, e.grants, good)
	e.putKV(t, "app/api", map[string]any{"token": "tmpl-kv-value-1"})

	var grantTarget string
	pod := e.kl.CreatePod(t, e.ns, "app")
	t.Cleanup(func() { _ = e.kl.Unpublish(context.Background(), pod, "secrets") })
	waitFor(t, 20*time.Second, "the template grant to be in force", func() bool {
		_, target, err := e.kl.Publish(ctx(t), pod, "secrets", map[string]string{"grant": "app-tmpl"})
		grantTarget = target
		return err == nil
	})
	files := []string{"app.env", "jdbc.url", "pg/username", "pg/password"}
	snap := tmplSnapshot(t, grantTarget, files...)
	remember(snap["pg/password"])
	wantEnv := fmt.Sprintf("DB_USER=%s\nDB_PASSWORD='%s'\n", snap["pg/username"], snap["pg/password"])
	if snap["app.env"] != wantEnv {
		t.Fatalf("app.env does not hold the volume's credential (%d bytes, want %d)", len(snap["app.env"]), len(wantEnv))
	}
	user, pass := e.jdbcLogin(t, snap["jdbc.url"])
	if user != snap["pg/username"] || pass != snap["pg/password"] {
		t.Fatal("jdbc.url and pg/* hold different credentials")
	}
	if fi, err := os.Stat(filepath.Join(grantTarget, "app.env")); err != nil || fi.Mode().Perm() != 0o400 {
		t.Fatalf("app.env mode %v (%v); want the volume's 0400", fi, err)
	}

	// A volume's own template over two secrets.
	const cfgTmpl = "database:\n  user: {{ .pg.username | quote }}\n  password: {{ .pg.password | quote }}\napi:\n  token: {{ secret \"api\" \"token\" | quote }}\n"
	_, attrTargets := e.publishPods(t, 1, map[string]string{"secrets": "api,pg", "template/conf/config.yaml": cfgTmpl})
	cfg := tmplSnapshot(t, attrTargets[0], "conf/config.yaml", "pg/username", "pg/password")
	wantCfg := func(token string) string {
		return fmt.Sprintf("database:\n  user: %q\n  password: %q\napi:\n  token: %q\n", cfg["pg/username"], cfg["pg/password"], token)
	}
	if cfg["conf/config.yaml"] != wantCfg("tmpl-kv-value-1") {
		t.Fatal("config.yaml does not hold the volume's secrets")
	}
	// A KV change re-renders the template that references it.
	e.putKV(t, "app/api", map[string]any{"token": "tmpl-kv-value-2"})
	waitFor(t, 20*time.Second, "config.yaml to follow the KV change", func() bool {
		cfg = tmplSnapshot(t, attrTargets[0], "conf/config.yaml", "pg/username", "pg/password")
		return cfg["conf/config.yaml"] == wantCfg("tmpl-kv-value-2")
	})

	// The lease is re-issued before max_ttl: the rendered files follow, in the same swap.
	waitFor(t, maxTTL+30*time.Second, "the re-issued credential in jdbc.url", func() bool {
		snap = tmplSnapshot(t, grantTarget, files...)
		return !strings.Contains(snap["jdbc.url"], "user="+url.QueryEscape(user)+"&")
	})
	remember(snap["pg/password"])
	if snap["app.env"] != fmt.Sprintf("DB_USER=%s\nDB_PASSWORD='%s'\n", snap["pg/username"], snap["pg/password"]) {
		t.Fatal("after the re-issue app.env and pg/* are of different credentials in one data directory")
	}
	if u2, p2 := e.jdbcLogin(t, snap["jdbc.url"]); u2 != snap["pg/username"] || p2 != snap["pg/password"] {
		t.Fatal("after the re-issue jdbc.url and pg/* hold different credentials")
	}

	// A bad template in a volume attribute: refused with line and column, nothing written.
	bad := e.kl.CreatePod(t, e.ns, "app")
	_, _, err := e.kl.Publish(ctx(t), bad, "secrets", map[string]string{"secrets": "pg", "template/bad.env": "A=1\nB={{ .pg.username | nosuch }}\n"})
	if err == nil || !strings.Contains(err.Error(), "InvalidArgument") || !strings.Contains(err.Error(), "line 2, column 21") || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Fatalf("publish with a bad template: %v; want InvalidArgument at line 2, column 21", err)
	}
	if _, err := os.Lstat(filepath.Join(e.kl.TargetPath(bad, "secrets"), "..data")); err == nil {
		t.Fatal("a refused publish wrote files")
	}
	// A template that names a key the secret lacks fails at render: refused, nothing written.
	_, _, err = e.kl.Publish(ctx(t), bad, "secrets", map[string]string{"secrets": "pg", "template/x.env": "X={{ .pg.nokey }}"})
	if err == nil || !strings.Contains(err.Error(), `map has no entry for key "nokey"`) || !strings.Contains(err.Error(), "line 1, column") {
		t.Fatalf("publish with a template naming a missing key: %v", err)
	}

	// A bad template in the grants file: rejected with line and column; the grants in force
	// stay (a new volume naming the grant still gets its rendered files).
	broken := strings.Replace(good, "DB_PASSWORD={{ .pg.password | squote }}", "DB_PASSWORD={{ .pg.password | squote }", 1)
	if broken == good {
		t.Fatal("test bug: the template to break is not in the grants file")
	}
	writeFile(t, e.grants, broken)
	waitFor(t, 20*time.Second, "the grants file with a bad template to be rejected", func() bool {
		return strings.Contains(e.d.Logs(), "grants file rejected")
	})
	logs := e.d.Logs()
	k := strings.LastIndex(logs, "grants file rejected")
	line := logs[k:]
	if n := strings.IndexByte(line, '\n'); n > 0 {
		line = line[:n]
	}
	if !strings.Contains(line, "spec.templates[0].template: line 2, column") {
		t.Fatalf("the rejection does not give the template's line and column: %s", line)
	}
	t.Logf("grants file rejection: %s", line)
	_, again := e.publishPods(t, 1, map[string]string{"grant": "app-tmpl"})
	if s := tmplSnapshot(t, again[0], "app.env"); !strings.HasPrefix(s["app.env"], "DB_USER=") {
		t.Fatal("the last good grant with its templates is no longer in force")
	}
}
