// Package audit records every authentication, access decision, delivery, rotation, revocation
// and admin action the daemon makes, in a log whose tampering is evident.
//
// Events carry who asked (namespace, service account, pod, SPIFFE ID), what for (secret name,
// delivery), the outcome and the grant that decided it — never tokens or secret values. The
// Recorder interface is what the broker calls; SlogRecorder writes events as structured log
// records; Log is the persistent log.
//
// Log keeps one entry per event in its own bucket of the encrypted store. Each entry holds its
// sequence number, its time, the event and the SHA-256 of the previous entry, and is hashed in
// a canonical JSON form; a head record (last seq and hash) is rewritten with every batch.
// Verify recomputes every hash and link and names the first entry that was modified, removed,
// reordered or inserted. Record only queues: a Run goroutine writes batches, one store
// transaction each, so the request path never waits for a disk sync.
//
// Retention keeps the log bounded: past Config.MaxEntries the oldest entries are dropped and a
// checkpoint entry, chained like any other, records the sequence number and hash of the last
// dropped entry, so the kept part still verifies from its first entry.
//
// Threat model: the store seals every record with AEAD bound to its key, so without the
// key-encryption key an attacker can only delete records, and every deletion (middle, start,
// end, head record) is detected. A holder of the KEK who rewrites the chain consistently from
// some entry to the end is detected only against a head recorded elsewhere: the running
// daemon remembers the head it wrote last, `keywarden audit verify` prints the head, and an
// Anchorer publishes signed anchors of the head (Anchor) to sinks the node may write once but
// not change afterwards (EventSink: Kubernetes Events with create-only RBAC; LogSink: the log
// stream that log shipping keeps). VerifyAnchored then finds a rewrite of any entry at or
// before an anchored one. The anchor key is a separate Ed25519 key on the same node, so an
// attacker with root can sign new anchors for a rewritten log; what they cannot do is take
// back the anchors already published, and two anchors that disagree are reported. Entries
// after the latest anchor, and a node that stops publishing, are not covered.
package audit
