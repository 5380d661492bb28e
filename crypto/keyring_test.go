package crypto

import (
	"bytes"
	"errors"
	"sync"
	"testing"

	"github.com/tink-crypto/tink-go/v2/tink"
)

func TestKeyring_Seal_roundTrip(t *testing.T) {
	kr, _, _ := newTestKeyring(t)
	tests := []struct {
		name      string
		plaintext []byte
		ad        []byte
	}{
		{"empty", nil, nil},
		{"short", []byte("x"), []byte("keywarden/store/v1/b/k")},
		{"binary", []byte{0, 1, 2, 0xff}, []byte{0}},
		{"large", bytes.Repeat([]byte("s3cr3t"), 10000), []byte("ad")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ct, err := kr.Seal(tt.plaintext, tt.ad)
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			if len(tt.plaintext) >= 4 && bytes.Contains(ct, tt.plaintext) { // shorter would match random bytes
				t.Fatal("ciphertext contains the plaintext")
			}
			got, err := kr.Open(ct, tt.ad)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !bytes.Equal(got, tt.plaintext) {
				t.Fatalf("Open = %q, want %q", got, tt.plaintext)
			}
		})
	}
}

func TestKeyring_Open_wrongAssociatedDataFails(t *testing.T) {
	kr, _, _ := newTestKeyring(t)
	ct, err := kr.Seal([]byte("value"), []byte("keywarden/store/v1/b/k1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ad := range [][]byte{nil, []byte("keywarden/store/v1/b/k2"), []byte("keywarden/store/v1/b/k1 "), []byte("keywarden/store/v2/b/k1")} {
		got, err := kr.Open(ct, ad)
		if !errors.Is(err, ErrDecrypt) {
			t.Errorf("Open(ad=%q) err = %v, want ErrDecrypt", ad, err)
		}
		if got != nil {
			t.Errorf("Open(ad=%q) returned %d bytes with an error", ad, len(got))
		}
	}
}

func TestKeyring_Open_everyFlippedBitFails(t *testing.T) {
	kr, _, _ := newTestKeyring(t)
	ad := []byte("ad")
	ct, err := kr.Seal([]byte("v"), ad)
	if err != nil {
		t.Fatal(err)
	}
	failures := 0
	for bit := 0; bit < len(ct)*8; bit++ {
		got, err := kr.Open(flipBit(ct, bit), ad)
		if !errors.Is(err, ErrDecrypt) || got != nil {
			t.Errorf("bit %d: Open = (%q, %v), want ErrDecrypt", bit, got, err)
			continue
		}
		failures++
	}
	// The fault must actually fire for every bit (prefix, nonce, body, tag).
	if failures != len(ct)*8 {
		t.Fatalf("%d of %d flipped ciphertexts rejected", failures, len(ct)*8)
	}
	// Truncations fail too.
	for n := 0; n < len(ct); n++ {
		if _, err := kr.Open(ct[:n], ad); !errors.Is(err, ErrDecrypt) {
			t.Errorf("truncated to %d: err = %v, want ErrDecrypt", n, err)
		}
	}
}

func TestOpenKeyring_roundTrip(t *testing.T) {
	kr, wrapped, kek := newTestKeyring(t)
	ct, err := kr.Seal([]byte("value"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	kr2, err := OpenKeyring(kek, wrapped)
	if err != nil {
		t.Fatalf("OpenKeyring: %v", err)
	}
	got, err := kr2.Open(ct, []byte("ad"))
	if err != nil || string(got) != "value" {
		t.Fatalf("reopened Open = (%q, %v)", got, err)
	}
	w2, err := kr2.Wrapped()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKeyring(kek, w2); err != nil {
		t.Fatalf("OpenKeyring(Wrapped()): %v", err)
	}
	if bytes.Contains(wrapped, []byte(WrappedKeysetAssociatedData)) {
		t.Fatal("wrapped keyset carries its associated data in clear")
	}
}

func TestOpenKeyring_wrongKEKFails(t *testing.T) {
	_, wrapped, _ := newTestKeyring(t)
	if _, err := OpenKeyring(newTestKEK(t), wrapped); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("err = %v, want ErrDecrypt", err)
	}
}

func TestOpenKeyring_kekUnavailableIsNotDecryptError(t *testing.T) {
	kek := &flakyKEK{AEAD: newTestKEK(t)}
	_, wrapped, err := NewKeyring(kek)
	if err != nil {
		t.Fatal(err)
	}
	kek.down = true
	_, err = OpenKeyring(kek, wrapped)
	if !errors.Is(err, ErrKEKUnavailable) || errors.Is(err, ErrDecrypt) {
		t.Fatalf("OpenKeyring with the KEK down = %v, want ErrKEKUnavailable only", err)
	}
	if _, _, err := NewKeyring(kek); !errors.Is(err, ErrKEKUnavailable) {
		t.Fatalf("NewKeyring with the KEK down = %v, want ErrKEKUnavailable", err)
	}
	kek.down = false
	if _, err := OpenKeyring(kek, wrapped); err != nil {
		t.Fatalf("OpenKeyring once the KEK is back: %v", err)
	}
}

func TestOpenKeyring_otherAssociatedDataFails(t *testing.T) {
	// A blob encrypted by the same KEK under other associated data (a record,
	// another product's keyset) must not open as a DEK keyset.
	kr, _, kek := newTestKeyring(t)
	_, h, _ := kr.current()
	var w ciphertextOnly
	if err := h.WriteWithAssociatedData(&w, kek, []byte("keywarden/dek-keyset/v2")); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKeyring(kek, w.ct); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("err = %v, want ErrDecrypt", err)
	}
}

func TestOpenKeyring_everyFlippedBitFails(t *testing.T) {
	_, wrapped, kek := newTestKeyring(t)
	rejected := 0
	for bit := 0; bit < len(wrapped)*8; bit++ {
		kr, err := OpenKeyring(kek, flipBit(wrapped, bit))
		if !errors.Is(err, ErrDecrypt) || kr != nil {
			t.Errorf("bit %d: OpenKeyring err = %v, want ErrDecrypt", bit, err)
			continue
		}
		rejected++
	}
	if rejected != len(wrapped)*8 {
		t.Fatalf("%d of %d flipped wrapped keysets rejected", rejected, len(wrapped)*8)
	}
	for _, w := range [][]byte{nil, {}, wrapped[:len(wrapped)-1], append(append([]byte(nil), wrapped...), 0)} {
		if _, err := OpenKeyring(kek, w); !errors.Is(err, ErrDecrypt) {
			t.Errorf("len %d: err = %v, want ErrDecrypt", len(w), err)
		}
	}
}

func TestNewKeyring_nilKEKFails(t *testing.T) {
	if _, _, err := NewKeyring(nil); err == nil {
		t.Fatal("NewKeyring(nil) succeeded")
	}
	if _, err := OpenKeyring(nil, []byte("x")); err == nil {
		t.Fatal("OpenKeyring(nil) succeeded")
	}
}

func TestKeyring_Rotate_keepsOldCiphertextReadable(t *testing.T) {
	kr, wrappedOld, kek := newTestKeyring(t)
	ad := []byte("ad")
	oldID := kr.PrimaryKeyID()
	oldCT, err := kr.Seal([]byte("old"), ad)
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := keyIDOf(oldCT); !ok || id != oldID {
		t.Fatalf("old ciphertext key id = %d, %v; want %d", id, ok, oldID)
	}

	wrapped, err := kr.Rotate()
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	newID := kr.PrimaryKeyID()
	if newID == oldID {
		t.Fatal("Rotate did not change the primary key")
	}
	newCT, err := kr.Seal([]byte("new"), ad)
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := keyIDOf(newCT); !ok || id != newID {
		t.Fatalf("new ciphertext key id = %d, %v; want new primary %d", id, ok, newID)
	}
	if !kr.NeedsReseal(oldCT) || kr.NeedsReseal(newCT) {
		t.Fatal("NeedsReseal: want true for old, false for new ciphertext")
	}

	for _, k := range []*Keyring{kr, mustOpenKeyring(t, kek, wrapped)} {
		for ct, want := range map[string]string{string(oldCT): "old", string(newCT): "new"} {
			got, err := k.Open([]byte(ct), ad)
			if err != nil || string(got) != want {
				t.Fatalf("Open = (%q, %v), want %q", got, err, want)
			}
		}
	}
	// The pre-rotation keyset cannot read what the new key sealed: the caller
	// must persist the wrapped keyset Rotate returned.
	if _, err := mustOpenKeyring(t, kek, wrappedOld).Open(newCT, ad); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("old keyset opened new ciphertext: %v", err)
	}
}

