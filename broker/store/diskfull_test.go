package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestDB_Put_diskFull puts the store on a 1 MiB tmpfs and writes until the disk is full: the
// failing write is reported, every acknowledged write is still there, the file passes Check
// after reopening, and writes succeed again once space is freed.
func TestDB_Put_diskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs; CI runs as root")
	}
	dir := t.TempDir()
	mnt := filepath.Join(dir, "small")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount tmpfs here: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(mnt, 0) })

	cfg, _ := testConfig(t)
	cfg.Path = filepath.Join(mnt, "store.db")
	var commitErrs atomic.Int64 // what the daemon's commit error counter sees
	cfg.OnCommit = func(_ time.Duration, err error) {
		if err != nil {
			commitErrs.Add(1)
		}
	}
	db, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	value := strings.Repeat("v", 16<<10)
	var acked []string
	var full error
	for i := range 1000 {
		key := fmt.Sprintf("k%04d", i)
		if err := db.Put("b", key, []byte(value)); err != nil {
			full = err
			break
		}
		acked = append(acked, key)
	}
	if full == nil {
		t.Fatal("the disk never filled: the fault did not fire")
	}
	t.Logf("disk full after %d acknowledged writes: %v", len(acked), full)
	if commitErrs.Load() == 0 {
		t.Error("OnCommit never saw the failed commit")
	}
	if errors.Is(full, ErrCorrupt) {
		t.Fatalf("a full disk was reported as corruption: %v", full)
	}
	if len(acked) == 0 {
		t.Fatal("no write succeeded before the disk filled")
	}
	for _, k := range acked {
		if _, err := db.Get("b", k); err != nil {
			t.Fatalf("acknowledged write %s lost after disk full: %v", k, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Logf("close after disk full: %v", err)
	}

	db = mustOpen(t, cfg)
	if err := db.Check(); err != nil {
		t.Fatalf("Check after disk full: %v", err)
	}
	for _, k := range acked {
		if _, err := db.Get("b", k); err != nil {
			t.Fatalf("acknowledged write %s lost after reopen: %v", k, err)
		}
	}
	// Free space (delete half the records; bbolt reuses the freed pages) and write again.
	for _, k := range acked[:len(acked)/2] {
		if err := db.Delete("b", k); err != nil {
			t.Fatalf("delete to free space: %v", err)
		}
	}
	if err := db.Put("b", "after", []byte(value)); err != nil {
		t.Fatalf("write after freeing space: %v", err)
	}
	if got, err := db.Get("b", "after"); err != nil || string(got) != value {
		t.Fatalf("read after recovery: %v", err)
	}
}
