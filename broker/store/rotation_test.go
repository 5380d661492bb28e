package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/keywarden/keywarden/crypto"
)

var rotationBuckets = []string{"alpha", "beta", "gamma"}

func rotationValue(bucket string, i int) string { return fmt.Sprintf("%s-value-%d", bucket, i) }

// putRecords writes n records in each of rotationBuckets.
func putRecords(tb testing.TB, db *DB, n int) {
	tb.Helper()
	err := db.Update(func(tx *Tx) error {
		for _, b := range rotationBuckets {
			for i := range n {
				if err := tx.Put(b, fmt.Sprintf("k%05d", i), []byte(rotationValue(b, i))); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}

func checkRecords(tb testing.TB, db *DB, n int) {
	tb.Helper()
	for _, b := range rotationBuckets {
		for i := range n {
			got, err := db.Get(b, fmt.Sprintf("k%05d", i))
			if err != nil || string(got) != rotationValue(b, i) {
				tb.Fatalf("%s/k%05d = %q, %v; want %q", b, i, got, err, rotationValue(b, i))
			}
		}
	}
}

func mustKeyStatus(tb testing.TB, db *DB) KeyStatus {
	tb.Helper()
	ks, err := db.KeyStatus()
	if err != nil {
		tb.Fatal(err)
	}
	return ks
}

func TestDB_Reseal_resealsThenPrunes(t *testing.T) {
	cfg, _ := testConfig(t)
	cfg.ResealBatch = 16
	db := mustOpen(t, cfg)
	const n = 100
	putRecords(t, db, n)
	before := db.kr.Load().PrimaryKeyID()
	if err := db.RotateDEK(); err != nil {
		t.Fatal(err)
	}
	ks := mustKeyStatus(t, db)
	if ks.Records != 3*n || ks.Stale != 3*n || len(ks.KeyIDs) != 2 || !ks.ResealPending || ks.PrimaryKeyID == before {
		t.Fatalf("after RotateDEK: %+v", ks)
	}
	if err := db.Reseal(context.Background()); err != nil {
		t.Fatal(err)
	}
	ks = mustKeyStatus(t, db)
	if ks.Stale != 0 || len(ks.KeyIDs) != 1 || ks.KeyIDs[0] != ks.PrimaryKeyID || ks.ResealPending {
		t.Fatalf("after Reseal: %+v", ks)
	}
	checkRecords(t, db, n)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = mustOpen(t, cfg)
	checkRecords(t, db, n)
	if ks := mustKeyStatus(t, db); len(ks.KeyIDs) != 1 {
		t.Fatalf("after reopen: %+v", ks)
	}
}

// TestDB_Reseal_failedCommitKeepsOldKeys: a commit that fails in the middle of a re-seal
// leaves every record readable, in this process and after reopening, with the old key still in
// the keyset; the next Reseal resumes from the last committed batch and finishes.
func TestDB_Reseal_failedCommitKeepsOldKeys(t *testing.T) {
	cfg, _ := testConfig(t)
	cfg.ResealBatch = 10
	var commits, failAt atomic.Int64
	cfg.FailCommit = func() error {
		if n := commits.Add(1); failAt.Load() > 0 && n >= failAt.Load() {
			return errors.New("injected fsync failure")
		}
		return nil
	}
	db := mustOpen(t, cfg)
	const n = 40 // 120 records: 12 batches
	putRecords(t, db, n)
	if err := db.RotateDEK(); err != nil {
		t.Fatal(err)
	}
	failAt.Store(commits.Load() + 4) // three batches commit, the fourth fails
	if err := db.Reseal(context.Background()); err == nil {
		t.Fatal("Reseal succeeded through a failing commit")
	}
	ks := mustKeyStatus(t, db)
	if len(ks.KeyIDs) != 2 || !ks.ResealPending || ks.Resealed != 30 || ks.Stale != 3*n-30 {
		t.Fatalf("after the failed commit: %+v", ks)
	}
	checkRecords(t, db, n)
	failAt.Store(0)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = mustOpen(t, cfg)
	checkRecords(t, db, n)
	if err := db.Reseal(context.Background()); err != nil {
		t.Fatal(err)
	}
	ks = mustKeyStatus(t, db)
	if len(ks.KeyIDs) != 1 || ks.Stale != 0 || ks.ResealPending {
		t.Fatalf("after the resumed Reseal: %+v", ks)
	}
	checkRecords(t, db, n)
}

// TestDB_Reseal_failedPruneKeepsOldKeys: the prune itself failing to commit keeps the old
// key in memory and on disk.
func TestDB_Reseal_failedPruneKeepsOldKeys(t *testing.T) {
	cfg, _ := testConfig(t)
	cfg.ResealBatch = 1000
	var fail atomic.Bool
	var resealCommits atomic.Int64
	cfg.FailCommit = func() error {
		if fail.Load() && resealCommits.Add(1) == 2 { // the batch commits, the prune fails
			return errors.New("injected fsync failure")
		}
		return nil
	}
	db := mustOpen(t, cfg)
	putRecords(t, db, 5)
	if err := db.RotateDEK(); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	if err := db.Reseal(context.Background()); err == nil {
		t.Fatal("Reseal succeeded through a failing prune")
	}
	if ks := mustKeyStatus(t, db); len(ks.KeyIDs) != 2 || ks.Stale != 0 || !ks.ResealPending {
		t.Fatalf("after the failed prune: %+v", ks)
	}
	fail.Store(false)
	if err := db.Reseal(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ks := mustKeyStatus(t, db); len(ks.KeyIDs) != 1 {
		t.Fatalf("after Reseal: %+v", ks)
	}
	checkRecords(t, db, 5)
}

// TestDB_Reseal_concurrentWriters: records written and overwritten while keys rotate and
// records are re-sealed all stay readable, and the keyset ends with one key.
func TestDB_Reseal_concurrentWriters(t *testing.T) {
	cfg, _ := testConfig(t)
	cfg.ResealBatch = 8
	db := mustOpen(t, cfg)
	putRecords(t, db, 30)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var written atomic.Int64
	for w := range 3 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				key := fmt.Sprintf("w%d-%04d", w, i%200)
				if err := db.Put("writers", key, []byte(key)); err != nil {
					t.Errorf("put %s: %v", key, err)
					return
				}
				written.Add(1)
			}
		})
	}
	for range 3 {
		if err := db.RotateDEK(); err != nil {
			t.Fatal(err)
		}
		if err := db.Reseal(ctx); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
	if err := db.Reseal(context.Background()); err != nil {
		t.Fatal(err)
	}
	ks := mustKeyStatus(t, db)
	if len(ks.KeyIDs) != 1 || ks.Stale != 0 {
		t.Fatalf("after the writers stopped: %+v", ks)
	}
	checkRecords(t, db, 30)
	recs, err := db.List("writers")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if string(r.Value) != r.Key {
			t.Fatalf("writers/%s = %q", r.Key, r.Value)
		}
	}
	t.Logf("%d writes during 3 rotations, %d distinct records", written.Load(), len(recs))
}

// TestDB_Reseal_corruptRecordStopsIt: a record under an old key that does not authenticate
// fails the re-seal with ErrCorrupt naming it, and the old key is kept.
func TestDB_Reseal_corruptRecordStopsIt(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	putRecords(t, db, 3)
	if err := db.RotateDEK(); err != nil {
		t.Fatal(err)
	}
	err := db.bdb.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("beta"))
		ct := append([]byte(nil), b.Get([]byte("k00001"))...)
		ct[len(ct)-1] ^= 1
		return b.Put([]byte("k00001"), ct)
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Reseal(context.Background())
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "beta/k00001") {
		t.Fatalf("Reseal over a corrupt record: %v", err)
	}
	if ks := mustKeyStatus(t, db); len(ks.KeyIDs) != 2 {
		t.Fatalf("old key dropped with a record still under it: %+v", ks)
	}
}

