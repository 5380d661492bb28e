package store

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/keywarden/keywarden/crypto"
)

func TestDB_Put_roundTrip(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)

	mustPut(t, db, "secrets", "b", "value-b")
	mustPut(t, db, "secrets", "a", "value-a")
	mustPut(t, db, "secrets", "c/with/slashes", "value-c")
	mustPut(t, db, "volumes", "a", "other bucket")
	if err := db.Put("secrets", "empty", nil); err != nil {
		t.Fatal(err)
	}

	got, err := db.Get("secrets", "a")
	if err != nil || string(got) != "value-a" {
		t.Fatalf("Get = (%q, %v)", got, err)
	}
	got, err = db.Get("secrets", "empty")
	if err != nil || got == nil || len(got) != 0 {
		t.Fatalf("Get(empty) = (%#v, %v), want empty non-nil", got, err)
	}

	recs, err := db.List("secrets")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, r := range recs {
		keys = append(keys, r.Key+"="+string(r.Value))
	}
	if want := "a=value-a,b=value-b,c/with/slashes=value-c,empty="; strings.Join(keys, ",") != want {
		t.Fatalf("List = %v, want %s", keys, want)
	}

	// Overwrite, delete, delete again, missing bucket.
	mustPut(t, db, "secrets", "a", "value-a2")
	if got, _ := db.Get("secrets", "a"); string(got) != "value-a2" {
		t.Fatalf("overwrite: got %q", got)
	}
	for range 2 {
		if err := db.Delete("secrets", "a"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
	}
	if err := db.Delete("nobucket", "a"); err != nil {
		t.Fatalf("Delete in missing bucket: %v", err)
	}
	if _, err := db.Get("secrets", "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get deleted = %v, want ErrNotFound", err)
	}
	if _, err := db.Get("nobucket", "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get missing bucket = %v, want ErrNotFound", err)
	}
	if recs, err := db.List("nobucket"); err != nil || len(recs) != 0 {
		t.Fatalf("List missing bucket = (%v, %v)", recs, err)
	}
	if err := db.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if db.Path() != cfg.Path {
		t.Fatalf("Path = %q", db.Path())
	}
}

func TestDB_Get_returnsCopy(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	mustPut(t, db, "b", "k", "original")
	got, _ := db.Get("b", "k")
	copy(got, "XXXXXXXX")
	recs, _ := db.List("b")
	recs[0].Value[0] = 'Y'
	if again, _ := db.Get("b", "k"); string(again) != "original" {
		t.Fatalf("stored value changed through a returned slice: %q", again)
	}
}

func TestOpen_reopenKeepsData(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	mustPut(t, db, "b", "k", "persisted")
	if err := db.RotateDEK(); err != nil {
		t.Fatal(err)
	}
	mustPut(t, db, "b", "k2", "after rotation")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = mustOpen(t, cfg)
	for k, want := range map[string]string{"k": "persisted", "k2": "after rotation"} {
		if got, err := db.Get("b", k); err != nil || string(got) != want {
			t.Fatalf("after reopen Get(%s) = (%q, %v)", k, got, err)
		}
	}
}

func TestOpen_fileAndDirectoryModes(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	_ = db.Close()
	assertMode(t, filepath.Dir(cfg.Path), 0o700)
	assertMode(t, cfg.Path, 0o600)

	// An existing file with a looser mode is tightened.
	if err := os.Chmod(cfg.Path, 0o644); err != nil {
		t.Fatal(err)
	}
	db = mustOpen(t, cfg)
	_ = db.Close()
	assertMode(t, cfg.Path, 0o600)
}

func assertMode(tb testing.TB, path string, want fs.FileMode) {
	tb.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	if fi.Mode().Perm() != want {
		tb.Fatalf("%s mode = %04o, want %04o", path, fi.Mode().Perm(), want)
	}
}

func TestOpen_configValidation(t *testing.T) {
	good, _ := testConfig(t)
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no path", func(c *Config) { c.Path = "" }, "path is required"},
		{"no kek", func(c *Config) { c.KEK = nil }, "kek is required"},
		{"no logger", func(c *Config) { c.Logger = nil }, "logger is required"},
		{"negative timeout", func(c *Config) { c.LockTimeout = -time.Second }, "must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.mutate(&cfg)
			db, err := Open(cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open err = %v, want %q", err, tt.want)
			}
			if db != nil {
				t.Fatal("returned a DB with an error")
			}
		})
	}
}

