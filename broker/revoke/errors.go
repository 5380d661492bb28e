package revoke

import "errors"

var (
	// ErrInvalidTarget reports a target that names nothing, or more than one thing.
	ErrInvalidTarget = errors.New("invalid revocation target")
	// ErrNotRevoked reports a lift of a target that is not revoked.
	ErrNotRevoked = errors.New("not revoked")
	// ErrInvalidConfig reports a Config missing a required field.
	ErrInvalidConfig = errors.New("invalid revoke config")
)
