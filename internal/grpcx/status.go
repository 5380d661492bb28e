package grpcx

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/broker"
)

// ToStatus is the one mapping from domain errors to gRPC status errors. Broker errors and
// Errors carry a caller-safe message; anything else becomes Internal with a fixed message, so
// backend error text never reaches a caller. A status error passes through unchanged.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	// The message is the safe error's own, not the chain's: wrapping adds internal context.
	if be := (*broker.Error)(nil); errors.As(err, &be) {
		return status.Error(codeOf(err), be.Error())
	}
	if ee := (*Error)(nil); errors.As(err, &ee) {
		return status.Error(codeOf(ee), ee.Error())
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "request canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	}
	return status.Error(codes.Internal, "internal error")
}

func codeOf(err error) codes.Code {
	switch {
	case errors.Is(err, broker.ErrInvalidArgument):
		return codes.InvalidArgument
	case errors.Is(err, broker.ErrUnauthenticated):
		return codes.Unauthenticated
	case errors.Is(err, broker.ErrPermissionDenied):
		return codes.PermissionDenied
	case errors.Is(err, broker.ErrNotFound):
		return codes.NotFound
	case errors.Is(err, broker.ErrUnavailable):
		return codes.Unavailable
	case errors.Is(err, broker.ErrCanceled):
		return codes.Canceled
	case errors.Is(err, ErrFailedPrecondition):
		return codes.FailedPrecondition
	case errors.Is(err, ErrResourceExhausted):
		return codes.ResourceExhausted
	default:
		return codes.Internal
	}
}

// StatusUnary maps every error a handler returns through ToStatus, so handlers return domain
// errors and the codes are decided here. It runs innermost, next to the handler, so the
// interceptors around it see the status.
func StatusUnary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		resp, err := h(ctx, req)
		return resp, ToStatus(err)
	}
}

// StatusStream is StatusUnary for streams.
func StatusStream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return ToStatus(h(srv, ss))
	}
}
