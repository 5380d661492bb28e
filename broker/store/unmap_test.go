package store

import (
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A file whose freelist page is damaged makes bbolt panic after it mapped the file (found
// by FuzzOpen). Open recovers and answers ErrUnreadable; it must also release the file, or
// the next Open of the same path in this process (the store reopens its file after a failed
// commit) waits for a lock nobody will release and reports another daemon.
func TestOpen_damagedFreelistReleasesTheFile(t *testing.T) {
	dir := t.TempDir()
	kek := testKEK(t, dir)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	path := filepath.Join(dir, "s.db")
	db, err := Open(Config{Path: path, KEK: kek, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, db, "b", "k", "v")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Each meta page (0 and 1, 4 KiB) names the freelist page at offset 16 (page header)
	// + 32 (magic, version, page size, flags, root bucket); a page's flags are at offset 8.
	const pageSize, freelistAt, flagsAt = 4096, 16 + 32, 8
	for meta := range 2 {
		fl := binary.LittleEndian.Uint64(data[meta*pageSize+freelistAt:])
		if off := int(fl) * pageSize; off+flagsAt+2 <= len(data) {
			binary.LittleEndian.PutUint16(data[off+flagsAt:], 0) // page type unknown
		}
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		_, err := Open(Config{Path: path, KEK: kek, Logger: logger, LockTimeout: 200 * time.Millisecond})
		if !errors.Is(err, ErrUnreadable) {
			t.Fatalf("open %d: %v, want ErrUnreadable (ErrLocked: the failed open kept the file)", i, err)
		}
	}
}
