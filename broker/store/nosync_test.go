package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
)

// TestDB_NoSync_reopenKeepsOptions fails a commit of a NoSync store so that the next call
// reopens the handle, and checks that the new handle still commits without fsync and that
// records written before and after the reopen read back.
func TestDB_NoSync_reopenKeepsOptions(t *testing.T) {
	tests := []struct {
		name   string
		noSync bool
	}{
		{"noSync", true},
		{"fsync", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, logs := testConfig(t)
			cfg.NoSync = tt.noSync
			var fail atomic.Bool
			cfg.FailCommit = func() error {
				if fail.Load() {
					return errors.New("injected")
				}
				return nil
			}
			db := mustOpen(t, cfg)
			if db.NoSync() != tt.noSync || db.bdb.NoSync != tt.noSync {
				t.Fatalf("opened with NoSync %v, handle %v; want %v", db.NoSync(), db.bdb.NoSync, tt.noSync)
			}
			mustPut(t, db, "b", "before", "1")
			fail.Store(true)
			if err := db.Put("b", "failed", []byte("x")); err == nil {
				t.Fatal("Put with an injected commit failure succeeded")
			}
			fail.Store(false)
			mustPut(t, db, "b", "after", "2")
			if !strings.Contains(logs.String(), "store reopened after a failed commit") {
				t.Fatal("the failed commit did not reopen the handle")
			}
			if db.bdb.NoSync != tt.noSync {
				t.Fatalf("reopened handle has NoSync %v, want %v", db.bdb.NoSync, tt.noSync)
			}
			if err := db.Sync(); err != nil {
				t.Fatalf("Sync: %v", err)
			}
			for k, want := range map[string]string{"before": "1", "after": "2"} {
				if got, err := db.Get("b", k); err != nil || string(got) != want {
					t.Fatalf("Get %s = %q, %v; want %q", k, got, err, want)
				}
			}
			if _, err := db.Get("b", "failed"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("the failed commit's record: %v, want ErrNotFound", err)
			}
		})
	}
}

// TestDB_NoSync_sealedAndRotated checks that a NoSync store seals its records like any other
// and goes through a DEK rotation and re-seal, and that Sync and Close work after it.
func TestDB_NoSync_sealedAndRotated(t *testing.T) {
	cfg, _ := testConfig(t)
	cfg.NoSync = true
	db := mustOpen(t, cfg)
	mustPut(t, db, "b", "k", "plain-value-marker")
	if err := db.RotateDEK(); err != nil {
		t.Fatal(err)
	}
	if err := db.Reseal(context.Background()); err != nil {
		t.Fatal(err)
	}
	st, err := db.KeyStatus()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.KeyIDs) != 1 {
		t.Fatalf("after reseal the keyset holds %d keys, want 1", len(st.KeyIDs))
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Sync(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Sync after Close: %v, want ErrClosed", err)
	}
	db = mustOpen(t, cfg)
	if got, err := db.Get("b", "k"); err != nil || string(got) != "plain-value-marker" {
		t.Fatalf("Get after reopen = %q, %v", got, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("plain-value-marker")) {
		t.Fatal("a NoSync store holds a value in the clear")
	}
}
