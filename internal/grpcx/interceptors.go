package grpcx

import (
	"context"
	"log/slog"
	"runtime/debug"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Log attribute keys, defined once.
const (
	attrMethod   = "method"
	attrCode     = "code"
	attrDuration = "duration"
	attrMessage  = "message"
	attrStack    = "stack"
)

// Observer records the outcome of every call (metrics). Its methods must be safe for
// concurrent use.
type Observer interface {
	Observe(method string, code codes.Code, d time.Duration)
}

// maxCallAttrs bounds what Annotate keeps for one call: the caller's identity, not a payload.
const maxCallAttrs = 4

// callInfo is placed in the context by the logging interceptor, outside every other
// interceptor, and filled in by Annotate (authentication) so the log line of a call names its
// caller. It is written before the handler returns and read after, on the call's goroutine.
type callInfo struct {
	attrs [maxCallAttrs]slog.Attr
	n     int
}

type callInfoKey struct{}

// Annotate adds attrs to the log record of the call in ctx, for example the authenticated
// caller's namespace. Outside a call logged by LogUnary or LogStream it does nothing; attributes
// beyond the first few are dropped. Never pass tokens, secret values or request bodies.
func Annotate(ctx context.Context, attrs ...slog.Attr) {
	ci, ok := ctx.Value(callInfoKey{}).(*callInfo)
	if !ok {
		return
	}
	ci.n += copy(ci.attrs[ci.n:], attrs)
}

// WithContext returns ss with its context replaced by ctx, for stream interceptors that add
// values to the context.
func WithContext(ss grpc.ServerStream, ctx context.Context) grpc.ServerStream {
	return &ctxStream{ServerStream: ss, ctx: ctx}
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }

// recovered turns a panic into Internal. The panic value is not logged: it could hold request
// data; the stack is enough to find the bug.
func recovered(log *slog.Logger, method string, err *error) {
	if r := recover(); r != nil {
		log.Error("panic in handler", slog.String(attrMethod, method), slog.String(attrStack, string(debug.Stack())))
		*err = status.Error(codes.Internal, "internal error")
	}
}

// RecoverUnary converts handler panics into Internal errors; the server keeps serving.
func RecoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer recovered(log, info.FullMethod, &err)
		return h(ctx, req)
	}
}

// RecoverStream converts handler panics into Internal errors; the server keeps serving.
func RecoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
		defer recovered(log, info.FullMethod, &err)
		return h(srv, ss)
	}
}

func logCall(ctx context.Context, log *slog.Logger, obs Observer, method string, start time.Time, err error) {
	code := status.Code(err)
	elapsed := time.Since(start)
	if obs != nil {
		obs.Observe(method, code, elapsed)
	}
	level := slog.LevelDebug
	if code != codes.OK && code != codes.Canceled {
		level = slog.LevelInfo
	}
	if code == codes.Internal || code == codes.Unknown {
		level = slog.LevelError
	}
	// Successful calls log at debug: on the hot path, build nothing when that is off.
	if !log.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 4+maxCallAttrs)
	attrs = append(attrs, slog.String(attrMethod, method), slog.String(attrCode, code.String()), slog.Duration(attrDuration, elapsed))
	if ci, ok := ctx.Value(callInfoKey{}).(*callInfo); ok {
		attrs = append(attrs, ci.attrs[:ci.n]...)
	}
	// The status message is ours (ToStatus) and safe; it is logged for operators. The request
	// and the response are never logged.
	if err != nil {
		attrs = append(attrs, slog.String(attrMessage, status.Convert(err).Message()))
	}
	log.LogAttrs(ctx, level, "rpc", attrs...)
}

// LogUnary logs every call (method, code, duration, what Annotate added, the status message)
// and reports it to obs, which may be nil. It is the outermost interceptor, so failed
// authentications and recovered panics are logged too.
func LogUnary(log *slog.Logger, obs Observer) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		ctx = context.WithValue(ctx, callInfoKey{}, &callInfo{})
		resp, err := h(ctx, req)
		logCall(ctx, log, obs, info.FullMethod, start, err)
		return resp, err
	}
}

// LogStream logs every stream when it ends and reports it to obs, which may be nil.
func LogStream(log *slog.Logger, obs Observer) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		start := time.Now()
		ctx := context.WithValue(ss.Context(), callInfoKey{}, &callInfo{})
		err := h(srv, WithContext(ss, ctx))
		logCall(ctx, log, obs, info.FullMethod, start, err)
		return err
	}
}
