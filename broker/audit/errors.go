package audit

import "errors"

var (
	// ErrInvalidConfig reports a Config missing a required field or with a bad limit.
	ErrInvalidConfig = errors.New("invalid audit log config")

	// ErrTampered is matched by every *VerifyError: the log was modified, cut, reordered or
	// extended outside the Log.
	ErrTampered = errors.New("audit log tampered")

	// ErrLagging ends a Subscription whose reader fell too far behind.
	ErrLagging = errors.New("audit subscriber fell behind")
)

// ErrNoAnchors is returned by the anchor checks when none of the anchors given is of the node.
var ErrNoAnchors = errors.New("no audit anchors of the node")
