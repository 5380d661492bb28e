package crypto

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestKeyring_Pruned_keepsOnlyThePrimary(t *testing.T) {
	kr, _, kek := newTestKeyring(t)
	ad := []byte("b/k")
	old, err := kr.Seal([]byte("old"), ad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kr.Rotate(); err != nil {
		t.Fatal(err)
	}
	if got := len(kr.KeyIDs()); got != 2 {
		t.Fatalf("keys after Rotate = %d, want 2", got)
	}
	cur, err := kr.Seal([]byte("new"), ad)
	if err != nil {
		t.Fatal(err)
	}
	pk, wrapped, err := kr.Pruned()
	if err != nil {
		t.Fatal(err)
	}
	if ids := pk.KeyIDs(); !slices.Equal(ids, []uint32{kr.PrimaryKeyID()}) {
		t.Fatalf("pruned keys = %v, want only the primary %d", ids, kr.PrimaryKeyID())
	}
	reopened, err := OpenKeyring(kek, wrapped)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := reopened.Open(cur, ad); err != nil || string(pt) != "new" {
		t.Fatalf("record under the primary after prune: %q %v", pt, err)
	}
	if _, err := reopened.Open(old, ad); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("record under a pruned key opened: %v", err)
	}
	if _, err := kr.Open(old, ad); err != nil {
		t.Fatalf("Pruned changed its receiver: %v", err)
	}
}

func TestKeyring_Rewrapped_opensOnlyWithTheNewKEK(t *testing.T) {
	kr, _, oldKEK := newTestKeyring(t)
	newKEK := newTestKEK(t)
	ct, err := kr.Seal([]byte("v"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	_, wrapped, err := kr.Rewrapped(newKEK)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKeyring(oldKEK, wrapped); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("old KEK opened the re-wrapped keyset: %v", err)
	}
	nk, err := OpenKeyring(newKEK, wrapped)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := nk.Open(ct, []byte("ad")); err != nil || string(pt) != "v" {
		t.Fatalf("record after rewrap: %q %v", pt, err)
	}
}

func TestLocalKEKFile_rotateRewrapRetire(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kek.json")
	kek0, err := LoadOrCreateLocalKEK(path)
	if err != nil {
		t.Fatal(err)
	}
	f := LocalKEKFile{Path: path}
	p0, _, err := f.Keys()
	if err != nil {
		t.Fatal(err)
	}
	kr, wrapped0, err := NewKeyring(kek0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := WrappingKeyOf(wrapped0), "tink:"; !strings.HasPrefix(got, want) {
		t.Fatalf("WrappingKeyOf = %q", got)
	}

	kek1, err := f.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	p1, all, err := f.Keys()
	if err != nil || p1 == p0 || !slices.Contains(all, p0) || len(all) != 2 {
		t.Fatalf("after Rotate: primary %d (was %d), keys %v, err %v", p1, p0, all, err)
	}
	if u, _ := f.Unfinished(); !u {
		t.Fatal("a rotated file with two keys is not reported unfinished")
	}
	// The file as loaded from disk after step 1 still opens the old wrapping.
	loaded, err := LoadLocalKEK(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKeyring(loaded, wrapped0); err != nil {
		t.Fatalf("old wrapping after Rotate: %v", err)
	}
	_, wrapped1, err := kr.Rewrapped(kek1)
	if err != nil {
		t.Fatal(err)
	}
	if got := WrappingKeyOf(wrapped1); got == WrappingKeyOf(wrapped0) {
		t.Fatalf("rewrap did not change the wrapping key: %s", got)
	}

	if _, err := f.Retire(); err != nil {
		t.Fatal(err)
	}
	_, all, _ = f.Keys()
	if !slices.Equal(all, []uint32{p1}) {
		t.Fatalf("after Retire: keys %v, want [%d]", all, p1)
	}
	loaded, err = LoadLocalKEK(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKeyring(loaded, wrapped1); err != nil {
		t.Fatalf("new wrapping after Retire: %v", err)
	}
	if _, err := OpenKeyring(loaded, wrapped0); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("a retired KEK key still opens: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("kek file mode after rewrite: %v %v", fi.Mode(), err)
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".keywarden-kek-*")); len(m) != 0 {
		t.Fatalf("temporary files left: %v", m)
	}
}

func TestLocalKEKFile_Rotate_refusesAnInsecureFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kek.json")
	if _, err := LoadOrCreateLocalKEK(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := (LocalKEKFile{Path: path}).Rotate(); !errors.Is(err, ErrInsecurePermissions) {
		t.Fatalf("Rotate of a 0644 file: %v", err)
	}
}

func TestWrappingKeyOf(t *testing.T) {
	for in, want := range map[string]string{
		"vault:v3:abcd":         "vault:v3",
		"vault:v12:x":           "vault:v12",
		"vault:v":               "",
		"":                      "",
		"\x01\x00\x00\x00\x07x": "tink:7",
		"\x00\x00\x00\x00\x07x": "",
	} {
		if got := WrappingKeyOf([]byte(in)); got != want {
			t.Errorf("WrappingKeyOf(%q) = %q, want %q", in, got, want)
		}
	}
}
