package keyrot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"
)

// storeNames are the daemon's stores; "volumes" commits without fsync, as the daemon opens it.
var storeNames = []string{"state", "node", "volumes"}

// noSync reports whether the daemon opens the store named n with store.Config.NoSync.
func noSync(n string) bool { return n == "volumes" }

func recordValue(storeName, bucket, key string) string {
	return fmt.Sprintf("%s/%s/%s=secret-%d", storeName, bucket, key, len(key)*7+len(bucket))
}

func recordKeys(n int) (keys []string) {
	for i := range n {
		keys = append(keys, fmt.Sprintf("r%04d", i))
	}
	return keys
}

var recordBuckets = []string{"leases", "volumes"}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// openStores opens the stores of dir with the local KEK file in it.
func openStores(tb testing.TB, dir string, mod func(*store.Config)) []*store.DB {
	tb.Helper()
	kek, err := crypto.LoadLocalKEK(filepath.Join(dir, "kek.json"))
	if err != nil {
		tb.Fatalf("load kek: %v", err)
	}
	var dbs []*store.DB
	for _, n := range storeNames {
		cfg := store.Config{Path: filepath.Join(dir, n+".db"), KEK: kek, Logger: discard(), NoSync: noSync(n)}
		if mod != nil {
			mod(&cfg)
		}
		db, err := store.Open(cfg)
		if err != nil {
			tb.Fatalf("open %s: %v", n, err)
		}
		dbs = append(dbs, db)
	}
	return dbs
}

func closeAll(tb testing.TB, dbs []*store.DB) {
	tb.Helper()
	for _, db := range dbs {
		if err := db.Close(); err != nil {
			tb.Fatal(err)
		}
	}
}

