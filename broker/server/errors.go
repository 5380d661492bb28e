package server

import (
	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/internal/grpcx"
)

// Errors of the admin service with a fixed message. Handlers return domain errors like these;
// grpcx.ToStatus, in the innermost interceptor, decides their codes from their kinds.
var (
	errNoGrantStore  = grpcx.Errorf(grpcx.ErrFailedPrecondition, "this daemon has no admin grant store")
	errNoSecretStore = grpcx.Errorf(grpcx.ErrFailedPrecondition, "this daemon has no embedded secret store")
	errNoRotator     = grpcx.Errorf(grpcx.ErrFailedPrecondition, "this daemon cannot rotate secrets")
	errNoRevoker     = grpcx.Errorf(grpcx.ErrFailedPrecondition, "this daemon cannot revoke")
	errNoAuditLog    = grpcx.Errorf(grpcx.ErrFailedPrecondition, "this daemon keeps no audit log (audit records go to its log)")
	errTailLagging   = grpcx.Errorf(grpcx.ErrResourceExhausted, "the tail fell behind the audit log: reconnect")
	errTailCanceled  = grpcx.Errorf(broker.ErrCanceled, "tail canceled")
)

// invalid is a request the caller must fix. Its message is built from our own validation
// errors and names, never from backend text.
func invalid(format string, args ...any) error {
	return grpcx.Errorf(broker.ErrInvalidArgument, format, args...)
}

// notFound names what the request referred to and the daemon does not have.
func notFound(format string, args ...any) error {
	return grpcx.Errorf(broker.ErrNotFound, format, args...)
}

// internal is a failure of the daemon: msg tells the caller what failed, never why (the
// handler logs that).
func internal(msg string) error {
	return grpcx.Errorf(broker.ErrInternal, "%s", msg)
}
