package store

import "errors"

var (
	// ErrNotFound is returned when a bucket or key does not exist.
	ErrNotFound = errors.New("not found")

	// ErrCorrupt is returned when a record or the store's metadata does not
	// authenticate or parse: a flipped bit, a record moved to another key, a
	// KEK that does not match the store, or a failed consistency check.
	ErrCorrupt = errors.New("store corrupt")

	// ErrLocked is returned by Open when another process holds the file lock
	// for longer than Config.LockTimeout.
	ErrLocked = errors.New("store locked")

	// ErrUnreadable is returned by Open when the file is not a usable bbolt
	// database (not a bbolt file, truncated, both meta pages invalid).
	ErrUnreadable = errors.New("store file unreadable")

	// ErrSchemaTooNew is returned by Open when the file was written by a newer
	// Keywarden with a schema this code does not know.
	ErrSchemaTooNew = errors.New("store schema too new")

	// ErrInvalidKey is returned for an empty, oversized or reserved bucket or
	// key name, or one containing NUL (or '/' in a bucket name).
	ErrInvalidKey = errors.New("invalid bucket or key name")

	// ErrClosed is returned by every method of a closed DB.
	ErrClosed = errors.New("store closed")

	// ErrKEKUnavailable is returned by Open when the key-encryption key could
	// not be asked to unwrap (or wrap) the DEK keyset: Vault Transit
	// unreachable, sealed or refusing the daemon. It says nothing about the
	// file, so OpenOrQuarantine never quarantines on it. Errors carrying it
	// also match crypto.ErrKEKUnavailable.
	ErrKEKUnavailable = errors.New("store key-encryption key unavailable")
)
