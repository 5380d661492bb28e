package server

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/broker"
)

// ToStatus is the one mapping from domain errors to gRPC status errors. Broker errors carry a
// caller-safe message; anything else becomes Internal with a fixed message, so backend error
// text never reaches a workload.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var be *broker.Error
	if errors.As(err, &be) {
		return status.Error(codeOf(err), be.Error())
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
	default:
		return codes.Internal
	}
}
