package crypto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// WrappedKeysetAssociatedData is the associated data under which the KEK
// encrypts the DEK keyset. It is a constant so that a wrapped keyset can never
// be taken for a record or any other ciphertext made with the same KEK.
const WrappedKeysetAssociatedData = "keywarden/dek-keyset/v1"

// Tink's "TINK" output prefix: one version byte then the big-endian key id.
const (
	tinkPrefixSize    = 5
	tinkPrefixVersion = 0x01
)

// Keyring holds the DEK keyset and the KEK that wraps it. It is safe for
// concurrent use; Rotate swaps the keyset atomically with respect to Seal and
// Open.
type Keyring struct {
	redactor

	kek tink.AEAD

	rotateMu sync.Mutex // serialises Rotate so no rotation is lost

	mu      sync.RWMutex
	handle  *keyset.Handle
	aead    tink.AEAD
	primary uint32
}

// NewKeyring creates a Keyring with a fresh AES256-GCM keyset and returns it
// together with the keyset wrapped by kek (to be persisted by the caller).
func NewKeyring(kek tink.AEAD) (kr *Keyring, wrapped []byte, err error) {
	if kek == nil {
		return nil, nil, errors.New("new keyring: kek is required")
	}
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		return nil, nil, fmt.Errorf("new keyring: new keyset: %w", ErrInvalidKeyset)
	}
	kr, err = newKeyring(kek, h)
	if err != nil {
		return nil, nil, fmt.Errorf("new keyring: %w", err)
	}
	wrapped, err = wrapKeyset(kek, h)
	if err != nil {
		return nil, nil, fmt.Errorf("new keyring: %w", err)
	}
	return kr, wrapped, nil
}

// OpenKeyring unwraps a keyset produced by NewKeyring, Rotate or Wrapped. A
// wrong KEK or any modified byte gives ErrDecrypt; a KEK that could not be
// reached (its error matches ErrKEKUnavailable) gives an error matching
// ErrKEKUnavailable and not ErrDecrypt.
func OpenKeyring(kek tink.AEAD, wrapped []byte) (*Keyring, error) {
	if kek == nil {
		return nil, errors.New("open keyring: kek is required")
	}
	h, err := unwrapKeyset(kek, wrapped)
	if err != nil {
		return nil, fmt.Errorf("open keyring: %w", err)
	}
	kr, err := newKeyring(kek, h)
	if err != nil {
		return nil, fmt.Errorf("open keyring: %w", err)
	}
	return kr, nil
}

func newKeyring(kek tink.AEAD, h *keyset.Handle) (*Keyring, error) {
	a, primary, err := primitive(h)
	if err != nil {
		return nil, err
	}
	return &Keyring{
		redactor: redactor{name: "crypto.Keyring"},
		kek:      kek,
		handle:   h,
		aead:     a,
		primary:  primary,
	}, nil
}

func primitive(h *keyset.Handle) (tink.AEAD, uint32, error) {
	a, err := aead.New(h)
	if err != nil {
		return nil, 0, fmt.Errorf("keyset is not an aead keyset: %w", ErrInvalidKeyset)
	}
	p, err := h.Primary()
	if err != nil {
		return nil, 0, fmt.Errorf("keyset has no primary key: %w", ErrInvalidKeyset)
	}
	return a, p.KeyID(), nil
}

func (k *Keyring) current() (tink.AEAD, *keyset.Handle, uint32) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.aead, k.handle, k.primary
}

// Seal encrypts plaintext under the primary key, authenticating
// associatedData. The result starts with the primary key's id.
func (k *Keyring) Seal(plaintext, associatedData []byte) ([]byte, error) {
	a, _, _ := k.current()
	ct, err := a.Encrypt(plaintext, associatedData)
	if err != nil {
		return nil, errors.New("seal: encryption failed")
	}
	return ct, nil
}

// Open decrypts a ciphertext made by Seal with any key still in the keyring.
// Wrong associated data, an unknown key or any modified bit gives ErrDecrypt
// and a nil slice, never partial plaintext.
func (k *Keyring) Open(ciphertext, associatedData []byte) ([]byte, error) {
	a, _, _ := k.current()
	pt, err := a.Decrypt(ciphertext, associatedData)
	if err != nil {
		return nil, fmt.Errorf("open: %w", ErrDecrypt)
	}
	return pt, nil
}

// PrimaryKeyID returns the Tink key id that Seal currently encrypts under.
func (k *Keyring) PrimaryKeyID() uint32 {
	_, _, p := k.current()
	return p
}

