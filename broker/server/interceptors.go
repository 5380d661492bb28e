package server

import (
	"context"
	"log/slog"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/internal/grpcx"
)

// Log attribute keys of the caller, defined once (grpcx defines the call's own).
const (
	attrNS  = "namespace"
	attrSA  = "service_account"
	attrPod = "pod"
)

// maxAuthHeader bounds the authorization header before anything looks at it.
const maxAuthHeader = 16 << 10

// Authenticator verifies bearer tokens.
type Authenticator interface {
	Authenticate(ctx context.Context, tok identity.Token) (identity.Workload, error)
}

type workloadKey struct{}

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
		return nil, grpcx.ToStatus(err)
	}
	// The log line of the call names its caller (the logging interceptor runs outside this one).
	grpcx.Annotate(ctx, slog.String(attrNS, w.Namespace), slog.String(attrSA, w.ServiceAccount), slog.String(attrPod, w.PodName))
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
		return h(srv, grpcx.WithContext(ss, ctx))
	}
}
