package grpcx

import (
	"errors"
	"fmt"
)

// Error kinds of the edge, beside the broker's (broker.ErrInvalidArgument, broker.ErrNotFound,
// ...): conditions that only a transport reports.
var (
	// ErrFailedPrecondition: the daemon is not set up for the call (no grant store, no audit log).
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrResourceExhausted: the caller asked for more than the daemon gives (a tail fell behind).
	ErrResourceExhausted = errors.New("resource exhausted")
)

// Error is a caller-safe error: a kind that ToStatus maps to a code, and a message for the
// caller. Build it only from names and fixed phrases, never from backend error text.
type Error struct {
	kind error
	msg  string
}

// Errorf returns an Error of the given kind (ErrFailedPrecondition, broker.ErrInvalidArgument,
// ...) whose message is formatted from format and args.
func Errorf(kind error, format string, args ...any) error {
	return &Error{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// Error returns the caller-safe message.
func (e *Error) Error() string { return e.msg }

// Is reports whether target is the error's kind.
func (e *Error) Is(target error) bool { return target == e.kind }