// NeedsReseal reports whether ciphertext was not made under the current
// primary key, i.e. a background re-encryption should Open and Seal it again.
// It only reads the key id prefix; it authenticates nothing.
func (k *Keyring) NeedsReseal(ciphertext []byte) bool {
	id, ok := keyIDOf(ciphertext)
	return !ok || id != k.PrimaryKeyID()
}

func keyIDOf(ciphertext []byte) (uint32, bool) {
	if len(ciphertext) < tinkPrefixSize || ciphertext[0] != tinkPrefixVersion {
		return 0, false
	}
	return binary.BigEndian.Uint32(ciphertext[1:tinkPrefixSize]), true
}

// Rotated returns a new Keyring with a fresh AES256-GCM key added as primary
// (older keys kept for Open) and its wrapped form; k itself is unchanged. A
// store uses it to persist the new keyset before switching to it.
func (k *Keyring) Rotated() (*Keyring, []byte, error) {
	_, h, _ := k.current()
	m := keyset.NewManagerFromHandle(h)
	id, err := m.Add(aead.AES256GCMKeyTemplate())
	if err != nil {
		return nil, nil, fmt.Errorf("rotate: add key: %w", ErrInvalidKeyset)
	}
	if err := m.SetPrimary(id); err != nil {
		return nil, nil, fmt.Errorf("rotate: set primary: %w", ErrInvalidKeyset)
	}
	nh, err := m.Handle()
	if err != nil {
		return nil, nil, fmt.Errorf("rotate: %w", ErrInvalidKeyset)
	}
	nk, err := newKeyring(k.kek, nh)
	if err != nil {
		return nil, nil, fmt.Errorf("rotate: %w", err)
	}
	wrapped, err := wrapKeyset(k.kek, nh)
	if err != nil {
		return nil, nil, fmt.Errorf("rotate: %w", err)
	}
	return nk, wrapped, nil
}

// Rotate adds a fresh AES256-GCM key as the new primary. Ciphertexts made
// under older keys still open. It returns the new wrapped keyset; the caller
// must persist it before relying on ciphertexts sealed after Rotate returns
// (or use Rotated to persist first and switch after).
func (k *Keyring) Rotate() (wrapped []byte, err error) {
	k.rotateMu.Lock()
	defer k.rotateMu.Unlock()
	nk, wrapped, err := k.Rotated()
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	k.handle, k.aead, k.primary = nk.handle, nk.aead, nk.primary
	k.mu.Unlock()
	return wrapped, nil
}

// Wrapped returns the current keyset encrypted by the KEK.
func (k *Keyring) Wrapped() ([]byte, error) {
	_, h, _ := k.current()
	w, err := wrapKeyset(k.kek, h)
	if err != nil {
		return nil, fmt.Errorf("wrap keyset: %w", err)
	}
	return w, nil
}

// wrapKeyset encrypts h with kek through Tink's encrypted keyset writer. Only
// the AEAD ciphertext is kept: Tink's EncryptedKeyset message also carries a
// cleartext, unauthenticated KeysetInfo, and keeping it would leave bits that
// can be flipped without failing to open.
func wrapKeyset(kek tink.AEAD, h *keyset.Handle) ([]byte, error) {
	var w ciphertextOnly
	rec := &recordingKEK{AEAD: kek}
	if err := h.WriteWithAssociatedData(&w, rec, []byte(WrappedKeysetAssociatedData)); err != nil {
		if errors.Is(rec.err, ErrKEKUnavailable) {
			return nil, fmt.Errorf("kek encryption failed: %w", rec.err)
		}
		return nil, errors.New("kek encryption failed")
	}
	if len(w.ct) == 0 {
		return nil, errors.New("kek encryption produced no ciphertext")
	}
	return w.ct, nil
}

func unwrapKeyset(kek tink.AEAD, wrapped []byte) (*keyset.Handle, error) {
	if len(wrapped) == 0 {
		return nil, fmt.Errorf("empty wrapped keyset: %w", ErrDecrypt)
	}
	r := ciphertextOnly{ct: bytes.Clone(wrapped)}
	rec := &recordingKEK{AEAD: kek}
	h, err := keyset.ReadWithAssociatedData(&r, rec, []byte(WrappedKeysetAssociatedData))
	if err != nil {
		// A KEK that could not be asked (Vault Transit down or refusing the
		// daemon) says nothing about the bytes: keep that apart from ErrDecrypt
		// so a caller does not take an outage for a corrupt store.
		if errors.Is(rec.err, ErrKEKUnavailable) {
			return nil, fmt.Errorf("unwrap keyset: %w", rec.err)
		}
		// Either the KEK does not authenticate the bytes (wrong KEK, tamper)
		// or they decrypt to something that is not a keyset, which only a
		// tampered-but-authentic blob could do.
		return nil, fmt.Errorf("unwrap keyset: %w", ErrDecrypt)
	}
	return h, nil
}

