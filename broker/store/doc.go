// Package store is Keywarden's on-disk state: one bbolt file in which every
// value is Tink AEAD ciphertext made by a crypto.Keyring.
//
// Each value is sealed with the associated data
// "keywarden/store/v<schema>/<bucket>/<key>", so a record copied to another
// key or bucket, or a bit flipped on disk, fails to decrypt and is reported as
// ErrCorrupt, never returned as a zero value. Bucket names may not contain
// '/', which keeps that string unambiguous.
//
// The DEK keyset lives in the reserved meta bucket, wrapped by the KEK given in
// Config, next to the schema version. The bbolt file lock stops a second
// daemon on the same data directory (a DaemonSet surge): it waits
// Config.LockTimeout and then fails with ErrLocked.
//
// Keys rotate while the store serves: RotateDEK persists a new primary DEK key (and a pending
// re-seal) before sealing with it; Reseal re-encrypts the records under older keys in bounded
// batches, recording its progress in the meta bucket in each batch's transaction, and deletes
// the older keys only in a transaction that has checked no record uses them; RewrapKeyset
// re-wraps the keyset under another KEK. A crash between any two steps leaves every record
// readable, and the next Reseal resumes (broker/keyrot drives these for the daemon).
//
// Consumers keep their records in a typed Bucket[T] (NewBucket): one JSON codec for every
// bucket, Prefix for several record kinds in one bucket, Update/View for transactions. The
// byte-level DB.Get/Put/Delete/List stay for this package's tests and for tests elsewhere that
// play an attacker rewriting records.
//
// This is the only package that imports bbolt; its error types stay inside.
package store
