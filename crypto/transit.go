package crypto

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/hashicorp/vault/api"
	"github.com/tink-crypto/tink-go-hcvault/v2/integration/hcvault"
	"github.com/tink-crypto/tink-go/v2/tink"
)

var (
	// ErrKEKUnavailable means the remote KEK (Vault Transit) could not be reached or refused
	// the daemon: unlike ErrDecrypt it says nothing about the ciphertext, so callers must not
	// treat the data as corrupt.
	ErrKEKUnavailable = errors.New("key-encryption key unavailable")
	// ErrTransitKeyNotDerived means the Transit key does not use key derivation. Transit
	// ignores the "context" (Tink's associated data) for such keys, so a ciphertext could be
	// moved to another record undetected: the key is refused.
	ErrTransitKeyNotDerived = errors.New("transit key is not derived")
)

// TransitKEKConfig configures NewTransitKEK.
type TransitKEKConfig struct {
	// Client talks to Vault with a token allowed to read <Mount>/keys/<Key> and update
	// <Mount>/encrypt/<Key> and <Mount>/decrypt/<Key>. The token may change between calls
	// (renewal, re-login): every call uses the client's current token. Required.
	Client *api.Client
	// Mount is the Transit engine's mount path. Default "transit".
	Mount string
	// Key is the Transit key name. It must be created with derived=true. Required.
	Key string
}

// NewTransitKEK returns a KEK backed by a Vault Transit key through Tink's Vault KMS client,
// so the DEK keyset on disk is useless without Vault.
//
// Tink sends the associated data as Transit's "context", which Vault uses to derive the key
// only when the key has derived=true, and silently ignores otherwise. NewTransitKEK therefore
// reads the key's configuration and refuses a key that is not derived
// (ErrTransitKeyNotDerived), and the returned AEAD refuses empty associated data. Decrypting
// with another associated data derives another key and fails with ErrDecrypt.
func NewTransitKEK(ctx context.Context, cfg TransitKEKConfig) (tink.AEAD, error) {
	if cfg.Client == nil {
		return nil, errors.New("transit kek: vault client is required")
	}
	if cfg.Mount == "" {
		cfg.Mount = "transit"
	}
	if cfg.Key == "" || strings.ContainsAny(cfg.Key, "/?#% ") || strings.ContainsAny(cfg.Mount, "?#% ") ||
		strings.HasPrefix(cfg.Mount, "/") || strings.HasSuffix(cfg.Mount, "/") {
		return nil, fmt.Errorf("transit kek: invalid mount %q or key %q", cfg.Mount, cfg.Key)
	}
	s, err := cfg.Client.Logical().ReadWithContext(ctx, cfg.Mount+"/keys/"+cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("transit kek: read key %s/keys/%s: %w", cfg.Mount, cfg.Key, vaultErr(err, false))
	}
	if s == nil || s.Data == nil {
		return nil, fmt.Errorf("transit kek: key %s/keys/%s does not exist: %w", cfg.Mount, cfg.Key, ErrKEKUnavailable)
	}
	if derived, _ := s.Data["derived"].(bool); !derived {
		return nil, fmt.Errorf("transit kek: key %s/keys/%s: %w; create it with `vault write %s/keys/%s derived=true`",
			cfg.Mount, cfg.Key, ErrTransitKeyNotDerived, cfg.Mount, cfg.Key)
	}
	a, err := hcvault.NewAEAD("/"+cfg.Mount+"/keys/"+cfg.Key, cfg.Client.Logical(), hcvault.WithLegacyContextParamater())
	if err != nil {
		return nil, fmt.Errorf("transit kek: %w", err)
	}
	return &transitAEAD{redactor: redactor{name: "crypto.TransitKEK"}, a: a}, nil
}

type transitAEAD struct {
	redactor
	a tink.AEAD
}

var _ tink.AEAD = (*transitAEAD)(nil)

// Encrypt implements tink.AEAD.
func (t *transitAEAD) Encrypt(plaintext, associatedData []byte) ([]byte, error) {
	if len(associatedData) == 0 {
		return nil, errors.New("transit kek: associated data is required (it selects the derived key)")
	}
	ct, err := t.a.Encrypt(plaintext, associatedData)
	if err != nil {
		return nil, fmt.Errorf("transit kek: encrypt: %w", vaultErr(err, false))
	}
	return ct, nil
}

// Decrypt implements tink.AEAD.
func (t *transitAEAD) Decrypt(ciphertext, associatedData []byte) ([]byte, error) {
	if len(associatedData) == 0 {
		return nil, fmt.Errorf("transit kek: decrypt: %w", ErrDecrypt)
	}
	pt, err := t.a.Decrypt(ciphertext, associatedData)
	if err != nil {
		return nil, fmt.Errorf("transit kek: decrypt: %w", vaultErr(err, true))
	}
	return pt, nil
}

// vaultErr hides Vault's error text (which can echo request fields) behind our sentinels: a
// 400 on decrypt is a ciphertext that does not authenticate under this key and context;
// anything else is the KEK being unavailable.
func vaultErr(err error, decrypt bool) error {
	var re *api.ResponseError
	if errors.As(err, &re) {
		if decrypt && re.StatusCode == http.StatusBadRequest {
			return ErrDecrypt
		}
		return fmt.Errorf("%w: vault answered http %d", ErrKEKUnavailable, re.StatusCode)
	}
	var se *json.SyntaxError
	if decrypt && errors.As(err, &se) {
		return ErrDecrypt
	}
	return fmt.Errorf("%w: vault unreachable", ErrKEKUnavailable)
}