// recordingKEK remembers the KEK's last error: Tink's keyset reader and
// writer flatten it to text, losing ErrKEKUnavailable.
type recordingKEK struct {
	tink.AEAD
	err error
}

func (r *recordingKEK) Encrypt(plaintext, associatedData []byte) ([]byte, error) {
	ct, err := r.AEAD.Encrypt(plaintext, associatedData)
	r.err = err
	return ct, err
}

func (r *recordingKEK) Decrypt(ciphertext, associatedData []byte) ([]byte, error) {
	pt, err := r.AEAD.Decrypt(ciphertext, associatedData)
	r.err = err
	return pt, err
}

// ciphertextOnly is a keyset.Reader/Writer that keeps only the encrypted
// keyset bytes of tinkpb.EncryptedKeyset.
type ciphertextOnly struct{ ct []byte }

var (
	_ keyset.Reader = (*ciphertextOnly)(nil)
	_ keyset.Writer = (*ciphertextOnly)(nil)
)

func (c *ciphertextOnly) Read() (*tinkpb.Keyset, error) {
	return nil, errors.New("cleartext keysets are not supported")
}

func (c *ciphertextOnly) ReadEncrypted() (*tinkpb.EncryptedKeyset, error) {
	return &tinkpb.EncryptedKeyset{EncryptedKeyset: c.ct}, nil
}

func (c *ciphertextOnly) Write(*tinkpb.Keyset) error {
	return errors.New("cleartext keysets are not supported")
}

func (c *ciphertextOnly) WriteEncrypted(ks *tinkpb.EncryptedKeyset) error {
	c.ct = bytes.Clone(ks.GetEncryptedKeyset())
	return nil
}

// KeyIDs returns the ids of every key in the keyset (the primary and the older keys kept for
// Open), in keyset order.
func (k *Keyring) KeyIDs() []uint32 { _, h, _ := k.current(); return keyIDs(h) }

func keyIDs(h *keyset.Handle) []uint32 {
	info := h.KeysetInfo().GetKeyInfo()
	ids := make([]uint32, 0, len(info))
	for _, ki := range info {
		ids = append(ids, ki.GetKeyId())
	}
	return ids
}

// Pruned returns a new Keyring holding only the primary key, and its wrapped form; k itself is
// unchanged. The older keys are deleted from the keyset, not merely disabled, so a copy of the
// file taken later holds no key material for them. The caller must first have rewritten
// every ciphertext made under an older key: they no longer open with the result.
func (k *Keyring) Pruned() (*Keyring, []byte, error) {
	_, h, primary := k.current()
	m := keyset.NewManagerFromHandle(h)
	for _, id := range keyIDs(h) {
		if id == primary {
			continue
		}
		if err := m.Delete(id); err != nil {
			return nil, nil, fmt.Errorf("prune keyset: delete key: %w", ErrInvalidKeyset)
		}
	}
	nh, err := m.Handle()
	if err != nil {
		return nil, nil, fmt.Errorf("prune keyset: %w", ErrInvalidKeyset)
	}
	return k.rebuilt(nh, k.kek, "prune keyset")
}

// Rewrapped returns a new Keyring with the same keys, wrapped by kek, and its wrapped form; k
// itself is unchanged. Passing the current KEK again re-encrypts the keyset under the KEK's
// current primary key (for Vault Transit: the latest key version).
func (k *Keyring) Rewrapped(kek tink.AEAD) (*Keyring, []byte, error) {
	if kek == nil {
		return nil, nil, errors.New("rewrap keyset: kek is required")
	}
	_, h, _ := k.current()
	return k.rebuilt(h, kek, "rewrap keyset")
}

func (k *Keyring) rebuilt(h *keyset.Handle, kek tink.AEAD, op string) (*Keyring, []byte, error) {
	nk, err := newKeyring(kek, h)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", op, err)
	}
	wrapped, err := wrapKeyset(kek, h)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", op, err)
	}
	return nk, wrapped, nil
}

// WrappingKeyOf names the KEK key a wrapped keyset was encrypted under, from its cleartext
// prefix, without decrypting anything: "vault:v<N>" for Vault Transit, "tink:<key id>" for a
// local Tink keyset, "" when neither prefix is there.
func WrappingKeyOf(wrapped []byte) string {
	if bytes.HasPrefix(wrapped, []byte("vault:v")) {
		if i := bytes.IndexByte(wrapped[len("vault:v"):], ':'); i > 0 {
			return string(wrapped[:len("vault:v")+i])
		}
		return ""
	}
	if id, ok := keyIDOf(wrapped); ok {
		return fmt.Sprintf("tink:%d", id)
	}
	return ""
}
