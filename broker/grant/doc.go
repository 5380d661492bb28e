// Package grant is Keywarden's authorization model: the AccessGrant type (which becomes the
// cluster-scoped keywarden.io/v1alpha1 AccessGrant CRD), its strict parser and validator, the
// evaluator that decides whether a workload may receive a named secret, the explainer behind
// `keywarden grant explain`, and the grant sources (a hot-reloaded YAML file for now).
//
// Security decisions, in one place:
//
//   - Default deny. A request is allowed only when an Allow grant matches its subject, the
//     exact secret name and the delivery channel, and no Deny grant matches.
//   - A matching Deny always wins over any number of matching Allows.
//   - Secret names match exactly. There are no prefixes or globs on secret names, so a grant
//     for "foo" never covers "foo000", "foo.bar" or "foo/bar" (the greedy-prefix class of bugs).
//   - Wildcards exist only in subjects, and only as a whole value ("*" namespace or service
//     account) or a whole SPIFFE path segment; a trust domain is never wildcarded.
//   - The Decision for a secret the caller may not see and for a secret that does not exist
//     is identical, so a denial never reveals whether a secret exists.
//   - A malformed grants file never replaces the last good one: the FileSource logs why and
//     keeps serving the previous Set.
//
// This package imports nothing else of Keywarden's: callers pass identities as plain strings.
//
// +groupName=keywarden.io
// +versionName=v1alpha1
package grant
