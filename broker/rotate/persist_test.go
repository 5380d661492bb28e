package rotate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"
	"github.com/keywarden/keywarden/internal/testlog"
)

// tableSource answers from a table of secrets per path; down makes every fetch fail like an
// unreachable Vault.
type tableSource struct {
	mu      sync.Mutex
	secrets map[string]*source.Secret
	down    bool
	fetches atomic.Int64
}

func (s *tableSource) Fetch(_ context.Context, path string) (*source.Secret, error) {
	s.fetches.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down {
		return nil, fmt.Errorf("%w: dial tcp: connection refused", source.ErrUnavailable)
	}
	sec, ok := s.secrets[path]
	if !ok {
		return nil, source.ErrNotFound
	}
	return sec.Clone(), nil
}

func (s *tableSource) set(path string, sec *source.Secret) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.secrets == nil {
		s.secrets = map[string]*source.Secret{}
	}
	s.secrets[path] = sec
}

func (s *tableSource) setDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
}

// node is one data directory: a store file and its KEK, opened again for every "run".
type node struct {
	dir  string
	logs *testlog.Buffer
}

func newNode(t *testing.T) *node { return &node{dir: t.TempDir(), logs: &testlog.Buffer{}} }

func (n *node) path() string { return filepath.Join(n.dir, "node.db") }

