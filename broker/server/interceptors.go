package server

import (
	"context"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/broker/identity"
)

// Log attribute keys, defined once.
const (
	attrMethod   = "method"
	attrCode     = "code"
	attrDuration = "duration"
	attrNS       = "namespace"
	attrSA       = "service_account"
	attrPod      = "pod"
)

// maxAuthHeader bounds the authorization header before anything looks at it.
const maxAuthHeader = 16 << 10

// Authenticator verifies bearer tokens.
type Authenticator interface {
	Authenticate(ctx context.Context, tok identity.Token) (identity.Workload, error)
}

type workloadKey struct{}

// callInfo is placed in the context by the logging interceptor, outside authentication, and
// filled in by the auth interceptor so the log line of a call names its caller.
type callInfo struct {
	w  identity.Workload
	ok bool
}

type callInfoKey struct{}

// WorkloadFrom returns the authenticated workload of a request.
func WorkloadFrom(ctx context.Context) (identity.Workload, bool) {
	w, ok := ctx.Value(workloadKey{}).(identity.Workload)
	return w, ok
}

// bearer extracts the token from `authorization: Bearer <token>` without logging it.
func bearer(ctx context.Context) (identity.Token, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	switch {
	case len(vals) == 0:
		return identity.Token{}, nil // the authenticator reports the missing token
	case len(vals) > 1:
		return identity.Token{}, status.Error(codes.Unauthenticated, "send exactly one authorization header")
	case len(vals[0]) > maxAuthHeader:
		return identity.Token{}, status.Error(codes.Unauthenticated, "authorization header too large")
	}
	scheme, tok, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || strings.TrimSpace(tok) == "" {
		return identity.Token{}, status.Error(codes.Unauthenticated, "authorization header must be `Bearer <token>`")
	}
	return identity.NewToken(strings.TrimSpace(tok)), nil
}

func authenticate(ctx context.Context, a Authenticator) (context.Context, error) {
	tok, err := bearer(ctx)
	if err != nil {
		return nil, err
	}
	w, err := a.Authenticate(ctx, tok)
	if err != nil {
		return nil, ToStatus(err)
	}
	if ci, ok := ctx.Value(callInfoKey{}).(*callInfo); ok {
		ci.w, ci.ok = w, true
	}
	return context.WithValue(ctx, workloadKey{}, w), nil
}

// AuthUnary authenticates every unary call before its handler runs.
func AuthUnary(a Authenticator) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		ctx, err := authenticate(ctx, a)
		if err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

// AuthStream authenticates every stream before its handler runs.
func AuthStream(a Authenticator) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		ctx, err := authenticate(ss.Context(), a)
		if err != nil {
			return err
		}
		return h(srv, &ctxStream{ServerStream: ss, ctx: ctx})
	}
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
		log.Error("panic in handler", slog.String(attrMethod, method), slog.String("stack", string(debug.Stack())))
		*err = status.Error(codes.Internal, "internal error")
	}
}

// RecoverUnary converts handler panics into Internal errors.
func RecoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer recovered(log, info.FullMethod, &err)
		return h(ctx, req)
	}
}

// RecoverStream converts handler panics into Internal errors.
func RecoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
		defer recovered(log, info.FullMethod, &err)
		return h(srv, ss)
	}
}

func logCall(ctx context.Context, log *slog.Logger, m *Metrics, method string, start time.Time, err error) {
	code := status.Code(err)
	elapsed := time.Since(start)
	m.observe(method, code, elapsed)
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
	attrs := []slog.Attr{slog.String(attrMethod, method), slog.String(attrCode, code.String()), slog.Duration(attrDuration, elapsed)}
	if ci, ok := ctx.Value(callInfoKey{}).(*callInfo); ok && ci.ok {
		attrs = append(attrs, slog.String(attrNS, ci.w.Namespace), slog.String(attrSA, ci.w.ServiceAccount), slog.String(attrPod, ci.w.PodName))
	}
	// The status message is ours (ToStatus) and safe; it is logged for operators.
	if err != nil {
		attrs = append(attrs, slog.String("message", status.Convert(err).Message()))
	}
	log.LogAttrs(ctx, level, "rpc", attrs...)
}

// LogUnary logs every call and records its metrics. It is the outermost interceptor, so failed
// authentications and recovered panics are logged too.
func LogUnary(log *slog.Logger, m *Metrics) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		ctx = context.WithValue(ctx, callInfoKey{}, &callInfo{})
		resp, err := h(ctx, req)
		logCall(ctx, log, m, info.FullMethod, start, err)
		return resp, err
	}
}

// LogStream logs every stream when it ends and records its metrics.
func LogStream(log *slog.Logger, m *Metrics) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		start := time.Now()
		ctx := context.WithValue(ss.Context(), callInfoKey{}, &callInfo{})
		err := h(srv, &ctxStream{ServerStream: ss, ctx: ctx})
		logCall(ctx, log, m, info.FullMethod, start, err)
		return err
	}
}
