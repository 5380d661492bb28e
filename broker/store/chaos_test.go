package store

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/keywarden/keywarden/internal/chaos"
)

// The workload of the commit-failure campaigns: chaosWrites commits over chaosKeys keys in
// two buckets, a mix of puts, overwrites, deletes and multi-record transactions.
const (
	chaosWrites        = 40
	chaosKeys          = 12
	chaosDefaultTrials = 40 // one per commit index of the workload
)

var errInjected = errors.New("injected fsync failure")

// chaosOp is one commit of the workload: puts (key -> value) and deletes, in one transaction.
type chaosOp struct {
	puts    map[string]string // "bucket/key" -> value
	deletes []string          // "bucket/key"
}

func chaosWorkload(seed uint64) []chaosOp {
	rng := rand.New(rand.NewPCG(seed, 11))
	key := func() string { return fmt.Sprintf("b%d/k%02d", rng.IntN(2), rng.IntN(chaosKeys)) }
	ops := make([]chaosOp, chaosWrites)
	for i := range ops {
		op := chaosOp{puts: map[string]string{}}
		switch r := rng.IntN(10); {
		case r < 5:
			op.puts[key()] = fmt.Sprintf("v%d-%d", seed, i)
		case r < 7:
			op.deletes = append(op.deletes, key())
		default:
			for j := range 1 + rng.IntN(4) {
				op.puts[key()] = fmt.Sprintf("v%d-%d-%d-%s", seed, i, j, strings.Repeat("x", rng.IntN(2048)))
			}
			op.deletes = append(op.deletes, key())
		}
		ops[i] = op
	}
	return ops
}

func (op chaosOp) apply(db *DB) error {
	return db.Update(func(tx *Tx) error {
		for _, k := range op.deletes {
			b, key, _ := strings.Cut(k, "/")
			if err := tx.Delete(b, key); err != nil {
				return err
			}
		}
		for k, v := range op.puts {
			b, key, _ := strings.Cut(k, "/")
			if err := tx.Put(b, key, []byte(v)); err != nil {
				return err
			}
		}
		return nil
	})
}

// model is what the acknowledged commits say the store holds.
func (op chaosOp) applyTo(m map[string]string) {
	for _, k := range op.deletes {
		delete(m, k)
	}
	for k, v := range op.puts {
		m[k] = v
	}
}

// chaosCompare reopens nothing: it reads every key of the workload from db and counts the
// acknowledged values missing or wrong (losses) and values present that no acknowledged
// commit wrote (ghosts: a failed commit that became visible).
func chaosCompare(tb testing.TB, db *DB, want map[string]string) (losses, ghosts int) {
	tb.Helper()
	for b := range 2 {
		for k := range chaosKeys {
			key := fmt.Sprintf("b%d/k%02d", b, k)
			bucket, name, _ := strings.Cut(key, "/")
			got, err := db.Get(bucket, name)
			w, ok := want[key]
			switch {
			case ok && (err != nil || string(got) != w):
				losses++
				tb.Errorf("acknowledged %s = %.20q (%v), want %.20q", key, got, err, w)
			case !ok && !errors.Is(err, ErrNotFound):
				ghosts++
				tb.Errorf("%s = %.20q (%v), want none: no acknowledged commit left it", key, got, err)
			}
		}
	}
	return losses, ghosts
}

// TestDB_FailCommit_campaign fails the commit at index k of the workload, for every k (trial
// i fails commit i mod chaosWrites of workload i): exactly that write gets the error, the
// later writes succeed, the store reopens and passes Check, and every acknowledged write
// reads back while the failed one is not visible. The injection is Config.FailCommit, which
// fails the commit the way bbolt reports a failed write or fsync: an error and a rollback.
func TestDB_FailCommit_campaign(t *testing.T) {
	trials := chaos.Trials(t, chaosDefaultTrials)
	cfg, _ := testConfig(t)
	var ran, faults, losses, ghosts, wrongErrs, acked int
	for trial := range trials {
		ran++
		k := 1 + trial%chaosWrites
		cfg.Path = filepath.Join(t.TempDir(), "store.db")
		var armed atomic.Bool
		var commits atomic.Int64
		cfg.FailCommit = func() error {
			if armed.Load() && commits.Add(1) == int64(k) {
				return errInjected
			}
			return nil
		}
		db, err := Open(cfg)
		if err != nil {
			t.Fatalf("trial %d: open: %v", trial, err)
		}
		armed.Store(true)
		model := map[string]string{}
		for i, op := range chaosWorkload(uint64(trial)) {
			err := op.apply(db)
			switch {
			case i+1 == k && err != nil && strings.Contains(err.Error(), errInjected.Error()):
				faults++
			case i+1 == k:
				wrongErrs++
				t.Errorf("trial %d: the failed commit %d returned %v, want the injected error", trial, k, err)
			case err != nil:
				wrongErrs++
				t.Errorf("trial %d: commit %d (the failure was at %d): %v", trial, i+1, k, err)
			default:
				op.applyTo(model)
				acked++
			}
		}
		if err := db.Close(); err != nil {
			t.Fatalf("trial %d: close: %v", trial, err)
		}
		cfg.FailCommit = nil
		db, err = Open(cfg)
		if err != nil {
			t.Fatalf("trial %d: the store does not reopen after a failed commit: %v", trial, err)
		}
		if err := db.Check(); err != nil {
			t.Errorf("trial %d: Check after a failed commit: %v", trial, err)
		}
		l, g := chaosCompare(t, db, model)
		losses, ghosts = losses+l, ghosts+g
		_ = db.Close()
		if t.Failed() {
			break
		}
	}
	t.Logf("commit-failure campaign: %d trials, %d injected failures each reported to its caller, %d wrong results, "+
		"%d acknowledged commits whose result was compared key by key after reopen, %d losses, %d failed writes visible", ran, faults, wrongErrs, acked, losses, ghosts)
	chaos.Report(t, chaos.Result{Campaign: "failed commit at every index (store.FailCommit)", Trials: ran, Faults: faults, Losses: losses,
		WrongAllows: ghosts + wrongErrs, Notes: fmt.Sprintf("%d-commit workload; %d acked commits compared after reopen", chaosWrites, acked)})
}

