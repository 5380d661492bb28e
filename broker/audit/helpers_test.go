package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"

	"github.com/keywarden/keywarden/internal/testlog"
)

func openDB(tb testing.TB) *store.DB { return openDBWith(tb, nil) }

// openDBWith opens a store in a temp dir whose commits first ask failCommit (nil: never fail).
func openDBWith(tb testing.TB, failCommit func() error) *store.DB {
	tb.Helper()
	dir := tb.TempDir()
	kek, err := crypto.LoadOrCreateLocalKEK(filepath.Join(dir, "kek.json"))
	if err != nil {
		tb.Fatal(err)
	}
	db, err := store.Open(store.Config{Path: filepath.Join(dir, "state.db"), KEK: kek, Logger: slog.New(slog.DiscardHandler), FailCommit: failCommit})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = db.Close() })
	return db
}

func newLog(tb testing.TB, db *store.DB, mutate ...func(*Config)) (*Log, *testlog.Buffer) {
	tb.Helper()
	logs := &testlog.Buffer{}
	cfg := Config{DB: db, Logger: slog.New(slog.NewJSONHandler(logs, nil))}
	for _, m := range mutate {
		m(&cfg)
	}
	l, err := Open(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return l, logs
}

func event(i int) Event {
	return Event{
		Time: time.Date(2030, 1, 2, 3, 4, 5, i, time.UTC), Kind: KindDecision, Outcome: OutcomeAllow,
		Namespace: "demo", ServiceAccount: "app", Secret: fmt.Sprintf("db-%d", i), Grant: "demo-app",
	}
}

// record writes n events and flushes them.
func record(tb testing.TB, l *Log, n int) {
	tb.Helper()
	for i := range n {
		l.Record(context.Background(), event(i))
	}
	if err := l.Flush(); err != nil {
		tb.Fatal(err)
	}
}

// rawEntry reads and decodes one stored entry.
func rawEntry(tb testing.TB, db *store.DB, seq uint64) Entry {
	tb.Helper()
	raw, err := db.Get(Bucket, entryKey(seq))
	if err != nil {
		tb.Fatalf("entry %d: %v", seq, err)
	}
	var e Entry
	if err := json.Unmarshal(raw, &e); err != nil {
		tb.Fatal(err)
	}
	return e
}

func putEntry(tb testing.TB, db *store.DB, key uint64, e Entry) {
	tb.Helper()
	raw, err := json.Marshal(e)
	if err != nil {
		tb.Fatal(err)
	}
	if err := db.Put(Bucket, entryKey(key), raw); err != nil {
		tb.Fatal(err)
	}
}

// failingDB is a store whose commits fail while fail is set.
type failingDB struct {
	*store.DB
	mu   sync.Mutex
	fail bool
	n    int
}

func newFailingDB(tb testing.TB) *failingDB {
	f := &failingDB{}
	f.DB = openDBWith(tb, f.commit)
	return f
}

func (f *failingDB) commit() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if f.fail {
		return fmt.Errorf("disk full")
	}
	return nil
}

func (f *failingDB) set(v bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = v
}

func (f *failingDB) updates() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
