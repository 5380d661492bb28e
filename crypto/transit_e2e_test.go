//go:build e2e

package crypto_test

// This test runs the Transit KEK against a real Vault started by the e2e framework:
//
//	go test -tags e2e -run TestTransitKEK_realVault ./crypto/

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tink-crypto/tink-go-hcvault/v2/integration/hcvault"

	"github.com/keywarden/keywarden/crypto"
	"github.com/keywarden/keywarden/e2e/framework"
)

func TestTransitKEK_realVault(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v := framework.StartVault(t)
	v.Mount(t, "transit", "transit", nil)
	v.Write(t, "transit/keys/kek", map[string]any{"type": "aes256-gcm96", "derived": true})
	v.Write(t, "transit/keys/plain", map[string]any{"type": "aes256-gcm96"})

	kek, err := crypto.NewTransitKEK(ctx, crypto.TransitKEKConfig{Client: v.Client, Key: "kek"})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := kek.Encrypt([]byte("dek keyset bytes"), []byte("keywarden/dek-keyset/v1"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := kek.Decrypt(ct, []byte("keywarden/dek-keyset/v1")); err != nil || string(pt) != "dek keyset bytes" {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := kek.Decrypt(ct, []byte("keywarden/other/v1")); !errors.Is(err, crypto.ErrDecrypt) {
		t.Fatalf("wrong associated data: err = %v, want ErrDecrypt", err)
	}
	// The whole hierarchy: a keyring wrapped by Transit opens only with the same KEK.
	_, wrapped, err := crypto.NewKeyring(kek)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := crypto.OpenKeyring(kek, wrapped); err != nil {
		t.Fatalf("open keyring: %v", err)
	}

	// The reason for derived keys: Vault ignores the context for a non-derived key, so a
	// plain Tink client would accept a wrong associated data. NewTransitKEK refuses the key.
	legacy, err := hcvault.NewAEAD("/transit/keys/plain", v.Client.Logical(), hcvault.WithLegacyContextParamater())
	if err != nil {
		t.Fatal(err)
	}
	ct2, err := legacy.Encrypt([]byte("x"), []byte("ad-1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := legacy.Decrypt(ct2, []byte("ad-2")); err != nil {
		t.Logf("this Vault binds context even for non-derived keys: %v", err)
	} else {
		t.Log("confirmed: a non-derived Transit key ignores the associated data")
	}
	if _, err := crypto.NewTransitKEK(ctx, crypto.TransitKEKConfig{Client: v.Client, Key: "plain"}); !errors.Is(err, crypto.ErrTransitKeyNotDerived) {
		t.Fatalf("non-derived key: err = %v", err)
	}
}

// TestTransitKEK_rewrapAfterVaultRotation is the Transit side of `keywarden keys rotate
// --kek`: an operator rotates the key in Vault, the keyset is re-wrapped under the latest
// version, and once min_decryption_version is raised only the re-wrapped keyset opens.
func TestTransitKEK_rewrapAfterVaultRotation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v := framework.StartVault(t)
	v.Mount(t, "transit", "transit", nil)
	v.Write(t, "transit/keys/kek", map[string]any{"type": "aes256-gcm96", "derived": true})
	kek, err := crypto.NewTransitKEK(ctx, crypto.TransitKEKConfig{Client: v.Client, Key: "kek"})
	if err != nil {
		t.Fatal(err)
	}
	kr, wrapped1, err := crypto.NewKeyring(kek)
	if err != nil {
		t.Fatal(err)
	}
	if got := crypto.WrappingKeyOf(wrapped1); got != "vault:v1" {
		t.Fatalf("wrapped under %q, want vault:v1", got)
	}
	v.Write(t, "transit/keys/kek/rotate", nil)
	_, wrapped2, err := kr.Rewrapped(kek)
	if err != nil {
		t.Fatal(err)
	}
	if got := crypto.WrappingKeyOf(wrapped2); got != "vault:v2" {
		t.Fatalf("re-wrapped under %q, want vault:v2", got)
	}
	v.Write(t, "transit/keys/kek/config", map[string]any{"min_decryption_version": 2})
	if _, err := crypto.OpenKeyring(kek, wrapped2); err != nil {
		t.Fatalf("re-wrapped keyset: %v", err)
	}
	if _, err := crypto.OpenKeyring(kek, wrapped1); !errors.Is(err, crypto.ErrDecrypt) {
		t.Fatalf("keyset wrapped under a retired version: %v, want ErrDecrypt", err)
	}
}
