package crypto

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"

	"path/filepath"

	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/signature"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// maxPublicKeysetSize bounds a public keyset handed to VerifySignature (it comes from
// untrusted input). An Ed25519 public keyset is about a hundred bytes.
const maxPublicKeysetSize = 4096

// SigningKey is an Ed25519 Tink signature keyset kept apart from the KEK. It signs audit
// anchors: a record of the audit log's head published off the node, so that a later rewrite
// of the log by someone who holds the KEK no longer matches what was published. The private
// key lives on the node like the local KEK does; what protects an anchor is that it was
// published where the node cannot change it, not the secrecy of this key (see docs/security.md).
type SigningKey struct {
	redactor
	s      tink.Signer
	public []byte
}

// LoadSigningKey reads a cleartext Tink signature keyset (JSON) from path, with the same
// checks as LoadLocalKEK. A missing file matches ErrSigningKeyNotFound and fs.ErrNotExist.
func LoadSigningKey(path string) (*SigningKey, error) {
	h, err := readKeysetFile(path, "signing key", ErrSigningKeyNotFound)
	if err != nil {
		return nil, err
	}
	k, err := newSigningKey(h)
	if err != nil {
		return nil, fmt.Errorf("load signing key %s: %w", path, err)
	}
	return k, nil
}

// LoadOrCreateSigningKey is LoadSigningKey, except that a missing file is created (mode 0600)
// with a fresh Ed25519 keyset, published atomically like the local KEK: two processes racing
// to create it end up with the same key. The parent directory must exist.
func LoadOrCreateSigningKey(path string) (*SigningKey, error) {
	k, err := LoadSigningKey(path)
	if err == nil || !errors.Is(err, ErrSigningKeyNotFound) {
		return k, err
	}
	h, err := keyset.NewHandle(signature.ED25519KeyTemplate())
	if err != nil {
		return nil, fmt.Errorf("create signing key: new keyset: %w", ErrInvalidKeyset)
	}
	var buf bytes.Buffer
	if err := insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(&buf)); err != nil {
		return nil, fmt.Errorf("create signing key: encode keyset: %w", ErrInvalidKeyset)
	}
	if err := publishFile(filepath.Dir(path), path, buf.Bytes()); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return LoadSigningKey(path)
		}
		return nil, fmt.Errorf("create signing key: %w", err)
	}
	return newSigningKey(h)
}

func newSigningKey(h *keyset.Handle) (*SigningKey, error) {
	s, err := signature.NewSigner(h)
	if err != nil {
		return nil, fmt.Errorf("keyset is not a signature keyset: %w", ErrInvalidKeyset)
	}
	pub, err := h.Public()
	if err != nil {
		return nil, fmt.Errorf("public keyset: %w", ErrInvalidKeyset)
	}
	var buf bytes.Buffer
	if err := pub.WriteWithNoSecrets(keyset.NewBinaryWriter(&buf)); err != nil {
		return nil, fmt.Errorf("encode public keyset: %w", ErrInvalidKeyset)
	}
	return &SigningKey{redactor: redactor{name: "crypto.SigningKey"}, s: s, public: buf.Bytes()}, nil
}

// Sign signs data.
func (k *SigningKey) Sign(data []byte) ([]byte, error) {
	sig, err := k.s.Sign(data)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", ErrInvalidKeyset)
	}
	return sig, nil
}

// PublicKeyset is the public half as a binary Tink keyset: what VerifySignature takes.
func (k *SigningKey) PublicKeyset() []byte { return bytes.Clone(k.public) }

// Fingerprint is KeyFingerprint of the public keyset.
func (k *SigningKey) Fingerprint() string { return KeyFingerprint(k.public) }

// KeyFingerprint is the hex SHA-256 of a binary public keyset: short enough for an operator
// to record and compare.
func KeyFingerprint(publicKeyset []byte) string {
	sum := sha256.Sum256(publicKeyset)
	return hex.EncodeToString(sum[:])
}

// VerifySignature checks sig over data with a binary public keyset (as PublicKeyset returns).
// A keyset that is not a public signature keyset, or one holding secret key material, is
// ErrInvalidKeyset; a signature that does not verify is ErrBadSignature.
func VerifySignature(publicKeyset, data, sig []byte) error {
	if len(publicKeyset) == 0 || len(publicKeyset) > maxPublicKeysetSize {
		return fmt.Errorf("public keyset of %d bytes: %w", len(publicKeyset), ErrInvalidKeyset)
	}
	h, err := keyset.ReadWithNoSecrets(keyset.NewBinaryReader(bytes.NewReader(publicKeyset)))
	if err != nil {
		return fmt.Errorf("not a public tink keyset: %w", ErrInvalidKeyset)
	}
	v, err := signature.NewVerifier(h)
	if err != nil {
		return fmt.Errorf("not a signature keyset: %w", ErrInvalidKeyset)
	}
	if err := v.Verify(sig, data); err != nil {
		return ErrBadSignature
	}
	return nil
}