// seed creates kek.json and the stores of dir with n records per bucket.
func seed(tb testing.TB, dir string, n int) {
	tb.Helper()
	if _, err := crypto.LoadOrCreateLocalKEK(filepath.Join(dir, "kek.json")); err != nil {
		tb.Fatal(err)
	}
	dbs := openStores(tb, dir, nil)
	for i, db := range dbs {
		err := db.Update(func(tx *store.Tx) error {
			for _, b := range recordBuckets {
				for _, k := range recordKeys(n) {
					if err := tx.Put(b, k, []byte(recordValue(storeNames[i], b, k))); err != nil {
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
	closeAll(tb, dbs)
}

// verify reopens dir's stores from disk and checks every record; it returns how many it read.
func verify(tb testing.TB, dir string, n int) int {
	tb.Helper()
	dbs := openStores(tb, dir, nil)
	defer closeAll(tb, dbs)
	checked := 0
	for i, db := range dbs {
		if err := db.Check(); err != nil {
			tb.Fatalf("%s: Check: %v", storeNames[i], err)
		}
		for _, b := range recordBuckets {
			for _, k := range recordKeys(n) {
				got, err := db.Get(b, k)
				if err != nil || string(got) != recordValue(storeNames[i], b, k) {
					tb.Fatalf("%s: %s/%s lost: %q, %v", storeNames[i], b, k, got, err)
				}
				checked++
			}
		}
	}
	return checked
}

func newManager(tb testing.TB, dir string, dbs []*store.DB) *Manager {
	tb.Helper()
	var stores []NamedStore
	for i, db := range dbs {
		stores = append(stores, NamedStore{Name: storeNames[i], Store: db})
	}
	m, err := New(Config{Stores: stores, KEK: crypto.LocalKEKFile{Path: filepath.Join(dir, "kek.json")}, Provider: "local", Logger: discard()})
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// runManager runs m until the test ends.
func runManager(tb testing.TB, m *Manager) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	tb.Cleanup(func() { cancel(); <-done })
}

func waitIdle(tb testing.TB, m *Manager) Status {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if st := m.Status(); !st.Running && !st.Finished.IsZero() {
			return st
		}
		time.Sleep(5 * time.Millisecond)
	}
	tb.Fatal("rotation did not finish")
	return Status{}
}

func TestManager_rotatesBothKeysOfEveryStore(t *testing.T) {
	dir := t.TempDir()
	const n = 50
	seed(t, dir, n)
	dbs := openStores(t, dir, func(c *store.Config) { c.ResealBatch = 16 })
	m := newManager(t, dir, dbs)
	before := m.Status()
	runManager(t, m)
	if err := m.Start(Kinds{DEK: true, KEK: true}); err != nil {
		t.Fatal(err)
	}
	st := waitIdle(t, m)
	if st.LastError != "" || st.KEKKeys != 1 || st.Resumed || st.Kinds != (Kinds{DEK: true, KEK: true}) {
		t.Fatalf("status: %+v", st)
	}
	for i, ss := range st.Stores {
		old := before.Stores[i]
		if ss.Stale != 0 || len(ss.KeyIDs) != 1 || ss.PrimaryKeyID == old.PrimaryKeyID || ss.WrappedBy == old.WrappedBy || ss.ResealPending {
			t.Fatalf("store %s: before %+v after %+v", ss.Name, old, ss)
		}
	}
	closeAll(t, dbs)
	if got := verify(t, dir, n); got != len(storeNames)*len(recordBuckets)*n {
		t.Fatalf("verified %d records", got)
	}
}

func TestManager_Start_errors(t *testing.T) {
	dir := t.TempDir()
	seed(t, dir, 1)
	dbs := openStores(t, dir, nil)
	t.Cleanup(func() { closeAll(t, dbs) })
	m := newManager(t, dir, dbs)
	if err := m.Start(Kinds{}); !errors.Is(err, ErrNothingToRotate) {
		t.Fatalf("Start(none) = %v", err)
	}
	if err := m.Start(Kinds{DEK: true}); err != nil {
		t.Fatal(err)
	}
	// Run is not running yet: the first request waits, the second is refused.
	if err := m.Start(Kinds{KEK: true}); !errors.Is(err, ErrBusy) {
		t.Fatalf("second Start = %v, want ErrBusy", err)
	}
	if st := m.Status(); !st.Running || st.Kinds != (Kinds{DEK: true}) {
		t.Fatalf("status while queued: %+v", st)
	}
	runManager(t, m)
	if st := waitIdle(t, m); st.LastError != "" {
		t.Fatalf("status: %+v", st)
	}
}

// TestManager_Run_resumesAnUnfinishedRotation: a store left with a new DEK and records under
// the old one, and a KEK file left with two keys, are finished when Run starts.
func TestManager_Run_resumesAnUnfinishedRotation(t *testing.T) {
	dir := t.TempDir()
	const n = 20
	seed(t, dir, n)
	dbs := openStores(t, dir, nil)
	kek, err := crypto.LocalKEKFile{Path: filepath.Join(dir, "kek.json")}.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if err := dbs[0].RewrapKeyset(kek); err != nil { // store 1 is left under the old KEK key
		t.Fatal(err)
	}
	if err := dbs[1].RotateDEK(); err != nil {
		t.Fatal(err)
	}
	closeAll(t, dbs)

	dbs = openStores(t, dir, nil)
	m := newManager(t, dir, dbs)
	runManager(t, m)
	st := waitIdle(t, m)
	if !st.Resumed || st.LastError != "" || st.KEKKeys != 1 || st.Kinds != (Kinds{DEK: true, KEK: true}) {
		t.Fatalf("status: %+v", st)
	}
	for _, ss := range st.Stores {
		if len(ss.KeyIDs) != 1 || ss.Stale != 0 {
			t.Fatalf("store %s: %+v", ss.Name, ss)
		}
	}
	closeAll(t, dbs)
	verify(t, dir, n)
}

// TestManager_failedStepIsReportedAndContinued: a commit failing in the middle of a re-seal
// leaves LastError set and every record readable; the next start of the daemon finishes the
// rotation.
func TestManager_failedStepIsReportedAndContinued(t *testing.T) {
	dir := t.TempDir()
	const n = 30
	seed(t, dir, n)
	var commits, failAt atomic.Int64
	dbs := openStores(t, dir, func(c *store.Config) {
		c.ResealBatch = 8
		c.FailCommit = func() error {
			if commits.Add(1) == failAt.Load() {
				return errors.New("injected fsync failure")
			}
			return nil
		}
	})
	m := newManager(t, dir, dbs)
	runManager(t, m)
	// Both RotateDEK commits and two re-seal batches of the first store pass.
	failAt.Store(commits.Load() + 5)
	if err := m.Start(Kinds{DEK: true}); err != nil {
		t.Fatal(err)
	}
	st := waitIdle(t, m)
	if !strings.Contains(st.LastError, "injected fsync failure") {
		t.Fatalf("a failed commit was not reported: %+v", st)
	}
	for _, ss := range st.Stores {
		if len(ss.KeyIDs) != 2 || !ss.ResealPending {
			t.Fatalf("store %s after the failure: %+v", ss.Name, ss)
		}
	}
	closeAll(t, dbs)
	verify(t, dir, n)

	dbs = openStores(t, dir, nil)
	m = newManager(t, dir, dbs)
	runManager(t, m)
	st = waitIdle(t, m)
	if !st.Resumed || st.LastError != "" || st.Kinds != (Kinds{DEK: true}) {
		t.Fatalf("status: %+v", st)
	}
	for _, ss := range st.Stores {
		if len(ss.KeyIDs) != 1 || ss.Stale != 0 {
			t.Fatalf("store %s: %+v", ss.Name, ss)
		}
	}
	closeAll(t, dbs)
	verify(t, dir, n)
}

func TestNew_requires(t *testing.T) {
	for _, cfg := range []Config{
		{KEK: Rewrap{}, Logger: discard()},
		{Stores: []NamedStore{{Name: "s", Store: nil}}, KEK: Rewrap{}, Logger: discard()},
		{Stores: []NamedStore{{Name: "s", Store: &store.DB{}}}, Logger: discard()},
		{Stores: []NamedStore{{Name: "s", Store: &store.DB{}}}, KEK: Rewrap{}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}
