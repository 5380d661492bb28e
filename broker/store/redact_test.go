package store

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

const secretValue = "SECRET-VALUE-d41d8cd98f-never-print"

func renderAll(v any) string {
	var b strings.Builder
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		fmt.Fprintf(&b, verb+"\n", v)
	}
	slog.New(slog.NewTextHandler(&b, nil)).Info("m", "v", v)
	slog.New(slog.NewJSONHandler(&b, nil)).Info("m", "v", v)
	return b.String()
}

func assertNoSecret(tb testing.TB, what, out string) {
	tb.Helper()
	decimal := strings.Trim(fmt.Sprint([]byte(secretValue)[:8]), "[]") // as %v prints a []byte
	if strings.Contains(out, secretValue) || strings.Contains(strings.ToLower(out), fmt.Sprintf("%x", secretValue)) ||
		strings.Contains(out, decimal) {
		tb.Fatalf("%s leaks the secret value:\n%s", what, out)
	}
}

func TestRecord_String_redactsValue(t *testing.T) {
	r := Record{Key: "ns/sa/db", Value: []byte(secretValue)}
	for _, v := range []any{r, &r, []Record{r}, []any{r}} {
		out := renderAll(v)
		assertNoSecret(t, "Record", out)
		if !strings.Contains(out, "ns/sa/db") {
			t.Fatalf("key missing from output:\n%s", out)
		}
	}
}

// TestDB_logsAndErrors_neverHoldSecrets drives every path that logs or
// returns an error, with a known secret stored, and scans all of it.
func TestDB_logsAndErrors_neverHoldSecrets(t *testing.T) {
	cfg, logs := testConfig(t)
	db := mustOpen(t, cfg)
	mustPut(t, db, "secrets", "k", secretValue)
	if err := db.RotateDEK(); err != nil {
		t.Fatal(err)
	}
	var errs []error
	rec := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	// Corrupt the record by moving it, through the open handle.
	rec(db.bdb.Update(func(tx *bolt.Tx) error {
		v := tx.Bucket([]byte("secrets")).Get([]byte("k"))
		return tx.Bucket([]byte("secrets")).Put([]byte("moved"), append([]byte(nil), v...))
	}))
	_, err := db.Get("secrets", "moved")
	rec(err)
	_, err = db.List("secrets")
	rec(err)
	rec(db.Put("", "k", []byte(secretValue)))
	rec(db.Update(func(tx *Tx) error { return tx.Put("secrets\x00", "k", []byte(secretValue)) }))
	second := cfg
	second.LockTimeout = 50 * time.Millisecond
	_, err = Open(second)
	rec(err)
	renderedDB := renderAll(db)
	_ = db.Close()
	_, err = db.Get("secrets", "k")
	rec(err)

	// Wrong KEK, then quarantine.
	other := cfg
	other.KEK = testKEK(t, t.TempDir())
	_, err = Open(other)
	rec(err)
	db2, q, err := OpenOrQuarantine(other)
	if err != nil || q == "" {
		t.Fatalf("OpenOrQuarantine = (%q, %v)", q, err)
	}
	_ = db2.Close()
	// Garbage file, then quarantine.
	if err := os.WriteFile(cfg.Path, []byte(strings.Repeat(secretValue, 200)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Open(cfg)
	rec(err)
	db3, _, err := OpenOrQuarantine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_ = db3.Close()

	if len(errs) != 8 {
		t.Fatalf("only %d error paths fired", len(errs))
	}
	for _, e := range errs {
		assertNoSecret(t, "error "+e.Error(), renderAll(e))
	}
	assertNoSecret(t, "DB", renderedDB)
	if !strings.Contains(logs.String(), "store quarantined") {
		t.Fatal("quarantine was not logged")
	}
	assertNoSecret(t, "logs", logs.String())
	if !errors.Is(errs[0], ErrCorrupt) {
		t.Fatalf("first error = %v", errs[0])
	}
}
