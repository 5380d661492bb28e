package revoke

import (
	"errors"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"
)

func openStore(t *testing.T, dir string) *store.DB {
	t.Helper()
	kek, err := crypto.LoadOrCreateLocalKEK(filepath.Join(dir, "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(store.Config{Path: filepath.Join(dir, "state.db"), KEK: kek, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func newStoredManager(t *testing.T, db *store.DB, names ...string) (*Manager, *applied, error) {
	t.Helper()
	b := &fakeBroker{names: names, changed: make(chan struct{})}
	a := &applied{}
	m, err := New(Config{Broker: b, Purger: &fakePurger{}, Apply: a.apply, Logger: slog.New(slog.DiscardHandler), DB: db})
	return m, a, err
}

func TestManager_New_restoresStoredRevocations(t *testing.T) {
	dir := t.TempDir()
	db := openStore(t, dir)
	m, _, err := newStoredManager(t, db, "db", "api")
	if err != nil {
		t.Fatal(err)
	}
	secret, _, err := m.Revoke(Target{Secret: "db"})
	if err != nil {
		t.Fatal(err)
	}
	workload, _, err := m.Revoke(Target{Namespace: "demo", ServiceAccount: "app"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Revoke(Target{SPIFFEID: "spiffe://cluster.local/ns/x/sa/y"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Lift(Target{SPIFFEID: "spiffe://cluster.local/ns/x/sa/y"}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	// A restart: a new store handle and a new Manager.
	db = openStore(t, dir)
	defer db.Close()
	m2, a, err := newStoredManager(t, db, "db", "api")
	if err != nil {
		t.Fatal(err)
	}
	if got := m2.Names(); len(got) != 2 || got[0] != workload || got[1] != secret {
		t.Fatalf("restored revocations %v, want [%s %s] (the lifted one gone)", got, workload, secret)
	}
	if a.get() == nil {
		t.Fatal("restored revocations were not applied by New")
	}
	if d := a.get().Evaluate(req("any", "one", "db")); d.Allowed || d.Grant != secret {
		t.Errorf("secret revocation after restart: %+v", d)
	}
	if d := a.get().Evaluate(req("demo", "app", "api")); d.Allowed || d.Grant != workload {
		t.Errorf("workload revocation after restart: %+v", d)
	}
	if d := a.get().Evaluate(req("x", "y", "api")); d.Grant != "" {
		t.Errorf("lifted revocation came back: %+v", d)
	}
	if _, err := m2.Lift(Target{Secret: "db"}); err != nil {
		t.Fatal(err)
	}
	if recs, err := db.List(storeBucket); err != nil || len(recs) != 1 || recs[0].Key != workload {
		t.Fatalf("stored after lift: %v %v", recs, err)
	}
}

func TestManager_New_badStoredRevocationFails(t *testing.T) {
	for name, rec := range map[string]struct{ key, value string }{
		"not json":       {"revoked.secret.db", "{"},
		"invalid target": {"revoked.secret.db", `{"secret":"../etc"}`},
		"empty target":   {"revoked.secret.db", `{}`},
		"key mismatch":   {"revoked.secret.other", `{"secret":"db"}`},
	} {
		t.Run(name, func(t *testing.T) {
			db := openStore(t, t.TempDir())
			defer db.Close()
			if err := db.Put(storeBucket, rec.key, []byte(rec.value)); err != nil {
				t.Fatal(err)
			}
			if _, _, err := newStoredManager(t, db, "db"); !errors.Is(err, store.ErrCorrupt) {
				t.Fatalf("New = %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestManager_Revoke_notInForceWhenNotStored(t *testing.T) {
	db := openStore(t, t.TempDir())
	m, a, err := newStoredManager(t, db, "db")
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Close() // every write fails from here on
	if _, _, err := m.Revoke(Target{Secret: "db"}); err == nil {
		t.Fatal("Revoke succeeded without saving")
	}
	if len(m.Names()) != 0 || a.get() != nil {
		t.Fatalf("unsaved revocation in force: %v", m.Names())
	}
}

func TestManager_Revoke_refusedByBrokerIsNotStored(t *testing.T) {
	db := openStore(t, t.TempDir())
	defer db.Close()
	b := &fakeBroker{names: []string{"db"}, changed: make(chan struct{})}
	m, err := New(Config{Broker: b, Purger: &fakePurger{}, Logger: slog.New(slog.DiscardHandler), DB: db,
		Apply: func(*grant.Set) error { return errors.New("refused") }})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Revoke(Target{Secret: "db"}); err == nil {
		t.Fatal("Revoke succeeded though the broker refused it")
	}
	if recs, err := db.List(storeBucket); err != nil || len(recs) != 0 {
		t.Fatalf("refused revocation stored: %v %v", recs, err)
	}
}
