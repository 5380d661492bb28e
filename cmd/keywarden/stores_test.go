package main

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/broker/store"

	"github.com/keywarden/keywarden/internal/testlog"
)

func TestDaemon_legacyCacheFileBecomesNodeStore(t *testing.T) {
	dir := t.TempDir()
	cfg, err := devConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	// A first start writes node.db; rename it back to the old name, with a record in it.
	d, err := newDaemon(cfg, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	if err := d.node.Update(func(tx *store.Tx) error { return tx.Put("probe", "k", []byte("kept")) }); err != nil {
		t.Fatal(err)
	}
	d.close()
	if err := os.Rename(filepath.Join(dir, nodeFile), filepath.Join(dir, legacyNodeFile)); err != nil {
		t.Fatal(err)
	}

	d, err = newDaemon(cfg, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	var got []byte
	if err := d.node.View(func(tx *store.Tx) error {
		var err error
		got, err = tx.Get("probe", "k")
		return err
	}); err != nil || string(got) != "kept" {
		t.Fatalf("record after the rename: %q %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, legacyNodeFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("cache.db still there after the rename: %v", err)
	}
}

func TestMigrateNodeFile_currentNameWins(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{nodeFile: "current", legacyNodeFile: "legacy"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	logs := &testlog.Buffer{}
	if err := migrateNodeFile(dir, slog.New(slog.NewTextHandler(logs, nil))); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{nodeFile: "current", legacyNodeFile: "legacy"} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(b) != body {
			t.Fatalf("%s: %q %v", name, b, err)
		}
	}
	if !strings.Contains(logs.String(), "not read") {
		t.Fatalf("the left-over cache.db is not reported: %s", logs.String())
	}
}