func TestDB_Reseal_canceledBetweenBatches(t *testing.T) {
	cfg, _ := testConfig(t)
	cfg.ResealBatch = 4
	db := mustOpen(t, cfg)
	putRecords(t, db, 10)
	if err := db.RotateDEK(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := db.Reseal(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Reseal with a canceled context: %v", err)
	}
	if ks := mustKeyStatus(t, db); len(ks.KeyIDs) != 2 || !ks.ResealPending {
		t.Fatalf("after cancel: %+v", ks)
	}
}

func TestDB_RewrapKeyset_newKEKOpensOldDoesNot(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	putRecords(t, db, 5)
	newKEK, err := crypto.LoadOrCreateLocalKEK(filepath.Join(t.TempDir(), "kek2.json"))
	if err != nil {
		t.Fatal(err)
	}
	before := mustKeyStatus(t, db).WrappedBy
	if err := db.RewrapKeyset(newKEK); err != nil {
		t.Fatal(err)
	}
	if after := mustKeyStatus(t, db).WrappedBy; after == before || after == "" {
		t.Fatalf("wrapped by %q, was %q", after, before)
	}
	// Rotating after the rewrap wraps with the new KEK too.
	if err := db.RotateDEK(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(cfg); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("old KEK opened the re-wrapped store: %v", err)
	}
	cfg.KEK = newKEK
	db = mustOpen(t, cfg)
	checkRecords(t, db, 5)
}

func TestDB_RewrapKeyset_kekDown(t *testing.T) {
	cfg, _ := testConfig(t)
	kek := &downKEK{AEAD: cfg.KEK}
	cfg.KEK = kek
	db := mustOpen(t, cfg)
	kek.down.Store(true)
	if err := db.RewrapKeyset(kek); !errors.Is(err, ErrKEKUnavailable) {
		t.Fatalf("RewrapKeyset with the KEK down: %v", err)
	}
}

func TestOpen_rejectsNegativeResealBatch(t *testing.T) {
	cfg, _ := testConfig(t)
	cfg.ResealBatch = -1
	if _, err := Open(cfg); err == nil || !strings.Contains(err.Error(), "reseal batch must not be negative") {
		t.Fatalf("Open: %v", err)
	}
}
