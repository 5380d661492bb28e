package crypto

import (
	"fmt"
	"testing"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// newTestKEK returns an in-memory AES256-GCM AEAD usable as a KEK.
func newTestKEK(tb testing.TB) tink.AEAD {
	tb.Helper()
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		tb.Fatalf("new kek keyset: %v", err)
	}
	a, err := aead.New(h)
	if err != nil {
		tb.Fatalf("new kek aead: %v", err)
	}
	return a
}

// newTestKeyring returns a fresh Keyring, its wrapped keyset and its KEK.
func newTestKeyring(tb testing.TB) (*Keyring, []byte, tink.AEAD) {
	tb.Helper()
	kek := newTestKEK(tb)
	kr, wrapped, err := NewKeyring(kek)
	if err != nil {
		tb.Fatalf("NewKeyring: %v", err)
	}
	return kr, wrapped, kek
}

func flipBit(b []byte, bit int) []byte {
	c := append([]byte(nil), b...)
	c[bit/8] ^= 1 << (bit % 8)
	return c
}

// flakyKEK is a KEK that can be switched to fail every call with
// ErrKEKUnavailable, like Vault Transit during an outage.
type flakyKEK struct {
	tink.AEAD
	down bool
}

func (f *flakyKEK) Encrypt(pt, ad []byte) ([]byte, error) {
	if f.down {
		return nil, fmt.Errorf("fake kek: %w: vault unreachable", ErrKEKUnavailable)
	}
	return f.AEAD.Encrypt(pt, ad)
}

func (f *flakyKEK) Decrypt(ct, ad []byte) ([]byte, error) {
	if f.down {
		return nil, fmt.Errorf("fake kek: %w: vault unreachable", ErrKEKUnavailable)
	}
	return f.AEAD.Decrypt(ct, ad)
}
