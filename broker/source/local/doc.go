// Package local is the embedded secret store: a versioned key/value store kept in the daemon's
// own encrypted bbolt file. It backs `keywarden dev` and single machines without Vault.
//
// Unlike the cache, this store is the only copy of its data, so a file that cannot be opened is
// never replaced silently: the daemon refuses to start and says how to recover.
package local
