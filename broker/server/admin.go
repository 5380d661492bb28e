package server

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/local"
	"github.com/keywarden/keywarden/internal/grpcx"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// AdminBroker is what the admin service needs from the broker.
type AdminBroker interface {
	ListGrants() []broker.SourcedGrant
	Explain(r grant.Request) grant.Explanation
	WatchStreams() int64
	SourceRefs(name string) []source.Ref
}

var _ AdminBroker = (*broker.Broker)(nil)

// GrantStore is the daemon's own grant store, written through the admin API.
type GrantStore interface {
	Apply(ctx context.Context, grants []grant.AccessGrant) error
	Delete(ctx context.Context, name string) error
}

// SecretWriter writes secrets to the embedded store.
type SecretWriter interface {
	Put(ctx context.Context, name string, data map[string][]byte) (string, error)
}

// CacheStatus reports the cache's entries.
type CacheStatus interface {
	Status() []rotate.EntryStatus
}

// AdminConfig configures the admin gRPC server.
type AdminConfig struct {
	// Broker answers grant questions. Required.
	Broker AdminBroker
	// Grants is the admin grant store; nil makes apply and delete answer FailedPrecondition.
	Grants GrantStore
	// Secrets is the embedded secret store; nil makes PutSecret answer FailedPrecondition.
	Secrets SecretWriter
	// Cache reports cached secrets. Required.
	Cache CacheStatus
	// TrustDomain builds SPIFFE IDs for explain requests that give none. Required.
	TrustDomain spiffeid.TrustDomain
	// Version is reported by GetStatus.
	Version string
	// StartedAt is reported by GetStatus. Defaults to now.
	StartedAt time.Time
	// Logger receives one record per call. Required.
	Logger *slog.Logger
	// Metrics records calls; nil disables them.
	Metrics *Metrics
	// Limits bound what one client can make the server do. Zero fields take defaults, except
	// MaxRecvMsgSize which defaults to 1 MiB here (grant manifests).
	Limits Limits
	// Audit is the persistent audit log; nil makes the audit calls answer FailedPrecondition.
	Audit AuditLog
	// Recorder audits every admin call. Defaults to Audit when that records, else discards.
	Recorder audit.Recorder
	// Rotator re-fetches secrets for RotateNow; nil makes it answer FailedPrecondition.
	Rotator Rotator
	// Revoker enforces revocations; nil makes Revoke answer FailedPrecondition.
	Revoker Revoker
	// Keys rotates the stores' DEK and KEK; nil makes RotateKeys and RotationStatus answer
	// FailedPrecondition.
	Keys KeyRotator
	// Leases lists the Vault leases the node tracks for GetStatus; nil lists none.
	Leases LeaseLister
}

// LeaseLister lists the Vault leases a node tracks.
type LeaseLister interface {
	TrackedLeases() []TrackedLease
}

// TrackedLease is one Vault lease a node tracks (keywarden.v1.VaultLease).
type TrackedLease struct {
	LeaseID, Path, Owner, State string
	ExpiresAt                   time.Time
}

// AdminService implements keywarden.v1.AdminService. It is served only on the admin socket,
// whose file mode is its access control.
type AdminService struct {
	keywardenv1.UnimplementedAdminServiceServer
	cfg AdminConfig
}

var _ keywardenv1.AdminServiceServer = (*AdminService)(nil)

// NewAdminServer returns a gRPC server with AdminService registered.
func NewAdminServer(cfg AdminConfig) (*grpc.Server, error) {
	opts, err := adminOptions(&cfg, nil, nil)
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer(opts...)
	registerAdmin(srv, cfg)
	return srv, nil
}

func defaultRecorder(cfg *AdminConfig) {
	if cfg.Recorder == nil {
		if r, ok := cfg.Audit.(audit.Recorder); ok {
			cfg.Recorder = r
		} else {
			cfg.Recorder = audit.Discard{}
		}
	}
}

func registerAdmin(srv *grpc.Server, cfg AdminConfig) {
	keywardenv1.RegisterAdminServiceServer(srv, &AdminService{cfg: cfg})
}

