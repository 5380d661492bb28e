package store

import (
	"errors"
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
