package store

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/keywarden/keywarden/crypto"

	"github.com/keywarden/keywarden/internal/testlog"
)

func testKEK(tb testing.TB, dir string) tink.AEAD {
	tb.Helper()
	kek, err := crypto.LoadOrCreateLocalKEK(filepath.Join(dir, "kek.json"))
	if err != nil {
		tb.Fatalf("kek: %v", err)
	}
	return kek
}

// testConfig returns a Config for a store in a fresh temp dir and the buffer
// its logger writes to.
func testConfig(tb testing.TB) (Config, *testlog.Buffer) {
	tb.Helper()
	dir := tb.TempDir()
	logs := &testlog.Buffer{}
	return Config{
		Path:   filepath.Join(dir, "data", "store.db"),
		KEK:    testKEK(tb, dir),
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}, logs
}

func mustOpen(tb testing.TB, cfg Config) *DB {
	tb.Helper()
	db, err := Open(cfg)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { _ = db.Close() })
	return db
}

func mustPut(tb testing.TB, db *DB, bucket, key, value string) {
	tb.Helper()
	if err := db.Put(bucket, key, []byte(value)); err != nil {
		tb.Fatalf("Put(%s/%s): %v", bucket, key, err)
	}
}

// downKEK wraps a KEK and, while down is set, fails every call with
// crypto.ErrKEKUnavailable, like Vault Transit during an outage.
type downKEK struct {
	tink.AEAD
	down atomic.Bool
}

func (k *downKEK) Encrypt(pt, ad []byte) ([]byte, error) {
	if k.down.Load() {
		return nil, fmt.Errorf("fake transit: %w: vault unreachable", crypto.ErrKEKUnavailable)
	}
	return k.AEAD.Encrypt(pt, ad)
}

func (k *downKEK) Decrypt(ct, ad []byte) ([]byte, error) {
	if k.down.Load() {
		return nil, fmt.Errorf("fake transit: %w: vault unreachable", crypto.ErrKEKUnavailable)
	}
	return k.AEAD.Decrypt(ct, ad)
}
