package main

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/testlog"
)

// TestDev_keysRotate rotates both keys of a running dev daemon, reads a secret back, and reads
// it again after a restart with the rotated KEK file.
func TestDev_keysRotate(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	logs := &testlog.Buffer{}
	go func() { done <- run(ctx, []string{"dev", "--data-dir", dir}, nil, io.Discard, logs) }()
	waitUntil(t, func() bool { _, _, c := cli(t, "", "status", "--data-dir", dir); return c == 0 })
	if _, e, c := cli(t, "", "secret", "put", "demo-db", "--data-dir", dir, "password=rotated-away"); c != 0 {
		t.Fatal(e)
	}
	out, errOut, code := cli(t, "", "keys", "status", "--data-dir", dir)
	if code != 0 || !strings.Contains(out, "key rotation: idle") || !strings.Contains(out, "kek: local (1 key(s) in the keyset file)") {
		t.Fatalf("keys status before: %d %s %s", code, out, errOut)
	}
	before := out
	out, errOut, code = cli(t, "", "keys", "rotate", "--wait", "--data-dir", dir)
	if code != 0 || !strings.Contains(out, "key rotation: done (dek+kek)") || !strings.Contains(out, "state") || !strings.Contains(out, "node") {
		t.Fatalf("keys rotate --wait: %d %s %s", code, out, errOut)
	}
	if out == before {
		t.Fatal("keys rotate changed nothing")
	}
	t.Logf("keys rotate --wait:\n%s", out)
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 6 && (f[0] == "state" || f[0] == "node") {
			if strings.Contains(f[2], ",") || f[5] != "0" {
				t.Fatalf("store left with old keys or records: %q", l)
			}
		}
	}
	out, _, code = cli(t, "", "keys", "rotate", "--dek", "--wait", "-o", "json", "--data-dir", dir)
	if code != 0 || !strings.Contains(out, `"state":"done"`) || !strings.Contains(out, `"what":"dek"`) {
		t.Fatalf("keys rotate --dek -o json: %s", out)
	}
	out, _, _ = cli(t, "", "audit", "tail", "--data-dir", dir, "--last", "50")
	if !strings.Contains(out, "RotateKeys") {
		t.Fatalf("RotateKeys not in the audit log:\n%s", out)
	}
	cancel()
	if c := <-done; c != 0 {
		t.Fatalf("dev exit %d: %s", c, logs.String())
	}

	startDev(t, dir)
	tok, _, _ := cli(t, "", "token", "--data-dir", dir, "--namespace", "demo", "--service-account", "app")
	out, errOut, code = cli(t, tok, "get", "demo-db", "--data-dir", dir, "--token", "-")
	if code != 0 || !strings.Contains(out, "password: rotated-away") {
		t.Fatalf("after rotation and restart: %s %s", out, errOut)
	}
}
