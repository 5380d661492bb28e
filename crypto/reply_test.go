package crypto

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

func sealTo(t *testing.T, k *ReplyKey, payload []byte, c ReplyContext) []byte {
	t.Helper()
	s, err := NewReplySealer(k.PublicKey(), c.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := s.Seal(payload, c)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

func TestReply_roundTrip(t *testing.T) {
	k, err := NewReplyKey()
	if err != nil {
		t.Fatal(err)
	}
	c := ReplyContext{For: "spiffe://td/ns/a/sa/app", Name: "db", Version: "7", ExpiresAt: 1, Nonce: NewReplyNonce(), Seq: 1}
	ct := sealTo(t, k, []byte("pw-sekrit"), c)
	if bytes.Contains(ct, []byte("pw-sekrit")) {
		t.Fatal("the plaintext is visible in the sealed payload")
	}
	pt, err := k.Open(ct, c)
	if err != nil || string(pt) != "pw-sekrit" {
		t.Fatalf("Open = %q, %v", pt, err)
	}
}

// Every way a sealed payload can be moved, replayed or damaged fails closed: ErrDecrypt and
// no plaintext.
func TestReply_failsClosed(t *testing.T) {
	k, _ := NewReplyKey()
	other, _ := NewReplyKey()
	c := ReplyContext{For: "spiffe://td/ns/a/sa/app", Name: "db", Version: "7", ExpiresAt: 100, RenewAfter: 50, Nonce: NewReplyNonce(), Seq: 3}
	ct := sealTo(t, k, []byte("pw-sekrit"), c)
	with := func(f func(*ReplyContext)) ReplyContext { d := c; d.Nonce = bytes.Clone(c.Nonce); f(&d); return d }
	tests := []struct {
		name string
		key  *ReplyKey
		ct   []byte
		c    ReplyContext
	}{
		{"wrong key", other, ct, c},
		{"another workload", k, ct, with(func(d *ReplyContext) { d.For = "spiffe://td/ns/a/sa/other" })},
		{"another secret", k, ct, with(func(d *ReplyContext) { d.Name = "api" })},
		{"another version", k, ct, with(func(d *ReplyContext) { d.Version = "6" })},
		{"a later expiry", k, ct, with(func(d *ReplyContext) { d.ExpiresAt = 200 })},
		{"another renew time", k, ct, with(func(d *ReplyContext) { d.RenewAfter = 60 })},
		{"replayed to another request", k, ct, with(func(d *ReplyContext) { d.Nonce = NewReplyNonce() })},
		{"replayed in the stream", k, ct, with(func(d *ReplyContext) { d.Seq = 4 })},
		{"fields shifted between name and version", k, ct, with(func(d *ReplyContext) { d.Name, d.Version = "db7", "" })},
		{"truncated", k, ct[:len(ct)-1], c},
		{"only the encapsulated key", k, ct[:32], c},
		{"empty", k, nil, c},
		{"one bit flipped", k, func() []byte { b := bytes.Clone(ct); b[len(b)/2] ^= 1; return b }(), c},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pt, err := tt.key.Open(tt.ct, tt.c)
			if !errors.Is(err, ErrDecrypt) || pt != nil {
				t.Fatalf("Open = %q, %v; want ErrDecrypt and no plaintext", pt, err)
			}
		})
	}
}

func TestNewReplySealer_rejects(t *testing.T) {
	k, _ := NewReplyKey()
	tests := []struct {
		name       string
		pub, nonce []byte
		want       string
	}{
		{"no key", nil, NewReplyNonce(), "the public key must be 32 bytes (X25519), got 0"},
		{"short key", k.PublicKey()[:31], NewReplyNonce(), "got 31"},
		{"long key", append(k.PublicKey(), 0), NewReplyNonce(), "got 33"},
		{"short nonce", k.PublicKey(), make([]byte, 15), "the nonce must be 16 to 64 bytes, got 15"},
		{"long nonce", k.PublicKey(), make([]byte, 65), "got 65"},
	}
	// A low-order point passes the curve check and fails at the seal.
	if s, err := NewReplySealer(make([]byte, 32), NewReplyNonce()); err == nil {
		if _, err := s.Seal([]byte("x"), ReplyContext{}); !errors.Is(err, ErrReplyKey) {
			t.Errorf("seal to the zero key: %v; want ErrReplyKey", err)
		}
	} else if !errors.Is(err, ErrReplyKey) {
		t.Errorf("the zero key: %v; want ErrReplyKey", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewReplySealer(tt.pub, tt.nonce)
			if !errors.Is(err, ErrReplyKey) || !bytes.Contains([]byte(err.Error()), []byte(tt.want)) {
				t.Fatalf("err = %v; want ErrReplyKey containing %q", err, tt.want)
			}
		})
	}
}

func TestReplyKey_redacts(t *testing.T) {
	k, _ := NewReplyKey()
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%d", "%x"} {
		if got := fmt.Sprintf(verb, k); got != "crypto.ReplyKey[REDACTED]" {
			t.Errorf("%s: %q", verb, got)
		}
	}
}

func FuzzNewReplySealer(f *testing.F) {
	k, _ := NewReplyKey()
	f.Add(k.PublicKey(), NewReplyNonce())
	f.Add(make([]byte, 32), make([]byte, 16))
	f.Add([]byte{1}, []byte{})
	f.Fuzz(func(t *testing.T, pub, nonce []byte) {
		s, err := NewReplySealer(pub, nonce)
		if err != nil {
			if !errors.Is(err, ErrReplyKey) {
				t.Fatalf("error %v does not match ErrReplyKey", err)
			}
			return
		}
		if _, err := s.Seal([]byte("x"), ReplyContext{Nonce: nonce}); err != nil && !errors.Is(err, ErrReplyKey) {
			t.Fatalf("error %v does not match ErrReplyKey", err)
		}
	})
}
