package server

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/internal/grpcx"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// SecretBroker is what the workload service needs from the broker.
type SecretBroker interface {
	Authenticator
	GetSecret(ctx context.Context, w identity.Workload, name string, d grant.Delivery) (*source.Secret, error)
	Watch(ctx context.Context, w identity.Workload, names []string, d grant.Delivery, send broker.SendFunc) error
}

var _ SecretBroker = (*broker.Broker)(nil)

// SecretService implements keywarden.v1.SecretService.
type SecretService struct {
	keywardenv1.UnimplementedSecretServiceServer
	b       SecretBroker
	watches *watchSlots
}

var _ keywardenv1.SecretServiceServer = (*SecretService)(nil)

// GetSecret implements keywardenv1.SecretServiceServer.
func (s *SecretService) GetSecret(ctx context.Context, req *keywardenv1.GetSecretRequest) (*keywardenv1.GetSecretResponse, error) {
	w, ok := WorkloadFrom(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "unauthenticated")
	}
	sealer, delivery, err := newReplySealer(w, req.GetReplyKey())
	if err != nil {
		return nil, grpcx.ToStatus(err)
	}
	sec, err := s.b.GetSecret(ctx, w, req.GetName(), delivery)
	if err != nil {
		return nil, grpcx.ToStatus(err)
	}
	p := toProto(req.GetName(), sec)
	if err := sealer.seal(p); err != nil {
		return nil, grpcx.ToStatus(err)
	}
	return &keywardenv1.GetSecretResponse{Secret: p}, nil
}

// WatchSecrets implements keywardenv1.SecretServiceServer.
func (s *SecretService) WatchSecrets(req *keywardenv1.WatchSecretsRequest, stream grpc.ServerStreamingServer[keywardenv1.WatchSecretsResponse]) error {
	ctx := stream.Context()
	w, ok := WorkloadFrom(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "unauthenticated")
	}
	// Counted from here until the handler returns, however the stream ends (client cancel,
	// revocation, server stop): the deferred release runs on every path, panics included.
	sealer, delivery, err := newReplySealer(w, req.GetReplyKey())
	if err != nil {
		return grpcx.ToStatus(err)
	}
	release, err := s.watches.acquire(w)
	if err != nil {
		return grpcx.ToStatus(err)
	}
	defer release()
	err = s.b.Watch(ctx, w, req.GetNames(), delivery, func(name string, sec *source.Secret) error {
		p := toProto(name, sec)
		if err := sealer.seal(p); err != nil {
			return err
		}
		return stream.Send(&keywardenv1.WatchSecretsResponse{Secret: p})
	})
	if errors.Is(err, broker.ErrCanceled) && ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	return grpcx.ToStatus(err)
}

func toProto(name string, s *source.Secret) *keywardenv1.Secret {
	out := &keywardenv1.Secret{Name: name, Version: s.Version, Data: make(map[string][]byte, len(s.Data))}
	for k, v := range s.Data {
		out.Data[k] = []byte(v)
	}
	if !s.ExpiresAt.IsZero() {
		out.ExpiresAt = timestamppb.New(s.ExpiresAt)
	}
	if !s.RenewAfter.IsZero() {
		out.RenewAfter = timestamppb.New(s.RenewAfter)
	}
	return out
}

// WorkloadConfig configures the workload gRPC server.
type WorkloadConfig struct {
	// Broker authenticates callers and serves secrets. Required.
	Broker SecretBroker
	// Logger receives one record per call. Required.
	Logger *slog.Logger
	// Metrics records calls; nil disables them.
	Metrics *Metrics
	// Limits bound what one client can make the server do, including the watch stream caps.
	// Zero fields take defaults.
	Limits Limits
}

// NewWorkloadServer returns a gRPC server with SecretService registered behind the
// authentication, recovery and logging interceptors.
func NewWorkloadServer(cfg WorkloadConfig) (*grpc.Server, error) {
	if cfg.Broker == nil {
		return nil, errors.New("server: broker is required")
	}
	if cfg.Logger == nil {
		return nil, errors.New("server: logger is required")
	}
	opts := append(cfg.Limits.serverOptions(),
		grpc.ChainUnaryInterceptor(grpcx.LogUnary(cfg.Logger, cfg.Metrics), grpcx.RecoverUnary(cfg.Logger), AuthUnary(cfg.Broker)),
		grpc.ChainStreamInterceptor(grpcx.LogStream(cfg.Logger, cfg.Metrics), grpcx.RecoverStream(cfg.Logger), AuthStream(cfg.Broker)),
	)
	srv := grpc.NewServer(opts...)
	keywardenv1.RegisterSecretServiceServer(srv, &SecretService{b: cfg.Broker, watches: newWatchSlots(cfg.Limits, cfg.Metrics)})
	return srv, nil
}
