package crypto

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"

	"github.com/tink-crypto/tink-go/v2/hybrid"
	"github.com/tink-crypto/tink-go/v2/hybrid/hpke"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// Sealed replies: a workload sends an X25519 public key with its request, and the daemon seals
// the secret payload of the response to it with HPKE (RFC 9180, base mode:
// DHKEM-X25519-HKDF-SHA256, HKDF-SHA256, AES-256-GCM, Tink's raw variant). The associated data
// binds the payload to what the response says in clear — for whom, which secret, which
// version, until when — and to the request's nonce and the message's place in its stream, so a
// sealed payload moved to another response, replayed to another request or reordered in a
// stream does not open.

// Sizes of a reply key and of a request nonce.
const (
	ReplyKeySize     = 32 // an X25519 public key
	MinReplyNonce    = 16
	MaxReplyNonce    = 64
	replyContextName = "keywarden/sealed-reply/v1"
)

// ErrReplyKey is a reply key or nonce that cannot be used: wrong size, or not a point on the
// curve. Its message says which.
var ErrReplyKey = errors.New("invalid reply key")

var replyParams = func() *hpke.Parameters {
	p, err := hpke.NewParameters(hpke.ParametersOpts{KEMID: hpke.DHKEM_X25519_HKDF_SHA256, KDFID: hpke.HKDFSHA256, AEADID: hpke.AES256GCM, Variant: hpke.VariantNoPrefix})
	if err != nil {
		panic(err) // constant, valid parameters
	}
	return p
}()

// ReplyContext is what a sealed payload is bound to. Every field is part of the associated
// data; ExpiresAt and RenewAfter are Unix nanoseconds, 0 when unset.
type ReplyContext struct {
	For, Name, Version    string
	ExpiresAt, RenewAfter int64
	Nonce                 []byte
	Seq                   uint64
}

// associatedData encodes c without ambiguity: each field length-prefixed, in a fixed order.
func (c ReplyContext) associatedData() []byte {
	var b bytes.Buffer
	put := func(p []byte) {
		_ = binary.Write(&b, binary.BigEndian, uint32(len(p)))
		b.Write(p)
	}
	put([]byte(replyContextName))
	put([]byte(c.For))
	put([]byte(c.Name))
	put([]byte(c.Version))
	put(c.Nonce)
	_ = binary.Write(&b, binary.BigEndian, c.ExpiresAt)
	_ = binary.Write(&b, binary.BigEndian, c.RenewAfter)
	_ = binary.Write(&b, binary.BigEndian, c.Seq)
	return b.Bytes()
}

// ReplySealer seals payloads to one reply key.
type ReplySealer struct{ enc tink.HybridEncrypt }

// NewReplySealer checks a request's reply key and nonce and returns a sealer for the key.
func NewReplySealer(publicKey, nonce []byte) (*ReplySealer, error) {
	if len(publicKey) != ReplyKeySize {
		return nil, fmt.Errorf("%w: the public key must be %d bytes (X25519), got %d", ErrReplyKey, ReplyKeySize, len(publicKey))
	}
	if len(nonce) < MinReplyNonce || len(nonce) > MaxReplyNonce {
		return nil, fmt.Errorf("%w: the nonce must be %d to %d bytes, got %d", ErrReplyKey, MinReplyNonce, MaxReplyNonce, len(nonce))
	}
	pub, err := hpke.NewPublicKey(publicKey, 0, replyParams)
	if err != nil {
		return nil, fmt.Errorf("%w: not an X25519 public key", ErrReplyKey)
	}
	m := keyset.NewManager()
	id, err := m.AddKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReplyKey, err)
	}
	if err := m.SetPrimary(id); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReplyKey, err)
	}
	h, err := m.Handle()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReplyKey, err)
	}
	enc, err := hybrid.NewHybridEncrypt(h)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReplyKey, err)
	}
	return &ReplySealer{enc: enc}, nil
}

// Seal encrypts payload to the reply key, bound to c. A key the curve accepts but no shared
// secret can come from (a low-order point) fails here with ErrReplyKey.
func (s *ReplySealer) Seal(payload []byte, c ReplyContext) ([]byte, error) {
	ct, err := s.enc.Encrypt(payload, c.associatedData())
	if err != nil {
		return nil, fmt.Errorf("%w: no shared secret can be derived from it", ErrReplyKey)
	}
	return ct, nil
}

// ReplyKey is a workload's key pair for sealed replies. The private key stays in memory; the
// type redacts itself in fmt and log/slog output.
type ReplyKey struct {
	redactor
	dec tink.HybridDecrypt
	pub []byte
}

// NewReplyKey generates a fresh key pair.
func NewReplyKey() (*ReplyKey, error) {
	h, err := keyset.NewHandle(hybrid.DHKEM_X25519_HKDF_SHA256_HKDF_SHA256_AES_256_GCM_Raw_Key_Template())
	if err != nil {
		return nil, fmt.Errorf("reply key: %w", err)
	}
	ph, err := h.Public()
	if err != nil {
		return nil, fmt.Errorf("reply key: %w", err)
	}
	e, err := ph.Primary()
	if err != nil {
		return nil, fmt.Errorf("reply key: %w", err)
	}
	pk, ok := e.Key().(*hpke.PublicKey)
	if !ok {
		return nil, errors.New("reply key: not an HPKE key")
	}
	dec, err := hybrid.NewHybridDecrypt(h)
	if err != nil {
		return nil, fmt.Errorf("reply key: %w", err)
	}
	return &ReplyKey{redactor: redactor{name: "crypto.ReplyKey"}, dec: dec, pub: pk.PublicKeyBytes()}, nil
}

// PublicKey is the key to send with a request.
func (k *ReplyKey) PublicKey() []byte { return bytes.Clone(k.pub) }

// Open decrypts a sealed payload bound to c. Any mismatch — another key, another context, a
// truncated or altered ciphertext — fails with ErrDecrypt and no plaintext.
func (k *ReplyKey) Open(sealed []byte, c ReplyContext) ([]byte, error) {
	pt, err := k.dec.Decrypt(sealed, c.associatedData())
	if err != nil {
		return nil, ErrDecrypt
	}
	return pt, nil
}

// NewReplyNonce returns a fresh random nonce for one request.
func NewReplyNonce() []byte {
	n := make([]byte, MinReplyNonce)
	_, _ = rand.Read(n) // crypto/rand.Read never fails (Go 1.24+)
	return n
}

var _ slog.LogValuer = (*ReplyKey)(nil)
