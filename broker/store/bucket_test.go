package store

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

type thing struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

func TestBucket_roundTripAndBytesOnDisk(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	defer db.Close()
	b := NewBucket[thing](db, "things")
	if err := b.Put("a", thing{Name: "x", Count: 2}); err != nil {
		t.Fatal(err)
	}
	got, err := b.Get("a")
	if err != nil || got != (thing{Name: "x", Count: 2}) {
		t.Fatalf("get: %+v %v", got, err)
	}
	// The codec is plain JSON: what consumers wrote with json.Marshal before still reads.
	raw, err := db.Get("things", "a")
	if err != nil || string(raw) != `{"name":"x","count":2}` {
		t.Fatalf("bytes in the store: %q %v", raw, err)
	}
	if err := b.Delete("a"); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete("a"); err != nil {
		t.Fatalf("delete of a missing key: %v", err)
	}
}

func TestBucket_badInput(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	defer db.Close()
	b := NewBucket[thing](db, "things")
	mustPut(t, db, "things", "bad", `{"name": 7, "secret-ish": "s3cr3t"}`)
	mustPut(t, db, "things", "notjson", `s3cr3t`)
	tests := []struct {
		name string
		do   func() error
		want error
	}{
		{"missing key", func() error { _, err := b.Get("nope"); return err }, ErrNotFound},
		{"wrong field type", func() error { _, err := b.Get("bad"); return err }, ErrDecode},
		{"not JSON", func() error { _, err := b.Get("notjson"); return err }, ErrDecode},
		{"empty key", func() error { return b.Put("", thing{}) }, ErrInvalidKey},
		{"reserved bucket", func() error { return NewBucket[thing](db, MetaBucket).Put("k", thing{}) }, ErrInvalidKey},
		{"zero bucket", func() error { return Bucket[thing]{}.Put("k", thing{}) }, ErrClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.do()
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "s3cr3t") {
				t.Fatalf("the error quotes the record: %v", err)
			}
		})
	}
	// A record that does not decode loses nothing: it is still there, byte for byte.
	if raw, err := db.Get("things", "bad"); err != nil || !strings.Contains(string(raw), "s3cr3t") {
		t.Fatalf("record after a failed decode: %v", err)
	}
}

func TestBucket_listAndPrefix(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	defer db.Close()
	all := NewBucket[thing](db, "mixed")
	leases, revokes := all.Prefix("lease/"), NewBucket[string](db, "mixed").Prefix("revoke/")
	for _, k := range []string{"c", "a", "b"} {
		if err := leases.Put(k, thing{Name: k}); err != nil {
			t.Fatal(err)
		}
	}
	if err := revokes.Put("z", "id-z"); err != nil {
		t.Fatal(err)
	}
	mustPut(t, db, "mixed", "lease/bad", `[]`)
	items, err := leases.List()
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, it := range items {
		keys = append(keys, it.Key)
		if (it.Key == "bad") != (it.Err != nil) || (it.Err == nil && it.Value.Name != it.Key) {
			t.Fatalf("item %+v", it)
		}
	}
	if strings.Join(keys, ",") != "a,b,bad,c" {
		t.Fatalf("keys %v: want sorted, prefix stripped, other prefixes skipped", keys)
	}
	got, err := revokes.List()
	if err != nil || len(got) != 1 || got[0].Key != "z" || got[0].Value != "id-z" {
		t.Fatalf("revokes: %+v %v", got, err)
	}
	// One transaction over both views.
	if err := all.Update(func(tx TxBucket[thing]) error {
		if err := tx.Delete("lease/a"); err != nil {
			return err
		}
		return tx.Put("lease/d", thing{Name: "d"})
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := leases.Get("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted in the transaction: %v", err)
	}
}

func TestBucket_Keys_listsWithoutOpening(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	defer db.Close()
	b := NewBucket[thing](db, "things")
	if keys, err := b.Keys(); err != nil || len(keys) != 0 {
		t.Fatalf("missing bucket: %v %v", keys, err)
	}
	for _, k := range []string{"b", "x/a", "a", "x/b"} {
		if err := b.Put(k, thing{Name: k}); err != nil {
			t.Fatal(err)
		}
	}
	// A value that does not decode does not stop the listing: the caller Gets each key.
	mustPut(t, db, "things", "c", "not json")
	keys, err := b.Keys()
	if err != nil || strings.Join(keys, ",") != "a,b,c,x/a,x/b" {
		t.Fatalf("keys: %v %v", keys, err)
	}
	if keys, err := b.Prefix("x/").Keys(); err != nil || strings.Join(keys, ",") != "a,b" {
		t.Fatalf("prefixed keys: %v %v", keys, err)
	}
	if _, err := (Bucket[thing]{}).Keys(); !errors.Is(err, ErrClosed) {
		t.Fatalf("zero bucket: %v", err)
	}
}

// A json.RawMessage bucket stores valid JSON as given and refuses anything else, without
// quoting it in the error and without writing it.
func TestBucket_Put_rawMessage(t *testing.T) {
	cfg, _ := testConfig(t)
	db := mustOpen(t, cfg)
	b := NewBucket[json.RawMessage](db, "raw")
	in := json.RawMessage(`{"seq": 1, "event": {"x": "y"}}`)
	if err := b.Put("ok", in); err != nil {
		t.Fatal(err)
	}
	got, err := b.Get("ok")
	if err != nil || string(got) != string(in) {
		t.Fatalf("Get = %s, %v; want %s", got, err, in)
	}
	for _, bad := range []string{`s3cr3t`, `{"a":`, ``} {
		err := b.Put("bad", json.RawMessage(bad))
		if err == nil || strings.Contains(err.Error(), "s3cr3t") {
			t.Fatalf("Put of %q: %v; want an error that does not quote it", bad, err)
		}
	}
	if _, err := b.Get("bad"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused record was written: %v", err)
	}
}
