package store

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpen feeds arbitrary file contents to Open: it must never panic, and
// must either open a store or fail with ErrUnreadable or ErrCorrupt (the
// cases OpenOrQuarantine handles).
func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	kek := testKEK(f, dir)
	seedPath := filepath.Join(dir, "seed.db")
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	db, err := Open(Config{Path: seedPath, KEK: kek, Logger: logger})
	if err != nil {
		f.Fatal(err)
	}
	mustPut(f, db, "b", "k", "v")
	_ = db.Close()
	seed, err := os.ReadFile(seedPath)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add(seed[:4096])
	f.Add([]byte("garbage"))

	// One file, rewritten for each input: a directory per input (t.TempDir) made mkdir and
	// its cleanup most of an execution's cost.
	path := filepath.Join(dir, "fuzz.db")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		db, err := Open(Config{Path: path, KEK: kek, Logger: logger})
		if err != nil {
			if !errors.Is(err, ErrUnreadable) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrSchemaTooNew) {
				t.Fatalf("Open error %v is neither ErrUnreadable nor ErrCorrupt", err)
			}
			return
		}
		defer db.Close()
		_ = db.Check()
	})
}
