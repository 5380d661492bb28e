package broker

import "errors"

// Error kinds. Every error the broker returns to a transport Is exactly one of them, and its
// Error() text is safe to show the caller: it never reveals whether a secret the caller may not
// see exists, and never contains tokens, secret values or backend error text.
var (
	ErrInvalidArgument  = errors.New("invalid argument")
	ErrUnauthenticated  = errors.New("unauthenticated")
	ErrPermissionDenied = errors.New("permission denied")
	ErrNotFound         = errors.New("not found")
	ErrUnavailable      = errors.New("unavailable")
	ErrCanceled         = errors.New("canceled")
	ErrInternal         = errors.New("internal error")
)

// Error is a broker error: a kind for the transport to map and a message for the caller.
type Error struct {
	kind error
	msg  string
}

func newError(kind error, msg string) *Error { return &Error{kind: kind, msg: msg} }

// Error returns the caller-safe message.
func (e *Error) Error() string { return e.msg }

// Is reports whether target is the error's kind.
func (e *Error) Is(target error) bool { return target == e.kind }