func TestKeyring_Rotated_leavesReceiverUnchanged(t *testing.T) {
	kr, _, _ := newTestKeyring(t)
	id := kr.PrimaryKeyID()
	nk, wrapped, err := kr.Rotated()
	if err != nil {
		t.Fatal(err)
	}
	if kr.PrimaryKeyID() != id || nk.PrimaryKeyID() == id || len(wrapped) == 0 {
		t.Fatalf("Rotated: receiver %d→%d, new %d", id, kr.PrimaryKeyID(), nk.PrimaryKeyID())
	}
}

func TestKeyring_Rotate_concurrentWithSealOpen(t *testing.T) {
	kr, _, _ := newTestKeyring(t)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				ct, err := kr.Seal([]byte("v"), nil)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := kr.Open(ct, nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := 0; i < 5; i++ {
		if _, err := kr.Rotate(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	_, h, _ := kr.current()
	if h.Len() != 6 {
		t.Fatalf("keyset has %d keys after 5 rotations, want 6", h.Len())
	}
}

func mustOpenKeyring(tb testing.TB, kek tink.AEAD, wrapped []byte) *Keyring {
	tb.Helper()
	kr, err := OpenKeyring(kek, wrapped)
	if err != nil {
		tb.Fatalf("OpenKeyring: %v", err)
	}
	return kr
}

func FuzzKeyring_Open(f *testing.F) {
	kr, _, _ := newTestKeyring(f)
	ct, err := kr.Seal([]byte("seed"), []byte("ad"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ct, []byte("ad"))
	f.Add([]byte{}, []byte{})
	f.Add([]byte{1, 0, 0, 0, 0}, []byte("ad"))
	f.Add(ct[:tinkPrefixSize], []byte("ad"))
	f.Fuzz(func(t *testing.T, ciphertext, ad []byte) {
		pt, err := kr.Open(ciphertext, ad)
		// Only a genuine ciphertext under the seeded associated data opens;
		// anything the fuzzer makes up must fail with ErrDecrypt.
		if err == nil {
			if !bytes.Equal(ciphertext, ct) || !bytes.Equal(ad, []byte("ad")) || string(pt) != "seed" {
				t.Fatalf("forged ciphertext opened: %q", pt)
			}
			return
		}
		if !errors.Is(err, ErrDecrypt) || pt != nil {
			t.Fatalf("Open = (%q, %v), want nil, ErrDecrypt", pt, err)
		}
	})
}

func FuzzOpenKeyring(f *testing.F) {
	kek := newTestKEK(f)
	_, wrapped, err := NewKeyring(kek)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(wrapped)
	f.Add([]byte{})
	f.Add([]byte{1, 2, 3, 4, 5, 6})
	f.Fuzz(func(t *testing.T, w []byte) {
		kr, err := OpenKeyring(kek, w)
		if err == nil {
			if !bytes.Equal(w, wrapped) {
				t.Fatal("forged wrapped keyset opened")
			}
			return
		}
		if kr != nil || !errors.Is(err, ErrDecrypt) {
			t.Fatalf("OpenKeyring = (%v, %v), want nil, ErrDecrypt", kr, err)
		}
	})
}

func BenchmarkKeyring_Seal(b *testing.B) {
	kr, _, _ := newTestKeyring(b)
	pt := bytes.Repeat([]byte{'v'}, 256)
	ad := []byte("keywarden/store/v1/secrets/ns/sa/db")
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := kr.Seal(pt, ad); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkKeyring_Open(b *testing.B) {
	kr, _, _ := newTestKeyring(b)
	pt := bytes.Repeat([]byte{'v'}, 256)
	ad := []byte("keywarden/store/v1/secrets/ns/sa/db")
	ct, err := kr.Seal(pt, ad)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := kr.Open(ct, ad); err != nil {
			b.Fatal(err)
		}
	}
}
