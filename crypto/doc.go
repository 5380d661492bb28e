// Package crypto holds Keywarden's key hierarchy, built only from Tink primitives.
//
// A key-encryption key (KEK, any [tink.AEAD]: a local keyset file for dev and
// single machines, or a Vault Transit key through Tink's Vault KMS client)
// encrypts a Tink DEK keyset. The DEK keyset, held in a [Keyring], encrypts
// records. Rotating the DEK adds a new primary key; ciphertexts made under older
// keys stay readable because Tink prefixes every ciphertext with its key id;
// [Keyring.Pruned] deletes the older keys once the caller has re-sealed what
// used them, and [Keyring.Rewrapped] wraps the same keyset under another KEK.
// [LocalKEKFile] rotates the local KEK file in the two steps (add a primary,
// later retire the old keys) that keep a crash harmless.
//
// The wrapped (KEK-encrypted) DEK keyset is bound to the constant associated
// data [WrappedKeysetAssociatedData], so a wrapped keyset cannot be confused
// with any other ciphertext made under the same KEK (a record, another
// product's keyset).
//
// Every type here that holds key material ([Keyring], the AEAD returned by
// [LoadLocalKEK]) redacts itself in fmt (all verbs) and log/slog output.
//
// This package imports nothing of Keywarden's.
package crypto