// adminOptions validates cfg, applies defaults and returns the server options every admin
// server shares: limits, logging, auditing and recovery. authz, when set, runs first.
func adminOptions(cfg *AdminConfig, authzU grpc.UnaryServerInterceptor, authzS grpc.StreamServerInterceptor) ([]grpc.ServerOption, error) {
	switch {
	case cfg.Broker == nil:
		return nil, errors.New("server: broker is required")
	case cfg.Cache == nil:
		return nil, errors.New("server: cache is required")
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("server: trust domain is required")
	case cfg.Logger == nil:
		return nil, errors.New("server: logger is required")
	}
	if cfg.StartedAt.IsZero() {
		cfg.StartedAt = time.Now()
	}
	if cfg.Limits.MaxRecvMsgSize <= 0 {
		cfg.Limits.MaxRecvMsgSize = 1 << 20
	}
	defaultRecorder(cfg)
	unary := []grpc.UnaryServerInterceptor{grpcx.LogUnary(cfg.Logger, cfg.Metrics), grpcx.RecoverUnary(cfg.Logger)}
	stream := []grpc.StreamServerInterceptor{grpcx.LogStream(cfg.Logger, cfg.Metrics), grpcx.RecoverStream(cfg.Logger)}
	if authzU != nil {
		unary = append(unary, authzU)
		stream = append(stream, authzS)
	}
	// Innermost: handlers return domain errors, mapped to codes here, seen as codes by audit.
	unary = append(unary, auditUnary(cfg.Recorder), grpcx.StatusUnary())
	stream = append(stream, auditStream(cfg.Recorder), grpcx.StatusStream())
	return append(cfg.Limits.serverOptions(), grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...)), nil
}

// ListGrants implements keywardenv1.AdminServiceServer.
func (a *AdminService) ListGrants(context.Context, *keywardenv1.ListGrantsRequest) (*keywardenv1.ListGrantsResponse, error) {
	out := &keywardenv1.ListGrantsResponse{}
	for _, sg := range a.cfg.Broker.ListGrants() {
		manifest, err := json.Marshal(sg.Grant)
		if err != nil {
			return nil, internal("encode grant")
		}
		out.Grants = append(out.Grants, &keywardenv1.Grant{Name: sg.Grant.Name, Source: sg.Source, Effect: effectOf(sg.Grant), Manifest: manifest})
	}
	return out, nil
}

// ApplyGrant implements keywardenv1.AdminServiceServer.
func (a *AdminService) ApplyGrant(ctx context.Context, req *keywardenv1.ApplyGrantRequest) (*keywardenv1.ApplyGrantResponse, error) {
	if a.cfg.Grants == nil {
		return nil, errNoGrantStore
	}
	grants, err := grant.Parse(req.GetManifest())
	if err != nil {
		return nil, invalid("%v", err)
	}
	if len(grants) == 0 {
		return nil, invalid("the manifest holds no grant")
	}
	if err := a.cfg.Grants.Apply(ctx, grants); err != nil {
		return nil, grantStoreError(err)
	}
	out := &keywardenv1.ApplyGrantResponse{}
	for _, g := range grants {
		out.Names = append(out.Names, g.Name)
	}
	return out, nil
}

// DeleteGrant implements keywardenv1.AdminServiceServer.
func (a *AdminService) DeleteGrant(ctx context.Context, req *keywardenv1.DeleteGrantRequest) (*keywardenv1.DeleteGrantResponse, error) {
	if a.cfg.Grants == nil {
		return nil, errNoGrantStore
	}
	if req.GetName() == "" {
		return nil, invalid("name is required")
	}
	if err := a.cfg.Grants.Delete(ctx, req.GetName()); err != nil {
		return nil, grantStoreError(err)
	}
	return &keywardenv1.DeleteGrantResponse{}, nil
}

func effectOf(g grant.AccessGrant) string {
	if g.Spec.Effect == "" {
		return string(grant.EffectAllow)
	}
	return string(g.Spec.Effect)
}

// grantStoreError classifies a grant store error: the store's own sentinels carry a message
// for the caller, anything else is internal.
func grantStoreError(err error) error {
	switch {
	case errors.Is(err, grant.ErrGrantNotFound):
		return notFound("%v", err)
	case errors.Is(err, grant.ErrInvalidGrant), errors.Is(err, grant.ErrDuplicateGrant):
		return invalid("%v", err)
	default:
		return internal("grant store: internal error")
	}
}