func (n *node) open(t *testing.T) *store.DB {
	t.Helper()
	kek, err := crypto.LoadOrCreateLocalKEK(filepath.Join(n.dir, "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(store.Config{Path: n.path(), KEK: kek, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// run starts an engine over the store with src as source "vault" (polled, like Vault).
func (n *node) run(t *testing.T, db *store.DB, src source.Source, clk *clocktesting.FakeClock, tweak func(*Config)) *Engine {
	t.Helper()
	cfg := Config{Sources: map[string]source.Source{"vault": src}, Clock: clk, PollInterval: time.Minute, Store: db,
		Logger: slog.New(slog.NewJSONHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if tweak != nil {
		tweak(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

var (
	leased = source.Ref{Source: "vault", Path: "database/creds/app"}
	kv     = source.Ref{Source: "vault", Path: "secret/data/app/api"}
)

const (
	leasedPassword = "pw-Zq81-leased-plaintext"
	kvToken        = "tok-Xr55-kv-plaintext"
)

func seeded(now time.Time) *tableSource {
	src := &tableSource{}
	src.set(leased.Path, &source.Secret{Data: map[string]source.Value{"username": source.Value("v-app-1"), "password": source.Value(leasedPassword)},
		Version: "lease-1", ExpiresAt: now.Add(30 * time.Second), RenewAfter: now.Add(20 * time.Second), LeaseID: "database/creds/app/abc"})
	src.set(kv.Path, &source.Secret{Data: map[string]source.Value{"token": source.Value(kvToken)}, Version: "3"})
	return src
}

func mustGet(t *testing.T, e *Engine, ref source.Ref) *source.Secret {
	t.Helper()
	s, err := e.Get(context.Background(), ref)
	if err != nil {
		t.Fatalf("Get(%s): %v", ref, err)
	}
	return s
}

func persistedKeys(t *testing.T, db *store.DB) []string {
	t.Helper()
	keys, err := store.NewBucket[valueRecord](db, ValuesBucket).Keys()
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestEngine_persist_roundTripSealed(t *testing.T) {
	n := newNode(t)
	now := time.Now()
	clk := clocktesting.NewFakeClock(now)
	db := n.open(t)
	src := seeded(now)
	e := n.run(t, db, src, clk, nil)
	mustGet(t, e, leased)
	mustGet(t, e, kv)
	// Hits do not write: the store holds two records whatever the number of reads.
	for range 20 {
		mustGet(t, e, kv)
	}
	e.Close()
	if got := persistedKeys(t, db); len(got) != 2 {
		t.Fatalf("%d persisted values, want 2", len(got))
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(n.path())
	if err != nil {
		t.Fatal(err)
	}
	for _, plain := range []string{leasedPassword, kvToken, "v-app-1"} {
		if bytes.Contains(raw, []byte(plain)) {
			t.Errorf("node.db holds %q in plaintext", plain)
		}
	}

	// A restart with the source down: both values are served from the store, without a fetch.
	clk.Step(5 * time.Second)
	db = n.open(t)
	src.setDown(true)
	src.fetches.Store(0)
	e = n.run(t, db, src, clk, nil)
	defer e.Close()
	l := mustGet(t, e, leased)
	k := mustGet(t, e, kv)
	if string(l.Data["password"]) != leasedPassword || l.Version != "lease-1" || l.LeaseID != "database/creds/app/abc" ||
		!l.ExpiresAt.Equal(now.Add(30*time.Second)) || !l.RenewAfter.Equal(now.Add(20*time.Second)) {
		t.Errorf("restored lease: version %q lease %q expires %v renew %v", l.Version, l.LeaseID, l.ExpiresAt, l.RenewAfter)
	}
	if string(k.Data["token"]) != kvToken || k.Version != "3" || !k.ExpiresAt.IsZero() {
		t.Errorf("restored kv: version %q expires %v", k.Version, k.ExpiresAt)
	}
	if n := src.fetches.Load(); n != 0 {
		t.Errorf("%d fetches to serve restored values, want 0", n)
	}
	if !strings.Contains(n.logs.String(), `"restored":2`) {
		t.Errorf("restart did not log the restored values: %s", n.logs)
	}
	for _, plain := range []string{leasedPassword, kvToken} {
		if strings.Contains(n.logs.String(), plain) {
			t.Errorf("a log line holds %q", plain)
		}
	}
}

func TestEngine_persist_expiredAtLoadNotServed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		down  time.Duration // how long the daemon was down
		ref   source.Ref
		serve bool
	}{
		{"lease still valid", 25 * time.Second, leased, true},
		{"lease expired while down", 30 * time.Second, leased, false},
		{"kv within the staleness bound", 59 * time.Second, kv, true},
		{"kv past the staleness bound", time.Minute, kv, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			now := time.Now()
			clk := clocktesting.NewFakeClock(now)
			db := n.open(t)
			src := seeded(now)
			staleness := func(c *Config) { c.MaxStale = time.Minute }
			e := n.run(t, db, src, clk, staleness)
			mustGet(t, e, tc.ref)
			e.Close()

			clk.Step(tc.down)
			src.setDown(true)
			e = n.run(t, db, src, clk, staleness)
			defer e.Close()
			s, err := e.Get(context.Background(), tc.ref)
			if tc.serve {
				if err != nil {
					t.Fatalf("Get: %v, want the restored value", err)
				}
				if len(persistedKeys(t, db)) != 1 {
					t.Error("the restored value is no longer in the store")
				}
				return
			}
			if err == nil {
				t.Fatalf("a value that ran out while the daemon was down was served (version %s)", s.Version)
			}
			if !errors.Is(err, source.ErrUnavailable) {
				t.Errorf("Get: %v, want unavailable", err)
			}
			if keys := persistedKeys(t, db); len(keys) != 0 {
				t.Errorf("the value that ran out is still in the store: %v", keys)
			}
			if !strings.Contains(n.logs.String(), `"expired":1`) {
				t.Errorf("the dropped value was not logged: %s", n.logs)
			}
		})
	}
}

func TestEngine_persist_warmServedUntilExpiryThenUnavailable(t *testing.T) {
	n := newNode(t)
	now := time.Now()
	clk := clocktesting.NewFakeClock(now)
	db := n.open(t)
	src := seeded(now)
	e := n.run(t, db, src, clk, func(c *Config) { c.MaxStale = time.Minute })
	mustGet(t, e, leased)
	mustGet(t, e, kv)
	e.Close()

	src.setDown(true)
	e = n.run(t, db, src, clk, func(c *Config) { c.MaxStale = time.Minute })
	defer e.Close()
	sub := e.Subscribe(leased) // a volume
	defer sub.Close()
	// Restored entries are refreshed at the first tick; the refresh fails and they stay.
	for _, ref := range e.due() {
		_ = e.Refresh(context.Background(), ref)
	}
	if s := mustGet(t, e, leased); string(s.Data["password"]) != leasedPassword {
		t.Fatal("restored lease not served after a failed refresh")
	}
	clk.Step(30 * time.Second) // the lease's expiry
	e.due()
	select {
	case <-sub.C():
	default:
		t.Error("subscribers were not told that the value ran out")
	}
	_, err := e.Get(context.Background(), leased)
	if !errors.Is(err, ErrExpired) || !errors.Is(err, source.ErrUnavailable) {
		t.Fatalf("Get after expiry: %v, want ErrExpired", err)
	}
	if strings.Contains(err.Error(), leasedPassword) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("error text: %q", err)
	}
	if s, err := e.Get(context.Background(), kv); err != nil || string(s.Data["token"]) != kvToken {
		t.Fatalf("kv within its staleness bound: %v", err)
	}
	clk.Step(30 * time.Second) // a minute unconfirmed
	e.due()
	if _, err := e.Get(context.Background(), kv); !errors.Is(err, ErrExpired) {
		t.Fatalf("kv past its staleness bound: %v, want ErrExpired", err)
	}
	e.persist.flush()
	if keys := persistedKeys(t, db); len(keys) != 0 {
		t.Errorf("values that ran out are still in the store: %v", keys)
	}

	// The source is back: the next fetch serves the new value, and it is persisted again.
	src.setDown(false)
	src.set(leased.Path, &source.Secret{Data: map[string]source.Value{"password": source.Value("pw-new")}, Version: "lease-2",
		ExpiresAt: clk.Now().Add(time.Minute)})
	if s := mustGet(t, e, leased); s.Version != "lease-2" {
		t.Fatalf("after recovery: version %s", s.Version)
	}
	e.persist.flush()
	if keys := persistedKeys(t, db); len(keys) != 1 {
		t.Errorf("%d values persisted after recovery, want 1", len(keys))
	}
}

func TestEngine_persist_dropDeletesBeforeReturning(t *testing.T) {
	n := newNode(t)
	now := time.Now()
	clk := clocktesting.NewFakeClock(now)
	db := n.open(t)
	src := seeded(now)
	e := n.run(t, db, src, clk, nil)
	mustGet(t, e, leased)
	mustGet(t, e, kv)
	e.persist.flush()
	if !e.Drop(kv) {
		t.Fatal("Drop found nothing cached")
	}
	// No Close: a kill -9 right after the revocation must not bring the value back.
	if keys := persistedKeys(t, db); len(keys) != 1 || keys[0] != valueKey(leased) {
		t.Fatalf("after Drop the store holds %v, want only the lease", keys)
	}
	src.setDown(true)
	e2 := n.run(t, db, src, clk, nil)
	defer e2.Close()
	if _, err := e2.Get(context.Background(), kv); err == nil {
		t.Fatal("a dropped value came back after a restart")
	}
	mustGet(t, e2, leased)
}

func TestEngine_persist_evictionAndPurgeDelete(t *testing.T) {
	n := newNode(t)
	now := time.Now()
	clk := clocktesting.NewFakeClock(now)
	db := n.open(t)
	src := seeded(now)
	e := n.run(t, db, src, clk, func(c *Config) { c.IdleTTL = time.Minute })
	defer e.Close()
	mustGet(t, e, leased)
	mustGet(t, e, kv)
	// Deleted in the source: purged, and gone from the store.
	src.set(kv.Path, nil)
	src.mu.Lock()
	delete(src.secrets, kv.Path)
	src.mu.Unlock()
	if err := e.Refresh(context.Background(), kv); !errors.Is(err, source.ErrNotFound) {
		t.Fatalf("refresh of a deleted secret: %v", err)
	}
	e.persist.flush()
	if keys := persistedKeys(t, db); len(keys) != 1 || keys[0] != valueKey(leased) {
		t.Fatalf("after the purge the store holds %v, want only the lease", keys)
	}
	// Unused for longer than IdleTTL: evicted, and gone from the store.
	clk.Step(61 * time.Second)
	e.due()
	e.persist.flush()
	if keys := persistedKeys(t, db); len(keys) != 0 {
		t.Fatalf("after eviction the store holds %v", keys)
	}
}

func TestEngine_persist_writesOnChangeOnly(t *testing.T) {
	n := newNode(t)
	now := time.Now()
	clk := clocktesting.NewFakeClock(now)
	db := n.open(t)
	src := seeded(now)
	e := n.run(t, db, src, clk, func(c *Config) { c.MaxStale = 80 * time.Second }) // confirmations every 10 s
	defer e.Close()
	mustGet(t, e, kv)
	writes := func() uint64 { return e.persist.puts.Load() }
	if writes() != 1 {
		t.Fatalf("%d writes for the first value, want 1", writes())
	}
	// Hits, and polls that find the same version within the confirmation interval, write
	// nothing.
	for range 5 {
		clk.Step(time.Second)
		mustGet(t, e, kv)
		if err := e.Refresh(context.Background(), kv); err != nil {
			t.Fatal(err)
		}
	}
	if writes() != 1 {
		t.Errorf("%d writes after unchanged polls within the confirmation interval, want 1", writes())
	}
	clk.Step(6 * time.Second) // 11 s since the recorded confirmation
	if err := e.Refresh(context.Background(), kv); err != nil {
		t.Fatal(err)
	}
	if writes() != 2 {
		t.Errorf("%d writes after the confirmation interval, want 2", writes())
	}
	src.set(kv.Path, &source.Secret{Data: map[string]source.Value{"token": source.Value("t2")}, Version: "4"})
	if err := e.Refresh(context.Background(), kv); err != nil {
		t.Fatal(err)
	}
	if writes() != 3 {
		t.Errorf("%d writes after a new version, want 3", writes())
	}
	// A renewal (same version, later expiry) is written: a restart must know the new expiry.
	mustGet(t, e, leased)
	before := writes()
	src.set(leased.Path, &source.Secret{Data: map[string]source.Value{"password": source.Value(leasedPassword)}, Version: "lease-1",
		ExpiresAt: clk.Now().Add(time.Minute)})
	if err := e.Refresh(context.Background(), leased); err != nil {
		t.Fatal(err)
	}
	if writes() != before+1 {
		t.Errorf("%d writes for a renewal, want 1", writes()-before)
	}
}

func TestEngine_persist_corruptRecordSkipped(t *testing.T) {
	n := newNode(t)
	now := time.Now()
	clk := clocktesting.NewFakeClock(now)
	db := n.open(t)
	src := seeded(now)
	e := n.run(t, db, src, clk, nil)
	mustGet(t, e, leased)
	mustGet(t, e, kv)
	e.Close()
	// A record that authenticates but does not decode, and one recorded under another
	// reference's key (a value the store sealed for that key, so only the check of the
	// reference catches it).
	other := recordOf(source.Ref{Source: "vault", Path: "secret/data/other"}, &source.Secret{Data: map[string]source.Value{"k": source.Value("x")}, Version: "1"}, now)
	if err := db.Put(ValuesBucket, "0000notjson", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if err := store.NewBucket[valueRecord](db, ValuesBucket).Put("1111wrongkey", *other); err != nil {
		t.Fatal(err)
	}
	// A bit flipped on disk in the lease's record: it no longer authenticates.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	flipAfter(t, n.path(), valueKey(leased))
	db = n.open(t)

	src.setDown(true)
	e = n.run(t, db, src, clk, nil) // never fatal
	defer e.Close()
	if _, err := e.Get(context.Background(), leased); err == nil {
		t.Fatal("a record that does not authenticate was served")
	}
	if s := mustGet(t, e, kv); string(s.Data["token"]) != kvToken {
		t.Fatal("the intact record was not served")
	}
	if _, err := e.Get(context.Background(), source.Ref{Source: "vault", Path: "secret/data/other"}); err == nil {
		t.Fatal("a record under another reference's key was served")
	}
	logs := n.logs.String()
	for _, want := range []string{
		`"msg":"dropping an unreadable persisted value","key":"` + valueKey(leased) + `"`,
		`"msg":"dropping an unreadable persisted value","key":"0000notjson"`,
		`"msg":"dropping a persisted value recorded under another reference's key","key":"1111wrongkey"`,
		`"restored":1`, `"dropped":3`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
	if keys := persistedKeys(t, db); len(keys) != 1 || keys[0] != valueKey(kv) {
		t.Errorf("after the load the store holds %v, want only the intact record", keys)
	}
}

// flipAfter flips one byte of the value stored after key in a closed bbolt file: a leaf page
// keeps a key's bytes right before its value's.
func flipAfter(t *testing.T, path, key string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i := 0; ; {
		j := bytes.Index(raw[i:], []byte(key))
		if j < 0 {
			break
		}
		at := i + j + len(key) + 20 // inside the ciphertext, past Tink's 5-byte prefix
		raw[at] ^= 0x40
		n++
		i = at
	}
	if n == 0 {
		t.Fatalf("key %s not found in %s", key, path)
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestEngine_persist_bounded(t *testing.T) {
	n := newNode(t)
	now := time.Now()
	clk := clocktesting.NewFakeClock(now)
	db := n.open(t)
	src := &tableSource{}
	for i := range 10 {
		src.set(fmt.Sprintf("secret/data/s%d", i), &source.Secret{Data: map[string]source.Value{"v": source.Value(strings.Repeat("x", 100))}, Version: "1"})
	}
	src.set("secret/data/big", &source.Secret{Data: map[string]source.Value{"v": source.Value(strings.Repeat("y", 2000))}, Version: "1"})
	bounds := func(c *Config) { c.MaxPersisted, c.MaxPersistedBytes = 4, 1000 }
	e := n.run(t, db, src, clk, bounds)
	mustGet(t, e, source.Ref{Source: "vault", Path: "secret/data/big"}) // larger than the byte bound alone
	for i := range 10 {
		mustGet(t, e, source.Ref{Source: "vault", Path: fmt.Sprintf("secret/data/s%d", i)})
	}
	e.Close()
	if keys := persistedKeys(t, db); len(keys) != 4 {
		t.Fatalf("%d values persisted, want the bound of 4", len(keys))
	}
	if !strings.Contains(n.logs.String(), "cached secret kept in memory only") {
		t.Error("values beyond the bound were not logged")
	}
	// A restart with lower bounds keeps within them.
	src.setDown(true)
	e = n.run(t, db, src, clk, func(c *Config) { c.MaxPersisted = 2 })
	defer e.Close()
	if keys := persistedKeys(t, db); len(keys) != 2 {
		t.Fatalf("after a restart with a bound of 2, %d values persisted", len(keys))
	}
	served := 0
	for i := range 10 {
		if _, err := e.Get(context.Background(), source.Ref{Source: "vault", Path: fmt.Sprintf("secret/data/s%d", i)}); err == nil {
			served++
		}
	}
	if served != 2 {
		t.Errorf("%d restored values served, want 2", served)
	}
}

func TestEngine_persist_notifyingSourceNotCopied(t *testing.T) {
	n := newNode(t)
	clk := clocktesting.NewFakeClock(time.Now())
	db := n.open(t)
	src := notifyingSource{&fakeSource{version: 1, changes: make(chan string)}}
	e, err := New(Config{Sources: map[string]source.Source{"local": src}, Logger: slog.New(slog.DiscardHandler), Clock: clk, Store: db, MaxStale: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	mustGet(t, e, source.Ref{Source: "local", Path: "p"})
	e.persist.flush()
	if keys := persistedKeys(t, db); len(keys) != 0 {
		t.Errorf("values of the embedded store were copied: %v", keys)
	}
	// Always confirmed by its notifications: the staleness bound does not apply.
	clk.Step(5 * time.Minute)
	e.due()
	mustGet(t, e, source.Ref{Source: "local", Path: "p"})
	if n := src.fetches.Load(); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}
}

// A restored value is refreshed only once a consumer uses it (the source then learns that its
// own restored state is in use); one nobody uses is dropped unrefreshed after UnclaimedTTL, so
// that the source's clean-up of unclaimed state (revoking restored leases) is not undone.
func TestEngine_persist_unclaimedDroppedUnrefreshed(t *testing.T) {
	n := newNode(t)
	now := time.Now()
	clk := clocktesting.NewFakeClock(now)
	db := n.open(t)
	src := seeded(now)
	e := n.run(t, db, src, clk, nil)
	mustGet(t, e, leased)
	mustGet(t, e, kv)
	e.Close()

	src.fetches.Store(0)
	e = n.run(t, db, src, clk, func(c *Config) { c.UnclaimedTTL = 20 * time.Second })
	defer e.Close()
	if due := e.due(); len(due) != 0 {
		t.Fatalf("unclaimed restored values scheduled for refresh: %v", due)
	}
	mustGet(t, e, kv) // claimed
	if due := e.due(); len(due) != 1 || due[0] != kv {
		t.Fatalf("due after the first use: %v, want the used value only", due)
	}
	clk.Step(21 * time.Second) // the lease is still valid (30 s), but nobody claimed it
	e.due()
	e.persist.flush()
	if keys := persistedKeys(t, db); len(keys) != 1 || keys[0] != valueKey(kv) {
		t.Fatalf("after UnclaimedTTL the store holds %v, want only the claimed value", keys)
	}
	if n := src.fetches.Load(); n != 0 {
		t.Errorf("%d fetches, want none (refreshes are the scheduler's, not run here)", n)
	}
	if _, err := e.Get(context.Background(), leased); err != nil {
		t.Fatal(err) // fetched afresh from the source: the restored copy is gone
	}
	if n := src.fetches.Load(); n != 1 {
		t.Errorf("the dropped value was not fetched again: %d fetches", n)
	}
}
