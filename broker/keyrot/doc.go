// Package keyrot rotates the keys of the daemon's stores while it serves: the DEK keyset of
// every store (a new primary key, records re-sealed in the background, old keys deleted once
// nothing uses them) and the KEK that wraps those keysets (a new key, every keyset re-wrapped,
// old keys retired).
//
// The order of the steps is what keeps a kill -9 at any point harmless; the store and the KEK
// file each persist their own progress (broker/store's Reseal, crypto.LocalKEKFile), and Run
// finishes an interrupted rotation when the daemon starts again.
package keyrot
