package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/testlog"
)

// cli runs one keywarden command in-process.
func cli(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return out.String(), errb.String(), code
}

// startDev runs `keywarden dev` in-process until the test ends and returns its log sink.
func startDev(t *testing.T, dir string) *testlog.Buffer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := &testlog.Buffer{}
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"dev", "--data-dir", dir}, strings.NewReader(""), io.Discard, logs) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, _, code := cli(t, "", "status", "--data-dir", dir); code == 0 {
			break
		}
		select {
		case c := <-done:
			t.Fatalf("dev exited with %d:\n%s", c, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("dev did not become ready:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cancel()
			<-done
		}
	})
	return logs
}

func TestDev_endToEnd(t *testing.T) {
	dir := t.TempDir()
	logs := startDev(t, dir)
	tokFile := filepath.Join(dir, "app.token")
	out, errOut, code := cli(t, "", "token", "--data-dir", dir, "--namespace", "demo", "--service-account", "app")
	if code != 0 {
		t.Fatalf("token: %s", errOut)
	}
	appToken := strings.TrimSpace(out)
	if strings.Count(appToken, ".") != 2 {
		t.Fatalf("token is not a JWS: %q", out)
	}
	if err := os.WriteFile(tokFile, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}

	out, errOut, code = cli(t, "", "get", "demo-db", "--data-dir", dir, "--token-file", tokFile, "-o", "json")
	if code != 0 || !strings.Contains(out, `"name":"demo-db"`) || !strings.Contains(out, `"version":"1"`) || !strings.Contains(out, `"username":"demo"`) {
		t.Fatalf("get: code %d\n%s\n%s", code, out, errOut)
	}
	seeded := between(out, `"password":"`, `"`)

	// Another service account: PermissionDenied naming no internals, suggesting explain.
	other, _, _ := cli(t, "", "token", "--data-dir", dir, "--namespace", "demo", "--service-account", "other")
	_, errOut, code = cli(t, other, "get", "demo-db", "--data-dir", dir, "--token", "-")
	if code != 1 || !strings.Contains(errOut, "PermissionDenied") || !strings.Contains(errOut, "keywarden grant explain") {
		t.Fatalf("other SA: code %d: %s", code, errOut)
	}
	out, _, code = cli(t, "", "grant", "explain", "--data-dir", dir, "--namespace", "demo", "--service-account", "other", "--secret", "demo-db")
	if code != 0 || !strings.Contains(out, "DENIED") || !strings.Contains(out, "demo-app") || !strings.Contains(out, "hint:") {
		t.Fatalf("explain: %s", out)
	}
	t.Logf("grant explain output:\n%s", out)

	// Bad tokens: Unauthenticated with the reason.
	for _, tc := range []struct {
		args   []string
		reason string
	}{
		{[]string{"--audience", "other"}, "wrong audience"},
		{[]string{"--issued-at", time.Now().Add(-2 * time.Hour).Format(time.RFC3339)}, "expired"},
		{[]string{"--issued-at", time.Now().Add(time.Hour).Format(time.RFC3339)}, "issued in the future"},
	} {
		bad, e, c := cli(t, "", append([]string{"token", "--data-dir", dir, "--namespace", "demo", "--service-account", "app"}, tc.args...)...)
		if c != 0 {
			t.Fatalf("token %v: %s", tc.args, e)
		}
		_, errOut, code = cli(t, bad, "get", "demo-db", "--data-dir", dir, "--token", "-")
		if code != 1 || !strings.Contains(errOut, "Unauthenticated: invalid token: "+tc.reason) {
			t.Fatalf("token %v: %s", tc.args, errOut)
		}
	}
	_, errOut, _ = cli(t, "garbage", "get", "demo-db", "--data-dir", dir, "--token", "-")
	if !strings.Contains(errOut, "Unauthenticated: invalid token: malformed") {
		t.Fatalf("garbled: %s", errOut)
	}

	// Watch sees a put.
	wctx, wcancel := context.WithCancel(context.Background())
	wout := &testlog.Buffer{}
	wdone := make(chan int, 1)
	go func() {
		wdone <- run(wctx, []string{"watch", "demo-db", "--data-dir", dir, "--token-file", tokFile}, strings.NewReader(""), wout, io.Discard)
	}()
	waitUntil(t, func() bool { return strings.Contains(wout.String(), "version 1") })
	const rotated = "rotated-pw-5e8a1f"
	if out, errOut, code := cli(t, "", "secret", "put", "demo-db", "--data-dir", dir, "username=demo", "password="+rotated); code != 0 || !strings.Contains(out, "version 2") {
		t.Fatalf("put: %s %s", out, errOut)
	}
	waitUntil(t, func() bool { return strings.Contains(wout.String(), "password: "+rotated) })
	wcancel()
	if c := <-wdone; c != 0 {
		t.Fatalf("watch exit %d", c)
	}

	// Secrets and tokens never reach the logs or the bbolt files.
	for _, needle := range []string{appToken, strings.TrimSpace(other), seeded, rotated} {
		if needle == "" {
			t.Fatal("empty needle")
		}
		if strings.Contains(logs.String(), needle) {
			t.Fatalf("daemon logs contain a token or secret (%d bytes)", len(needle))
		}
		for _, f := range []string{stateFile, nodeFile} {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(b, []byte(needle)) {
				t.Fatalf("%s contains plaintext", f)
			}
		}
	}
	// Audit records go to the hash-chained log: it verifies, and holds no token or secret.
	exported, errOut, code := cli(t, "", "audit", "export", "--data-dir", dir)
	if code != 0 || !strings.Contains(exported, `"kind":"delivery"`) {
		t.Fatalf("audit export: %d %s", code, errOut)
	}
	for _, needle := range []string{appToken, strings.TrimSpace(other), seeded, rotated} {
		if strings.Contains(exported, needle) {
			t.Fatalf("the audit log contains a token or secret (%d bytes)", len(needle))
		}
	}
	if out, errOut, code := cli(t, "", "audit", "verify", "--data-dir", dir); code != 0 || !strings.Contains(out, "audit log: OK") {
		t.Fatalf("audit verify: %d %s %s", code, out, errOut)
	}
	if out, errOut, code := cli(t, exported, "audit", "verify", "--file", "-"); code != 0 || !strings.Contains(out, "audit log: OK") {
		t.Fatalf("audit verify --file: %d %s %s", code, out, errOut)
	}
	if out, _, code := cli(t, "", "audit", "tail", "--last", "5", "--data-dir", dir); code != 0 || !strings.Contains(out, "SEQ") {
		t.Fatalf("audit tail: %d %s", code, out)
	}
	tampered := strings.Replace(exported, `"outcome":"deny"`, `"outcome":"allow"`, 1)
	if out, _, code := cli(t, tampered, "audit", "verify", "--file", "-"); code != 1 || !strings.Contains(out, "TAMPERED") || !strings.Contains(out, "modified") {
		t.Fatalf("tampered export verified: %d %s", code, out)
	}
	if out, _, code := cli(t, "", "status", "--data-dir", dir); code != 0 || !strings.Contains(out, "audit log: entries") {
		t.Fatalf("status: %s", out)
	}
}

