package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"
)

func openStore(t testing.TB, dir string) *store.DB {
	t.Helper()
	kek, err := crypto.LoadOrCreateLocalKEK(filepath.Join(dir, "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(store.Config{Path: filepath.Join(dir, "state.db"), KEK: kek, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func newStore(t testing.TB, db *store.DB) *Store {
	t.Helper()
	s, err := New(Config{DB: db, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStore_Put_versionsAndSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	db := openStore(t, dir)
	s := newStore(t, db)
	ctx := context.Background()
	for i, want := range []string{"1", "2", "3"} {
		v, err := s.Put(ctx, "db", map[string][]byte{"password": []byte("pw" + want)})
		if err != nil || v != want {
			t.Fatalf("put %d: version %q err %v", i, v, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	s = newStore(t, openStore(t, dir))
	got, err := s.Fetch(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != "3" || string(got.Data["password"]) != "pw3" {
		t.Fatalf("after restart: version %s", got.Version)
	}
}

func TestStore_Fetch_missingIsNotFound(t *testing.T) {
	s := newStore(t, openStore(t, t.TempDir()))
	if _, err := s.Fetch(context.Background(), "nope"); !errors.Is(err, source.ErrNotFound) {
		t.Fatalf("got %v, want ErrNotFound", err)
	}
}

func TestStore_Put_plaintextNeverOnDisk(t *testing.T) {
	dir := t.TempDir()
	db := openStore(t, dir)
	s := newStore(t, db)
	const marker = "PLAINTEXT-MARKER-6f1c2b"
	if _, err := s.Put(context.Background(), "db", map[string][]byte{"password": []byte(marker)}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), marker) {
			t.Fatalf("%s contains the secret in plaintext", e.Name())
		}
	}
}

func TestValidatePut_badInput(t *testing.T) {
	big := make([]byte, MaxValueSize+1)
	tests := []struct {
		name    string
		secret  string
		data    map[string][]byte
		wantMsg string
	}{
		{"empty name", "", map[string][]byte{"k": nil}, "name: must not be empty"},
		{"dot dot", "..", map[string][]byte{"k": nil}, `".." is not allowed`},
		{"slash", "a/b", map[string][]byte{"k": nil}, "only letters"},
		{"nul", "a\x00b", map[string][]byte{"k": nil}, "only letters"},
		{"too long", strings.Repeat("a", MaxNameLen+1), map[string][]byte{"k": nil}, "at most 253"},
		{"no keys", "db", nil, "at least one key=value"},
		{"bad key", "db", map[string][]byte{"../k": nil}, "key:"},
		{"huge value", "db", map[string][]byte{"k": big}, "at most 65536"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidatePut(tc.secret, tc.data)
			if !errors.Is(err, ErrInvalidSecret) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("got %v, want ErrInvalidSecret containing %q", err, tc.wantMsg)
			}
		})
	}
}

func TestStore_Put_invalidWritesNothing(t *testing.T) {
	s := newStore(t, openStore(t, t.TempDir()))
	if _, err := s.Put(context.Background(), "a/b", map[string][]byte{"k": []byte("v")}); err == nil {
		t.Fatal("want error")
	}
	names, err := s.Names()
	if err != nil || len(names) != 0 {
		t.Fatalf("names %v err %v", names, err)
	}
}

func TestStore_Changes_notifiesWriters(t *testing.T) {
	s := newStore(t, openStore(t, t.TempDir()))
	ctx, cancel := context.WithCancel(context.Background())
	ch := s.Changes(ctx)
	if _, err := s.Put(context.Background(), "db", map[string][]byte{"k": []byte("v")}); err != nil {
		t.Fatal(err)
	}
	select {
	case name := <-ch:
		if name != "db" {
			t.Fatalf("got %q", name)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no notification")
	}
	cancel()
	for range ch { // closed after cancel
	}
}

func TestStore_PutIfAbsent_keepsExisting(t *testing.T) {
	s := newStore(t, openStore(t, t.TempDir()))
	ctx := context.Background()
	if wrote, err := s.PutIfAbsent(ctx, "db", map[string][]byte{"k": []byte("first")}); !wrote || err != nil {
		t.Fatalf("first: %v %v", wrote, err)
	}
	if wrote, err := s.PutIfAbsent(ctx, "db", map[string][]byte{"k": []byte("second")}); wrote || err != nil {
		t.Fatalf("second: %v %v", wrote, err)
	}
	got, _ := s.Fetch(ctx, "db")
	if string(got.Data["k"]) != "first" {
		t.Fatal("PutIfAbsent replaced an existing secret")
	}
}

func FuzzValidatePut(f *testing.F) {
	for _, s := range []string{"db", "..", "a/b", "", "x\x00"} {
		f.Add(s, "k", []byte("v"))
	}
	f.Fuzz(func(t *testing.T, name, key string, value []byte) {
		err := ValidatePut(name, map[string][]byte{key: value})
		if err == nil && (strings.ContainsAny(name, "/\x00") || name == ".." || strings.ContainsAny(key, "/\x00")) {
			t.Fatalf("accepted %q / %q", name, key)
		}
		// The error may name the secret and the key (they are not secret, and are quoted
		// with %q), never the value: a value that is also part of the name or key, raw or
		// quoted, proves nothing.
		v := string(value)
		inName := func(s string) bool { return strings.Contains(s, v) || strings.Contains(strconv.Quote(s), v) }
		if err != nil && len(value) > 8 && strings.Contains(err.Error(), v) && !inName(name) && !inName(key) {
			t.Fatal("error echoes the value")
		}
	})
}

func TestStore_Delete_versionsNeverRepeat(t *testing.T) {
	s := newStore(t, openStore(t, t.TempDir()))
	ctx := context.Background()
	for _, want := range []string{"1", "2"} {
		if v, _ := s.Put(ctx, "db", map[string][]byte{"k": []byte(want)}); v != want {
			t.Fatalf("version %s, want %s", v, want)
		}
	}
	if err := s.Delete(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fetch(ctx, "db"); !errors.Is(err, source.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if names, _ := s.Names(); len(names) != 0 {
		t.Fatalf("tombstone listed: %v", names)
	}
	v, err := s.Put(ctx, "db", map[string][]byte{"k": []byte("again")})
	if err != nil || v != "4" {
		t.Fatalf("put after delete: version %q (%v), want 4: a reused version would look unchanged to watchers", v, err)
	}
	if err := s.Delete(ctx, "missing"); err != nil {
		t.Fatal(err)
	}
}

func TestStore_Changes_slowReaderLosesNothing(t *testing.T) {
	s := newStore(t, openStore(t, t.TempDir()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := s.Changes(ctx)
	const n = 200 // far more than any buffer
	for i := range n {
		if _, err := s.Put(ctx, fmt.Sprintf("s%d", i), map[string][]byte{"k": []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for len(seen) < n {
		select {
		case name := <-ch:
			seen[name] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d changes delivered", len(seen), n)
		}
	}
}