// ExplainGrant implements keywardenv1.AdminServiceServer.
func (a *AdminService) ExplainGrant(_ context.Context, req *keywardenv1.ExplainGrantRequest) (*keywardenv1.ExplainGrantResponse, error) {
	d := grant.Delivery(req.GetDelivery())
	if d == "" {
		d = grant.DeliveryGRPC
	}
	if d != grant.DeliveryGRPC && d != grant.DeliveryCSI && d != grant.DeliveryGRPCSealed {
		return nil, invalid("delivery must be %s, %s or %s", grant.DeliveryCSI, grant.DeliveryGRPC, grant.DeliveryGRPCSealed)
	}
	if req.GetSecret() == "" {
		return nil, invalid("secret is required")
	}
	id := req.GetSpiffeId()
	if id == "" {
		if req.GetNamespace() == "" || req.GetServiceAccount() == "" {
			return nil, invalid("give namespace and service account, or a SPIFFE ID")
		}
		sid, err := spiffeid.FromSegments(a.cfg.TrustDomain, "ns", req.GetNamespace(), "sa", req.GetServiceAccount())
		if err != nil {
			return nil, invalid("namespace or service account cannot form a SPIFFE ID: %v", err)
		}
		id = sid.String()
	}
	ex := a.cfg.Broker.Explain(grant.Request{Namespace: req.GetNamespace(), ServiceAccount: req.GetServiceAccount(), SPIFFEID: id, Secret: req.GetSecret(), Delivery: d})
	return explainToProto(ex, id), nil
}

// GetStatus implements keywardenv1.AdminServiceServer.
func (a *AdminService) GetStatus(context.Context, *keywardenv1.GetStatusRequest) (*keywardenv1.GetStatusResponse, error) {
	out := &keywardenv1.GetStatusResponse{
		Version:      a.cfg.Version,
		StartedAt:    timestamppb.New(a.cfg.StartedAt),
		Grants:       int32(len(a.cfg.Broker.ListGrants())),
		WatchStreams: int32(a.cfg.Broker.WatchStreams()),
	}
	a.statusDetails(out)
	for _, e := range a.cfg.Cache.Status() {
		cs := &keywardenv1.CachedSecret{Source: e.Ref.Source, Path: e.Ref.Path, Version: e.Version, Subscribers: int32(e.Subscribers), LastError: e.LastError, Stale: e.Stale}
		if !e.FetchedAt.IsZero() {
			cs.FetchedAt = timestamppb.New(e.FetchedAt)
		}
		if !e.ExpiresAt.IsZero() {
			cs.ExpiresAt = timestamppb.New(e.ExpiresAt)
		}
		if !e.NextRefresh.IsZero() {
			cs.NextRefreshAt = timestamppb.New(e.NextRefresh)
		}
		cs.RefreshFailures = int32(min(e.Failures, math.MaxInt32))
		out.Secrets = append(out.Secrets, cs)
	}
	return out, nil
}

// PutSecret implements keywardenv1.AdminServiceServer.
func (a *AdminService) PutSecret(ctx context.Context, req *keywardenv1.PutSecretRequest) (*keywardenv1.PutSecretResponse, error) {
	if a.cfg.Secrets == nil {
		return nil, errNoSecretStore
	}
	v, err := a.cfg.Secrets.Put(ctx, req.GetName(), req.GetData())
	if err != nil {
		if errors.Is(err, local.ErrInvalidSecret) {
			return nil, invalid("%v", err)
		}
		a.cfg.Logger.Error("put secret failed", slog.String("secret", req.GetName()), slog.Any("error", err))
		return nil, internal("put secret: internal error")
	}
	return &keywardenv1.PutSecretResponse{Version: v}, nil
}

func explainToProto(ex grant.Explanation, id string) *keywardenv1.ExplainGrantResponse {
	out := &keywardenv1.ExplainGrantResponse{
		Allowed:  ex.Decision.Allowed,
		Grant:    ex.Decision.Grant,
		Reason:   ex.Decision.Reason,
		Hint:     ex.Hint,
		SpiffeId: id,
	}
	for _, t := range ex.Grants {
		out.Checks = append(out.Checks, &keywardenv1.GrantCheck{
			Grant:           t.Name,
			Effect:          string(t.Effect),
			SubjectMatched:  t.SubjectMatched,
			SecretMatched:   t.SecretMatched,
			DeliveryMatched: t.DeliveryMatched,
			Detail:          traceDetail(t),
		})
	}
	return out
}

func traceDetail(t grant.GrantTrace) string {
	var missing []string
	if !t.SubjectMatched {
		missing = append(missing, "no subject matches the caller")
	}
	if !t.SecretMatched {
		missing = append(missing, "does not name the secret")
	}
	if !t.DeliveryMatched {
		missing = append(missing, "does not allow this delivery")
	}
	if len(missing) == 0 {
		if t.Effect == grant.EffectDeny {
			return "applies: denies the request"
		}
		return "applies: allows the request"
	}
	return strings.Join(missing, "; ")
}
