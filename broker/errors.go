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

// Error is a broker error: a kind for the transport to map and a message for the caller. An
// error caused by a source also Is the source's error class (source.Class), so that consumers
// apply the one source-error policy, source.IsAuthoritative, to what the broker returns.
type Error struct {
	kind  error
	class error // source error class, or nil
	msg   string
}

func newError(kind error, msg string) *Error { return &Error{kind: kind, msg: msg} }

// Error returns the caller-safe message.
func (e *Error) Error() string { return e.msg }

// Is reports whether target is the error's kind or its source error class.
func (e *Error) Is(target error) bool {
	return target == e.kind || (e.class != nil && target == e.class)
}
