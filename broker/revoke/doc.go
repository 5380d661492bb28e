// Package revoke lets an administrator stop delivery at once: of one secret to everyone, or of
// every secret to one workload.
//
// A revocation is enforced as a Deny grant in its own grant source ("revoked"), so it goes
// through the one evaluator every request and watch stream already uses: Deny wins over any
// Allow, open watch streams re-check their grants when the source changes and end with
// PermissionDenied, and `keywarden grant list` / `explain` show the revocation by name. A
// secret's cached values are dropped as well. A workload revocation covers every secret name
// that the other grant sources mention; Run re-derives it whenever those grants change, so a
// grant added later is covered too. Revocations are kept in the daemon's encrypted state store
// (bucket "revoked") and put back in force by New, before the broker serves, so a restart does
// not lift them; Lift removes them from the store.
package revoke
