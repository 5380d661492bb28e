package crypto

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateSigningKey_createsThenLoadsTheSameKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit-anchor-key.json")
	a, err := LoadOrCreateSigningKey(path)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %04o, want 0600", fi.Mode().Perm())
	}
	b, err := LoadOrCreateSigningKey(path)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if !bytes.Equal(a.PublicKeyset(), b.PublicKeyset()) || a.Fingerprint() != b.Fingerprint() {
		t.Fatal("a reloaded key has another public keyset")
	}
	sig, err := a.Sign([]byte("head"))
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifySignature(b.PublicKeyset(), []byte("head"), sig); err != nil {
		t.Fatalf("signature of the created key under the loaded key's public keyset: %v", err)
	}
	assertOnlyFiles(t, filepath.Dir(path), "audit-anchor-key.json")
}

func TestVerifySignature_refusesForgeries(t *testing.T) {
	dir := t.TempDir()
	k, err := LoadOrCreateSigningKey(filepath.Join(dir, "a.json"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := LoadOrCreateSigningKey(filepath.Join(dir, "b.json"))
	if err != nil {
		t.Fatal(err)
	}
	sig, err := k.Sign([]byte("data"))
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(sig)
	flipped[len(flipped)-1] ^= 1
	private, err := os.ReadFile(filepath.Join(dir, "a.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		pub       []byte
		data, sig []byte
		want      error
	}{
		{"other data", k.PublicKeyset(), []byte("datA"), sig, ErrBadSignature},
		{"flipped bit", k.PublicKeyset(), []byte("data"), flipped, ErrBadSignature},
		{"other key", other.PublicKeyset(), []byte("data"), sig, ErrBadSignature},
		{"empty signature", k.PublicKeyset(), []byte("data"), nil, ErrBadSignature},
		{"empty keyset", nil, []byte("data"), sig, ErrInvalidKeyset},
		{"garbage keyset", []byte("not a keyset"), []byte("data"), sig, ErrInvalidKeyset},
		{"private keyset", private, []byte("data"), sig, ErrInvalidKeyset},
		{"huge keyset", make([]byte, maxPublicKeysetSize+1), []byte("data"), sig, ErrInvalidKeyset},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := VerifySignature(tc.pub, tc.data, tc.sig); !errors.Is(err, tc.want) {
				t.Fatalf("VerifySignature = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestLoadSigningKey_refusesInsecureAndForeignFiles(t *testing.T) {
	dir := t.TempDir()
	kekPath := filepath.Join(dir, "kek.json")
	if _, err := LoadOrCreateLocalKEK(kekPath); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSigningKey(kekPath); !errors.Is(err, ErrInvalidKeyset) {
		t.Errorf("an AEAD keyset as signing key: %v, want ErrInvalidKeyset", err)
	}
	if _, err := LoadSigningKey(filepath.Join(dir, "missing.json")); !errors.Is(err, ErrSigningKeyNotFound) {
		t.Errorf("missing file: %v, want ErrSigningKeyNotFound", err)
	}
	path := filepath.Join(dir, "key.json")
	if _, err := LoadOrCreateSigningKey(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreateSigningKey(path)
	if !errors.Is(err, ErrInsecurePermissions) || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a group-readable signing key: %v, want ErrInsecurePermissions with the fix", err)
	}
}

func TestSigningKey_printsNoKeyMaterial(t *testing.T) {
	k, err := LoadOrCreateSigningKey(filepath.Join(t.TempDir(), "k.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%d"} {
		if got := fmt.Sprintf(verb, k); got != "crypto.SigningKey[REDACTED]" {
			t.Errorf("%s prints %q", verb, got)
		}
	}
}
