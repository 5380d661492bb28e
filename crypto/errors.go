package crypto

import "errors"

var (
	// ErrDecrypt is returned when a ciphertext or a wrapped keyset does not
	// authenticate: wrong key, wrong associated data, or tampered bytes. The
	// caller never receives partial or garbage plaintext with it.
	ErrDecrypt = errors.New("decryption failed")

	// ErrInsecurePermissions is returned when a local keyset file is
	// accessible by group or others. The message names the path, the current
	// mode and the chmod command that fixes it.
	ErrInsecurePermissions = errors.New("insecure file permissions")

	// ErrInvalidKeyset is returned when a file or blob is not a usable Tink
	// AEAD keyset. Keywarden never replaces such a file with a new key.
	ErrInvalidKeyset = errors.New("invalid keyset")

	// ErrKEKNotFound is returned by LoadLocalKEK when the keyset file does not
	// exist. Errors carrying it also match fs.ErrNotExist.
	ErrKEKNotFound = errors.New("kek keyset file not found")
)

var (
	// ErrBadSignature is returned by VerifySignature when a signature does not verify under
	// the given public keyset.
	ErrBadSignature = errors.New("signature does not verify")

	// ErrSigningKeyNotFound is returned by LoadSigningKey when the keyset file does not exist.
	// Errors carrying it also match fs.ErrNotExist.
	ErrSigningKeyNotFound = errors.New("signing keyset file not found")
)