func TestDev_restartKeepsSecretsAndGrants(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	logs := &testlog.Buffer{}
	go func() { done <- run(ctx, []string{"dev", "--data-dir", dir}, nil, io.Discard, logs) }()
	waitUntil(t, func() bool { _, _, c := cli(t, "", "status", "--data-dir", dir); return c == 0 })
	if _, e, c := cli(t, "", "secret", "put", "demo-db", "--data-dir", dir, "password=kept"); c != 0 {
		t.Fatal(e)
	}
	grantDoc := "apiVersion: keywarden.io/v1alpha1\nkind: AccessGrant\nmetadata: {name: extra}\nspec:\n  subjects: [{namespace: demo, serviceAccount: other}]\n  secrets: [{name: demo-db, source: {local: {}}}]\n"
	if o, e, c := cli(t, grantDoc, "grant", "apply", "-f", "-", "--data-dir", dir); c != 0 || !strings.Contains(o, "accessgrant/extra applied") {
		t.Fatal(o, e)
	}
	cancel()
	if c := <-done; c != 0 {
		t.Fatalf("dev exit %d: %s", c, logs.String())
	}

	startDev(t, dir)
	tok, _, _ := cli(t, "", "token", "--data-dir", dir, "--namespace", "demo", "--service-account", "other")
	out, errOut, code := cli(t, tok, "get", "demo-db", "--data-dir", dir, "--token", "-")
	if code != 0 || !strings.Contains(out, "password: kept") || !strings.Contains(out, "version 2") {
		t.Fatalf("after restart: %s %s", out, errOut)
	}
	out, _, _ = cli(t, "", "grant", "list", "--data-dir", dir)
	if !strings.Contains(out, "extra") || !strings.Contains(out, "store") || !strings.Contains(out, "demo-app") {
		t.Fatalf("grant list after restart: %s", out)
	}
	if _, e, c := cli(t, "", "grant", "delete", "extra", "--data-dir", dir); c != 0 {
		t.Fatal(e)
	}
	if _, e, c := cli(t, "", "grant", "delete", "extra", "--data-dir", dir); c != 1 || !strings.Contains(e, "NotFound") {
		t.Fatalf("second delete: %d %s", c, e)
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestDaemon_secondInstanceFailsFast(t *testing.T) {
	cfg, err := devConfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store.LockTimeout = 200 * time.Millisecond
	d1, err := newDaemon(cfg, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer d1.close()
	_, err = newDaemon(cfg, quietLogger())
	if err == nil || !strings.Contains(err.Error(), "another") {
		t.Fatalf("second daemon: %v", err)
	}
}

func TestDaemon_unreadableStateRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	cfg, err := devConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	garbage := bytes.Repeat([]byte("not a bbolt file "), 512)
	if err := os.WriteFile(filepath.Join(dir, stateFile), garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = newDaemon(cfg, quietLogger())
	if err == nil || !strings.Contains(err.Error(), "restore it from a backup") || !strings.Contains(err.Error(), "mv ") {
		t.Fatalf("got %v", err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, stateFile))
	if !bytes.Equal(b, garbage) {
		t.Fatal("the state file was modified")
	}
}

func TestDaemon_unreadableNodeStoreIsQuarantinedAndTheLossIsSaid(t *testing.T) {
	dir := t.TempDir()
	cfg, err := devConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	garbage := bytes.Repeat([]byte("junk "), 2048)
	if err := os.WriteFile(filepath.Join(dir, nodeFile), garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testlog.Buffer{}
	d, err := newDaemon(cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	d.close()
	matches, _ := filepath.Glob(filepath.Join(dir, nodeFile+".corrupt-*"))
	if len(matches) != 1 {
		t.Fatalf("quarantined files: %v", matches)
	}
	if b, _ := os.ReadFile(matches[0]); !bytes.Equal(b, garbage) {
		t.Fatal("quarantined file was not kept as it was")
	}
	for _, want := range []string{"quarantin", "no longer refreshed", "no longer renewed or revoked"} {
		if !strings.Contains(logs.String(), want) {
			t.Fatalf("log does not say %q: %s", want, logs.String())
		}
	}
}

func TestCLI_usageErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"get", "x", "--data-dir", dir}, 2, "a token is required"},
		{[]string{"get", "x", "--data-dir", dir, "--token", "eyJliteral"}, 2, "--token takes only"},
		{[]string{"token", "--data-dir", dir}, 2, "--namespace and --service-account are required"},
		{[]string{"token", "--data-dir", dir, "--namespace", "a", "--service-account", "b"}, 1, "start `keywarden dev` first"},
		{[]string{"serve"}, 2, "--config is required"},
		{[]string{"nope"}, 2, "unknown command"},
		{[]string{"grant", "explain", "--data-dir", dir}, 2, "--secret and either"},
	}
	for _, tc := range tests {
		_, errOut, code := cli(t, "", tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: code %d, stderr %q; want %d containing %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
}

func between(s, start, end string) string {
	i := strings.Index(s, start)
	if i < 0 {
		return ""
	}
	s = s[i+len(start):]
	j := strings.Index(s, end)
	if j < 0 {
		return ""
	}
	return s[:j]
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
