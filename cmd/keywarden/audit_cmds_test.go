package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// anchoredExport writes n audit events to a fresh log and returns its export and the anchors
// of its entries at seqs, signed with a new anchor key, as JSON lines.
func anchoredExport(t *testing.T, n int, seqs ...uint64) (export []audit.Entry, anchors string, key *crypto.SigningKey) {
	t.Helper()
	dir := t.TempDir()
	kek, err := crypto.LoadOrCreateLocalKEK(filepath.Join(dir, "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(store.Config{Path: filepath.Join(dir, "state.db"), KEK: kek, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	l, err := audit.Open(audit.Config{DB: db, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		l.Record(context.Background(), audit.Event{Kind: audit.KindDecision, Outcome: audit.OutcomeAllow, Namespace: "demo", Secret: "s", Reason: strings.Repeat("x", i)})
	}
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	entries, err := l.Entries(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	key, err = crypto.LoadOrCreateSigningKey(filepath.Join(dir, "anchor.json"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, s := range seqs {
		a, err := audit.NewAnchor(key, "node-1", audit.Head{Seq: s, Hash: entries[s-1].Hash}, time.Date(2030, 1, 1, 0, int(s), 0, 0, time.UTC))
		if err != nil {
			t.Fatal(err)
		}
		b.Write(a.Marshal())
		b.WriteByte('\n')
	}
	return entries, b.String(), key
}

func writeExport(t *testing.T, entries []audit.Entry) string {
	t.Helper()
	var buf bytes.Buffer
	if _, err := audit.WriteJSONLines(&buf, entries); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "export.jsonl")
	if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAuditVerify_anchor(t *testing.T) {
	entries, anchors, key := anchoredExport(t, 6, 3, 5)
	exp := writeExport(t, entries)

	out, errOut, code := cli(t, anchors, "audit", "verify", "--file", exp, "--anchor", "-", "--anchor-key", key.Fingerprint())
	if code != 0 || !strings.Contains(out, "audit log: OK, 6 entries") || !strings.Contains(out, "anchors: OK, 2 of node node-1 checked: 2 matched") ||
		!strings.Contains(out, key.Fingerprint()+" (pinned)") || !strings.Contains(out, "entries 6..6 are after it and not covered") {
		t.Fatalf("verify with anchors: %d\n%s%s", code, out, errOut)
	}
	out, _, code = cli(t, anchors, "audit", "verify", "--file", exp, "--anchor", "-")
	if code != 0 || !strings.Contains(out, "NOT pinned") {
		t.Fatalf("unpinned: %d\n%s", code, out)
	}
	out, _, code = cli(t, anchors, "audit", "verify", "--file", exp, "--anchor", "-", "-o", "json")
	var res struct {
		OK      bool               `json:"ok"`
		Anchors audit.AnchorReport `json:"anchors"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || !res.OK || res.Anchors.Matched != 2 || res.Anchors.Latest.Seq != 5 {
		t.Fatalf("json: %d %s", code, out)
	}

	// A consistent rewrite from entry 2 on, as a KEK holder would make it.
	rewritten := append([]audit.Entry(nil), entries...)
	ev := *rewritten[1].Event
	ev.Outcome = audit.OutcomeDeny
	rewritten[1].Event = &ev
	for i := 1; i < len(rewritten); i++ {
		rewritten[i].Prev = rewritten[i-1].Hash
		rewritten[i].Hash = audit.ComputeHash(&rewritten[i])
	}
	rexp := writeExport(t, rewritten)
	if out, errOut, code := cli(t, "", "audit", "verify", "--file", rexp); code != 0 {
		t.Fatalf("the rewritten export should verify without anchors: %d %s %s", code, out, errOut)
	}
	out, _, code = cli(t, anchors, "audit", "verify", "--file", rexp, "--anchor", "-", "--anchor-key", key.Fingerprint())
	if code != 1 || !strings.Contains(out, "TAMPERED") || !strings.Contains(out, "entry 3 modified: the entry does not match the anchor") {
		t.Fatalf("rewritten export with anchors: %d\n%s", code, out)
	}

	// A pinned key that is not the anchors' key.
	other, err := crypto.LoadOrCreateSigningKey(filepath.Join(t.TempDir(), "other.json"))
	if err != nil {
		t.Fatal(err)
	}
	out, _, code = cli(t, anchors, "audit", "verify", "--file", exp, "--anchor", "-", "--anchor-key", other.Fingerprint())
	if code != 1 || !strings.Contains(out, "not the pinned key") {
		t.Fatalf("other pinned key: %d\n%s", code, out)
	}
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		want  string
	}{
		{"key without anchors", "", []string{"--file", exp, "--anchor-key", "ab"}, "need --anchor"},
		{"both from stdin", anchors, []string{"--file", "-", "--anchor", "-"}, "cannot both read standard input"},
		{"no anchors", "", []string{"--file", exp, "--anchor", "-"}, "no audit anchors of the node"},
		{"broken anchor", "{\"v\":1,\"seq\":\"x\"}\n", []string{"--file", exp, "--anchor", "-"}, "line 1: anchor does not parse"},
	} {
		_, errOut, code := cli(t, tc.stdin, append([]string{"audit", "verify"}, tc.args...)...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%s: %d %q, want an error containing %q", tc.name, code, errOut, tc.want)
		}
	}
}

func TestPrintStatusDetails_vaultLeases(t *testing.T) {
	exp := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	var b strings.Builder
	printStatusDetails(&b, &keywardenv1.GetStatusResponse{VaultLeases: []*keywardenv1.VaultLease{
		{LeaseId: "database/creds/app/a", Path: "database/creds/app", Owner: "uid-1", State: "held", ExpiresAt: timestamppb.New(exp)},
		{LeaseId: "database/creds/app/b", Path: "database/creds/app", State: "revoking", ExpiresAt: timestamppb.New(exp)},
	}})
	want := "vault leases: 2\n" +
		"  database/creds/app/a  held  database/creds/app  owner uid-1  expires 2025-01-02T03:04:05Z\n" +
		"  database/creds/app/b  revoking  database/creds/app  owner shared  expires 2025-01-02T03:04:05Z\n"
	if got := b.String(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}
