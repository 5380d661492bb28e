package store

import (
	"errors"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

type commitRecorder struct {
	mu   sync.Mutex
	errs []error
	durs []time.Duration
}

func (r *commitRecorder) record(d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.durs = append(r.durs, d)
	r.errs = append(r.errs, err)
}

func TestDB_Update_onCommit(t *testing.T) {
	errFn := errors.New("fn refused")
	tests := []struct {
		name      string
		op        func(db *DB) error
		wantCalls int
		wantErr   error
	}{
		{"put commits", func(db *DB) error { return db.Put("b", "k", []byte("v")) }, 1, nil},
		{"update commits", func(db *DB) error {
			return db.Update(func(tx *Tx) error { return tx.Put("b", "k2", []byte("v")) })
		}, 1, nil},
		{"rolled back by fn is not a commit", func(db *DB) error {
			return db.Update(func(*Tx) error { return errFn })
		}, 0, nil},
		{"reads are not commits", func(db *DB) error {
			_, err := db.List("b")
			return err
		}, 0, nil},
		{"closed store", func(db *DB) error {
			_ = db.Close()
			return db.Put("b", "k", []byte("v"))
		}, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _ := testConfig(t)
			var rec commitRecorder
			cfg.OnCommit = rec.record
			cfg.Clock = clocktesting.NewFakePassiveClock(time.Unix(1, 0))
			db := mustOpen(t, cfg)
			_ = tt.op(db)
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if len(rec.errs) != tt.wantCalls {
				t.Fatalf("OnCommit calls = %d, want %d", len(rec.errs), tt.wantCalls)
			}
			for i, err := range rec.errs {
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("OnCommit err = %v, want %v", err, tt.wantErr)
				}
				if rec.durs[i] < 0 {
					t.Errorf("negative duration %v", rec.durs[i])
				}
			}
		})
	}
}

// TestDB_FailCommit_losesNothingAcknowledged: an injected commit failure fails the write as a
// failed commit would, writes nothing, is reported to OnCommit, and the next write succeeds.
func TestDB_FailCommit_losesNothingAcknowledged(t *testing.T) {
	cfg, _ := testConfig(t)
	var fail atomic.Bool
	var commitErrs atomic.Int64
	cfg.FailCommit = func() error {
		if fail.Load() {
			return errors.New("injected fsync failure")
		}
		return nil
	}
	cfg.OnCommit = func(_ time.Duration, err error) {
		if err != nil {
			commitErrs.Add(1)
		}
	}
	db := mustOpen(t, cfg)
	defer db.Close()
	mustPut(t, db, "b", "kept", "v1")
	fail.Store(true)
	if err := db.Put("b", "lost", []byte("v2")); err == nil || !strings.Contains(err.Error(), "injected fsync failure") {
		t.Fatalf("put during a failing commit: %v", err)
	}
	if commitErrs.Load() != 1 {
		t.Fatalf("commit errors reported: %d, want 1", commitErrs.Load())
	}
	fail.Store(false)
	if _, err := db.Get("b", "lost"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the failed write is visible: %v", err)
	}
	if got, err := db.Get("b", "kept"); err != nil || string(got) != "v1" {
		t.Fatalf("acknowledged write after a failed commit: %q %v", got, err)
	}
	mustPut(t, db, "b", "after", "v3")
}

// TestDB_failedCommit_reopensTheHandle: after a failed commit the store does not trust its
// bbolt handle (the page cache may hold what the disk never got): the next call opens the
// file anew, says so in the log, keeps the file lock, and fails with the open's error for as
// long as the file cannot be opened.
func TestDB_failedCommit_reopensTheHandle(t *testing.T) {
	cfg, logs := testConfig(t)
	var fail atomic.Bool
	cfg.FailCommit = func() error {
		if fail.Load() {
			return errors.New("injected fsync failure")
		}
		return nil
	}
	db := mustOpen(t, cfg)
	mustPut(t, db, "b", "kept", "v1")
	before := db.bdb
	fail.Store(true)
	if err := db.Put("b", "lost", []byte("v2")); err == nil {
		t.Fatal("put during a failing commit succeeded")
	}
	fail.Store(false)
	if got, err := db.Get("b", "kept"); err != nil || string(got) != "v1" {
		t.Fatalf("read after a failed commit: %q %v", got, err)
	}
	if db.bdb == before {
		t.Fatal("the handle that saw the failed commit is still in use")
	}
	if !strings.Contains(logs.String(), "store reopened after a failed commit") {
		t.Errorf("no log line says the store was reopened:\n%s", logs.String())
	}
	if _, err := Open(Config{Path: cfg.Path, KEK: cfg.KEK, Logger: cfg.Logger, LockTimeout: 50 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Fatalf("a second Open while the reopened store holds the file: %v, want ErrLocked", err)
	}
	mustPut(t, db, "b", "after", "v3")

	// A file that cannot be opened again: every call reports it until it can.
	fail.Store(true)
	_ = db.Put("b", "lost", []byte("v2"))
	fail.Store(false)
	aside := cfg.Path + ".aside"
	if err := os.Rename(cfg.Path, aside); err != nil {
		t.Fatal(err)
	}
	if err := db.Put("b", "x", []byte("v")); err == nil || !strings.Contains(err.Error(), "reopen after a failed commit") {
		t.Fatalf("put while the file cannot be reopened: %v", err)
	}
	if _, err := os.Stat(cfg.Path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the reopen created a new file in place of the missing one: %v", err)
	}
	if err := os.Rename(aside, cfg.Path); err != nil {
		t.Fatal(err)
	}
	mustPut(t, db, "b", "later", "v4")
	if err := db.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}
