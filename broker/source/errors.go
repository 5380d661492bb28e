package source

import "errors"

var (
	// ErrNotFound means the source has no such secret. The broker turns it into the same
	// answer as a missing grant for callers, so existence is never revealed.
	ErrNotFound = errors.New("secret not found in source")
	// ErrDeleted means the source says the secret was deleted or destroyed: cached copies must
	// be purged, unlike an outage.
	ErrDeleted = errors.New("secret deleted in source")
	// ErrForbidden means the source refused the daemon access (for example a Vault policy
	// change). It is authoritative and not retried as transient.
	ErrForbidden = errors.New("source denied access")
	// ErrUnavailable means the source could not be reached or answered with a transient error;
	// cached values keep being served until they expire.
	ErrUnavailable = errors.New("source unavailable")
	// ErrUnknownSource means a Ref names a source that is not configured.
	ErrUnknownSource = errors.New("unknown source")
	// ErrInvalidRef means a Ref is malformed.
	ErrInvalidRef = errors.New("invalid secret reference")
)