func TestTx_Put_invalidNames(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	tests := []struct {
		name, bucket, key string
		ok                bool
	}{
		{"empty bucket", "", "k", false},
		{"empty key", "b", "", false},
		{"nul in bucket", "b\x00", "k", false},
		{"nul in key", "b", "k\x00x", false},
		{"slash in bucket", "a/b", "k", false},
		{"reserved bucket", MetaBucket, "dekKeyset", false},
		{"bucket 65 bytes", strings.Repeat("b", 65), "k", false},
		{"key 513 bytes", "b", strings.Repeat("k", 513), false},
		{"bucket 64 bytes", strings.Repeat("b", 64), "k", true},
		{"key 512 bytes", "b", strings.Repeat("k", 512), true},
		{"slash in key", "b", "ns/sa/name", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := []error{db.Put(tt.bucket, tt.key, []byte("v"))}
			_, err := db.Get(tt.bucket, tt.key)
			errs = append(errs, err, db.Delete(tt.bucket, tt.key))
			if tt.key == "k" {
				_, err := db.List(tt.bucket)
				errs = append(errs, err)
			}
			for i, err := range errs {
				if tt.ok && err != nil {
					t.Fatalf("op %d: %v", i, err)
				}
				if !tt.ok && !errors.Is(err, ErrInvalidKey) {
					t.Fatalf("op %d: err = %v, want ErrInvalidKey", i, err)
				}
			}
		})
	}
}

// rawEdit changes the closed store's file directly with bbolt.
func rawEdit(tb testing.TB, path string, fn func(tx *bolt.Tx) error) {
	tb.Helper()
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	defer bdb.Close()
	if err := bdb.Update(fn); err != nil {
		tb.Fatal(err)
	}
}

func TestDB_Get_movedRecordIsCorrupt(t *testing.T) {
	tests := []struct {
		name                   string
		dstBucket, dstKey      string
		wantListErrFromBucket2 bool
	}{
		{"other key", "b", "k2", false},
		{"other bucket", "b2", "k1", true},
		{"ambiguous split", "b", "k1/x", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _ := testConfig(t)
			db := mustOpen(t, cfg)
			mustPut(t, db, "b", "k1", "secret-1")
			mustPut(t, db, "b2", "other", "x")
			_ = db.Close()

			rawEdit(t, cfg.Path, func(tx *bolt.Tx) error {
				v := bytes.Clone(tx.Bucket([]byte("b")).Get([]byte("k1")))
				return tx.Bucket([]byte(tt.dstBucket)).Put([]byte(tt.dstKey), v)
			})

			db = mustOpen(t, cfg)
			got, err := db.Get(tt.dstBucket, tt.dstKey)
			if !errors.Is(err, ErrCorrupt) || got != nil {
				t.Fatalf("Get moved record = (%q, %v), want nil, ErrCorrupt", got, err)
			}
			if !strings.Contains(err.Error(), tt.dstBucket+"/"+tt.dstKey) {
				t.Fatalf("error %q does not name the record", err)
			}
			if recs, err := db.List(tt.dstBucket); !errors.Is(err, ErrCorrupt) || recs != nil {
				t.Fatalf("List = (%v, %v), want ErrCorrupt", recs, err)
			}
			// The original record still reads.
			if got, err := db.Get("b", "k1"); err != nil || string(got) != "secret-1" {
				t.Fatalf("original Get = (%q, %v)", got, err)
			}
		})
	}
}

func TestDB_Get_flippedBitIsCorrupt(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	mustPut(t, db, "b", "k", "v")
	_ = db.Close()

	var ct []byte
	rawEdit(t, cfg.Path, func(tx *bolt.Tx) error {
		ct = bytes.Clone(tx.Bucket([]byte("b")).Get([]byte("k")))
		return nil
	})
	db = mustOpen(t, cfg)
	// Write each flipped ciphertext through the open store's own bbolt
	// handle, without fsync, to keep hundreds of raw edits cheap.
	db.bdb.NoSync = true
	rejected := 0
	for bit := 0; bit < len(ct)*8; bit++ {
		flipped := bytes.Clone(ct)
		flipped[bit/8] ^= 1 << (bit % 8)
		if err := db.bdb.Update(func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("b")).Put([]byte("k"), flipped)
		}); err != nil {
			t.Fatal(err)
		}
		got, err := db.Get("b", "k")
		if !errors.Is(err, ErrCorrupt) || got != nil {
			t.Fatalf("bit %d: Get = (%q, %v), want ErrCorrupt", bit, got, err)
		}
		rejected++
	}
	if rejected != len(ct)*8 || rejected == 0 {
		t.Fatalf("rejected %d of %d", rejected, len(ct)*8)
	}
}

