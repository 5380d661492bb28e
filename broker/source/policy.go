package source

import (
	"context"
	"errors"
)

// IsAuthoritative is the one policy for source errors. It reports whether err is the source's
// definite answer about the secret — not found, deleted, or access refused to this node — on
// which every consumer stops serving it: the cache purges its copy, the broker answers
// NotFound or PermissionDenied, a CSI volume removes its files. Every other error (the source
// is unavailable, a timeout, a cancellation, a bug) is transient: the last good value is kept
// until it expires and the fetch is retried.
func IsAuthoritative(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrDeleted) || errors.Is(err, ErrForbidden)
}

// classes are the sentinels Class reduces errors to, authoritative ones first.
var classes = []error{ErrNotFound, ErrDeleted, ErrForbidden, ErrUnavailable, ErrUnknownSource, context.DeadlineExceeded, context.Canceled}

// Class returns the sentinel err belongs to (ErrNotFound, ErrDeleted, ErrForbidden,
// ErrUnavailable, ErrUnknownSource, context.DeadlineExceeded or context.Canceled), or nil when
// it belongs to none. The sentinel carries no backend text.
func Class(err error) error {
	for _, c := range classes {
		if errors.Is(err, c) {
			return c
		}
	}
	return nil
}

// Reason is err reduced to the text of its class, "fetch failed" when it has none, for status
// pages and admin answers: backend error text never leaves the daemon.
func Reason(err error) string {
	if c := Class(err); c != nil {
		return c.Error()
	}
	return "fetch failed"
}
