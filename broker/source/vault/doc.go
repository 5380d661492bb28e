// Package vault is the HashiCorp Vault secret source.
//
// The daemon logs in with nothing static: its own projected service-account token, re-read
// from its file before every login, through Vault's Kubernetes or JWT auth method. The Vault
// token is renewed at ⅔ of its TTL on the injected clock and replaced by a fresh login when
// renewal fails, hits the token's max TTL, or a data call answers 403 and a lookup of the
// token says it is no longer valid (revoked out of band).
//
// A source.Ref's Path is a vaultref string. KV v1 and v2 secrets are read whole and reduced to
// the chosen keys; a cached KV v2 secret is re-read when its metadata's current_version
// changed (the rotation engine polls on a jittered interval), and in any case on every 10th
// poll or when read more than 10 minutes ago, so losing data-read permission (a 403 there is
// authoritative) is noticed even while the metadata stays readable. Leased secrets (database
// credentials, PKI certificates, any engine that answers with a lease) are renewed at ⅔ of the
// lease TTL plus jitter, re-issued when renewal is refused, capped by max_ttl, or the lease is
// not renewable, and the replaced lease is revoked after a grace period. Leases and pending
// revocations are recorded in the encrypted store, so a restart neither orphans nor revokes
// leases in use.
//
// Every answer is mapped to source.ErrNotFound, ErrDeleted (KV v2 404 with deletion_time or
// destroyed), ErrForbidden (403 with a valid token) or ErrUnavailable (network, TLS, timeout,
// 429, 5xx, sealed, response too large). Vault's own error text and the Vault token never
// reach an error, a log line or a metric label. Requests pass a per-Vault priority semaphore
// (fetches a caller waits for first, background refreshes after) and a token bucket; 429 and
// 503 answers pause background refreshes with jittered backoff.
package vault