// TestDB_diskFull_campaign fills a small tmpfs until 0 or 4 KiB are free just before commit k
// of the workload, for every k, so the kernel answers ENOSPC wherever bbolt's commit first
// needs a page the file has never used (a commit that only reuses freed pages still fits:
// most do), then frees the space and runs the rest. Every error reaches
// its caller and is not reported as corruption, the store reopens and passes Check, and the
// acknowledged commits are exactly what it holds.
func TestDB_diskFull_campaign(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs; CI runs as root")
	}
	mnt := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=4m"); err != nil {
		t.Skipf("cannot mount tmpfs here: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(mnt, syscall.MNT_DETACH) })
	trials := chaos.Trials(t, chaosDefaultTrials)
	rng := rand.New(rand.NewPCG(uint64(os.Getpid()), 12))
	cfg, _ := testConfig(t)
	filler := filepath.Join(mnt, "filler")
	var ran, faults, succeeded, losses, ghosts, corrupt, acked int
	for trial := range trials {
		ran++
		k := 1 + trial%chaosWrites
		cfg.Path = filepath.Join(mnt, "store.db")
		_ = os.Remove(cfg.Path)
		db, err := Open(cfg)
		if err != nil {
			t.Fatalf("trial %d: open: %v", trial, err)
		}
		model := map[string]string{}
		for i, op := range chaosWorkload(uint64(trial)) {
			full := i+1 == k
			if full {
				fillTo(t, mnt, filler, int64(rng.IntN(2))*4096)
			}
			err := op.apply(db)
			if full {
				_ = os.Remove(filler)
			}
			switch {
			case err == nil:
				op.applyTo(model)
				acked++
				if full {
					succeeded++
				}
			case !full:
				t.Errorf("trial %d: commit %d with free space: %v", trial, i+1, err)
			case errors.Is(err, ErrCorrupt):
				corrupt++
				t.Errorf("trial %d: a full disk at commit %d was reported as corruption: %v", trial, k, err)
			default:
				faults++
			}
		}
		_ = db.Close()
		db, err = Open(cfg)
		if err != nil {
			t.Fatalf("trial %d: the store does not reopen after a full disk: %v", trial, err)
		}
		if err := db.Check(); err != nil {
			t.Errorf("trial %d: Check after a full disk: %v", trial, err)
		}
		l, g := chaosCompare(t, db, model)
		losses, ghosts = losses+l, ghosts+g
		_ = db.Close()
		if t.Failed() {
			break
		}
	}
	t.Logf("disk-full campaign: %d trials, %d commits failed with ENOSPC and reported, %d fitted in the space left, "+
		"%d reported as corruption, %d acknowledged commits whose result was compared key by key after reopen, %d losses, %d failed writes visible",
		ran, faults, succeeded, corrupt, acked, losses, ghosts)
	chaos.Report(t, chaos.Result{Campaign: "disk full at every commit index (tmpfs)", Trials: ran, Faults: faults, Losses: losses,
		WrongAllows: ghosts + corrupt, Notes: fmt.Sprintf("%d commits fitted in the space left; %d acked commits compared after reopen", succeeded, acked)})
}

// fillTo fills the file system at mnt with the file filler until at most free bytes are left.
func fillTo(tb testing.TB, mnt, filler string, free int64) {
	tb.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		tb.Fatal(err)
	}
	avail := int64(st.Bavail) * st.Bsize
	if avail <= free {
		return
	}
	f, err := os.OpenFile(filler, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, avail-free); err != nil {
		tb.Fatalf("fill the disk: %v", err)
	}
}
