// Package source defines where secrets come from: the Source interface that every backend
// (the embedded local store, Vault) implements, the Ref that names a secret inside a source, and
// the Value type that carries secret bytes without ever printing them.
//
// Sources know nothing about callers or grants: the broker decides who may read what, and the
// rotation engine decides when to fetch again.
package source