func TestOpen_wrongKEKIsCorrupt(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	mustPut(t, db, "b", "k", "v")
	_ = db.Close()

	other := cfg
	other.KEK = testKEK(t, t.TempDir())
	db2, err := Open(other)
	if !errors.Is(err, ErrCorrupt) || db2 != nil {
		t.Fatalf("Open with wrong KEK = %v, want ErrCorrupt", err)
	}
	if !strings.Contains(err.Error(), "the KEK does not match this store") {
		t.Fatalf("message %q", err)
	}
	// The lock was released: the right KEK still opens it.
	db = mustOpen(t, cfg)
	if got, err := db.Get("b", "k"); err != nil || string(got) != "v" {
		t.Fatalf("Get = (%q, %v)", got, err)
	}
}

func TestOpen_metaProblems(t *testing.T) {
	tests := []struct {
		name string
		edit func(meta *bolt.Bucket) error
		want error
	}{
		{"schema too new", func(m *bolt.Bucket) error { return m.Put([]byte(metaSchemaKey), []byte("2")) }, ErrSchemaTooNew},
		{"schema garbage", func(m *bolt.Bucket) error { return m.Put([]byte(metaSchemaKey), []byte("x")) }, ErrCorrupt},
		{"keyset missing", func(m *bolt.Bucket) error { return m.Delete([]byte(metaKeysetKey)) }, ErrCorrupt},
		{"keyset flipped", func(m *bolt.Bucket) error {
			w := bytes.Clone(m.Get([]byte(metaKeysetKey)))
			w[len(w)/2] ^= 0x10
			return m.Put([]byte(metaKeysetKey), w)
		}, ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _ := testConfig(t)
			db := mustOpen(t, cfg)
			mustPut(t, db, "b", "k", "v")
			_ = db.Close()
			rawEdit(t, cfg.Path, func(tx *bolt.Tx) error { return tt.edit(tx.Bucket([]byte(MetaBucket))) })
			if _, err := Open(cfg); !errors.Is(err, tt.want) {
				t.Fatalf("Open = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestOpen_bucketsWithoutMetaIsCorrupt(t *testing.T) {
	cfg, _ := testConfig(t)
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
		t.Fatal(err)
	}
	rawEdit(t, cfg.Path, func(tx *bolt.Tx) error {
		_, err := tx.CreateBucket([]byte("foreign"))
		return err
	})
	if _, err := Open(cfg); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open = %v, want ErrCorrupt", err)
	}
}

// unreadableFiles returns damaged store files, built from a real store at
// cfg.Path.
func unreadableFiles(tb testing.TB, cfg Config) map[string][]byte {
	tb.Helper()
	db := mustOpen(tb, cfg)
	mustPut(tb, db, "b", "k", "v")
	_ = db.Close()
	real, err := os.ReadFile(cfg.Path)
	if err != nil {
		tb.Fatal(err)
	}
	pageSize := os.Getpagesize()
	bothMeta := bytes.Clone(real)
	for _, off := range []int{0, pageSize} {
		for i := off + 16; i < off+80; i++ { // the meta struct after the page header
			bothMeta[i] ^= 0xff
		}
	}
	return map[string][]byte{
		"garbage":   bytes.Repeat([]byte("not a bbolt file "), 1000),
		"truncated": real[:100],
		// Meta pages intact but the pages they point at are past EOF: bbolt
		// faults (SIGBUS) reading the mmap unless the fault is recovered.
		"truncated after meta": real[:2*pageSize],
		"both meta pages":      bothMeta,
	}
}

func TestOpen_unreadableFile(t *testing.T) {
	cfg, _ := testConfig(t)
	for name, content := range unreadableFiles(t, cfg) {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(cfg.Path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			db, err := Open(cfg)
			if !errors.Is(err, ErrUnreadable) || db != nil {
				t.Fatalf("Open = %v, want ErrUnreadable", err)
			}
			if !strings.Contains(err.Error(), cfg.Path) {
				t.Fatalf("error %q does not name the path", err)
			}
		})
	}
}

func TestOpenOrQuarantine_unreadableFileIsMovedAside(t *testing.T) {
	base, _ := testConfig(t)
	for name, content := range unreadableFiles(t, base) {
		t.Run(name, func(t *testing.T) {
			cfg, logs := testConfig(t)
			now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
			cfg.Clock = clocktesting.NewFakePassiveClock(now)
			if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(cfg.Path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			db, q, err := OpenOrQuarantine(cfg)
			if err != nil {
				t.Fatalf("OpenOrQuarantine: %v", err)
			}
			t.Cleanup(func() { _ = db.Close() })
			if want := cfg.Path + ".corrupt-20260304T050607Z"; q != want {
				t.Fatalf("quarantined = %q, want %q", q, want)
			}
			if kept, err := os.ReadFile(q); err != nil || !bytes.Equal(kept, content) {
				t.Fatalf("quarantined file not kept intact: %v", err)
			}
			mustPut(t, db, "b", "k", "fresh")
			if err := db.Check(); err != nil {
				t.Fatal(err)
			}
			out := logs.String()
			for _, want := range []string{`"level":"WARN"`, `"msg":"store quarantined, starting empty"`, cfg.Path, q} {
				if !strings.Contains(out, want) {
					t.Fatalf("log lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

func TestOpenOrQuarantine_sameSecondDoesNotOverwrite(t *testing.T) {
	cfg, _ := testConfig(t)
	cfg.Clock = clocktesting.NewFakePassiveClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
		t.Fatal(err)
	}
	var got []string
	for i := range 3 {
		if err := os.WriteFile(cfg.Path, []byte(fmt.Sprintf("garbage %d %s", i, strings.Repeat("x", 5000))), 0o600); err != nil {
			t.Fatal(err)
		}
		db, q, err := OpenOrQuarantine(cfg)
		if err != nil {
			t.Fatal(err)
		}
		_ = db.Close()
		got = append(got, q)
	}
	if got[0] == got[1] || got[1] == got[2] || got[0] == got[2] {
		t.Fatalf("quarantine names collide: %v", got)
	}
	for _, q := range got {
		if _, err := os.Stat(q); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpenOrQuarantine_wrongKEKIsMovedAside(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	mustPut(t, db, "b", "k", "v")
	_ = db.Close()
	cfg.KEK = testKEK(t, t.TempDir())
	db, q, err := OpenOrQuarantine(cfg)
	if err != nil || q == "" {
		t.Fatalf("OpenOrQuarantine = (%q, %v)", q, err)
	}
	defer db.Close()
	if _, err := db.Get("b", "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("fresh store Get = %v", err)
	}
}

func TestOpenOrQuarantine_kekUnavailableIsNotMoved(t *testing.T) {
	cfg, _ := testConfig(t)
	kek := &downKEK{AEAD: cfg.KEK}
	cfg.KEK = kek
	db := mustOpen(t, cfg)
	mustPut(t, db, "leases", "k", "v")
	_ = db.Close()

	kek.down.Store(true)
	if _, err := Open(cfg); !errors.Is(err, ErrKEKUnavailable) || !errors.Is(err, crypto.ErrKEKUnavailable) || errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with the KEK down = %v, want ErrKEKUnavailable only", err)
	}
	db, q, err := OpenOrQuarantine(cfg)
	if !errors.Is(err, ErrKEKUnavailable) || q != "" || db != nil {
		t.Fatalf("OpenOrQuarantine with the KEK down = (%v, %q, %v), want ErrKEKUnavailable and nothing moved", db, q, err)
	}
	if matches, _ := filepath.Glob(cfg.Path + ".corrupt-*"); len(matches) != 0 {
		t.Fatalf("files quarantined: %v", matches)
	}
	// A new store cannot wrap its keyset either: also unavailable, not unreadable.
	fresh := cfg
	fresh.Path = filepath.Join(t.TempDir(), "new.db")
	if _, _, err := OpenOrQuarantine(fresh); !errors.Is(err, ErrKEKUnavailable) {
		t.Fatalf("OpenOrQuarantine of a new store with the KEK down = %v, want ErrKEKUnavailable", err)
	}

	kek.down.Store(false)
	db = mustOpen(t, cfg)
	if v, err := db.Get("leases", "k"); err != nil || string(v) != "v" {
		t.Fatalf("after the KEK is back Get = %q, %v", v, err)
	}
}

func TestOpenOrQuarantine_lockedAndTooNewAreNotMoved(t *testing.T) {
	cfg, _ := testConfig(t)
	cfg.LockTimeout = 100 * time.Millisecond
	db := mustOpen(t, cfg)
	if _, q, err := OpenOrQuarantine(cfg); !errors.Is(err, ErrLocked) || q != "" {
		t.Fatalf("OpenOrQuarantine on a locked store = (%q, %v), want ErrLocked", q, err)
	}
	_ = db.Close()

	rawEdit(t, cfg.Path, func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(MetaBucket)).Put([]byte(metaSchemaKey), []byte("7"))
	})
	if _, q, err := OpenOrQuarantine(cfg); !errors.Is(err, ErrSchemaTooNew) || q != "" {
		t.Fatalf("OpenOrQuarantine on a newer schema = (%q, %v), want ErrSchemaTooNew", q, err)
	}
	matches, _ := filepath.Glob(cfg.Path + ".corrupt-*")
	if len(matches) != 0 {
		t.Fatalf("files quarantined: %v", matches)
	}
}

func TestOpen_secondOpenIsLocked(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	second := cfg
	second.LockTimeout = 100 * time.Millisecond
	db2, err := Open(second)
	if !errors.Is(err, ErrLocked) || db2 != nil {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	for _, want := range []string{cfg.Path, "another keywarden process is using this data directory"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q lacks %q", err, want)
		}
	}
	// Released on Close.
	_ = db.Close()
	db2 = mustOpen(t, second)
	_ = db2.Close()
}

func TestDB_Close_thenErrClosed(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	mustPut(t, db, "b", "k", "v")
	for range 2 {
		if err := db.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	_, getErr := db.Get("b", "k")
	_, listErr := db.List("b")
	for i, err := range []error{
		getErr, listErr, db.Put("b", "k", nil), db.Delete("b", "k"), db.Check(),
		db.Update(func(*Tx) error { return nil }), db.View(func(*Tx) error { return nil }), db.RotateDEK(),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("op %d: err = %v, want ErrClosed", i, err)
		}
	}
}

func TestDB_Update_atomicAndFnErrorPassesThrough(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	errBoom := errors.New("boom")
	err := db.Update(func(tx *Tx) error {
		if err := tx.Put("b", "k1", []byte("v1")); err != nil {
			return err
		}
		if got, err := tx.Get("b", "k1"); err != nil || string(got) != "v1" {
			t.Errorf("read own write = (%q, %v)", got, err)
		}
		return errBoom
	})
	if err != errBoom {
		t.Fatalf("Update err = %v, want errBoom unchanged", err)
	}
	if _, err := db.Get("b", "k1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rolled-back Put visible: %v", err)
	}

	err = db.Update(func(tx *Tx) error {
		for i := range 10 {
			if err := tx.Put("b", fmt.Sprintf("k%02d", i), []byte{byte(i)}); err != nil {
				return err
			}
		}
		return tx.Delete("b", "k03")
	})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	err = db.View(func(tx *Tx) error {
		recs, err := tx.List("b")
		n = len(recs)
		if err := tx.Put("b", "x", nil); err == nil {
			t.Error("Put succeeded in a View")
		}
		if err := tx.Delete("b", "k01"); err == nil {
			t.Error("Delete succeeded in a View")
		}
		return err
	})
	if err != nil || n != 9 {
		t.Fatalf("View = %d records, %v", n, err)
	}

	var leaked *Tx
	_ = db.View(func(tx *Tx) error { leaked = tx; return nil })
	if _, err := leaked.Get("b", "k01"); err == nil {
		t.Fatal("Tx usable after its function returned")
	}
}

func TestDB_concurrentUse(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				k := fmt.Sprintf("g%d-%d", g, i)
				if err := db.Put("b", k, []byte(k)); err != nil {
					t.Error(err)
					return
				}
				if got, err := db.Get("b", k); err != nil || string(got) != k {
					t.Errorf("Get(%s) = (%q, %v)", k, got, err)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 3 {
			if err := db.RotateDEK(); err != nil {
				t.Error(err)
			}
		}
	}()
	wg.Wait()
	recs, err := db.List("b")
	if err != nil || len(recs) != 100 {
		t.Fatalf("List = %d, %v", len(recs), err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = mustOpen(t, cfg)
	if recs, err := db.List("b"); err != nil || len(recs) != 100 {
		t.Fatalf("after reopen List = %d, %v", len(recs), err)
	}
}

func TestDB_fileNeverHoldsPlaintext(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	secret := "PLAINTEXT-MARKER-7f3a9c-hunter2"
	err := db.Update(func(tx *Tx) error {
		for i := range 50 {
			if err := tx.Put("secrets", fmt.Sprintf("recognisable-key-%02d", i), []byte(secret)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Overwrites and deletes leave freed pages behind; they must not hold it either.
	mustPut(t, db, "secrets", "recognisable-key-00", secret+"-v2")
	if err := db.Delete("secrets", "recognisable-key-01"); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	// The check looks at the right file: key names are stored in clear.
	if !bytes.Contains(raw, []byte("recognisable-key-42")) {
		t.Fatal("key name not found in the file: wrong file read?")
	}
	if bytes.Contains(raw, []byte(secret)) || bytes.Contains(raw, []byte("PLAINTEXT-MARKER")) {
		t.Fatal("the bbolt file contains the plaintext value")
	}
}
