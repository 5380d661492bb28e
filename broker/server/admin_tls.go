package server

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/internal/grpcx"
)

// AdminTLSConfig makes the admin service reachable over TCP with mutual TLS using X.509-SVIDs.
type AdminTLSConfig struct {
	// SVID is the daemon's own X.509-SVID (from files with x509svid.Load, or a Workload API
	// X509Source). Required.
	SVID x509svid.Source
	// Bundles hold the roots that client SVIDs must chain to, per trust domain. Required.
	Bundles x509bundle.Source
	// TrustDomain is the daemon's trust domain; callers from any other are refused. Required.
	TrustDomain spiffeid.TrustDomain
	// AllowedIDs are the admin SPIFFE IDs. Required, non-empty, all in TrustDomain.
	AllowedIDs []spiffeid.ID
}

type adminIDKey struct{}

// AdminIDFrom returns the SPIFFE ID of an admin caller authenticated by mTLS.
func AdminIDFrom(ctx context.Context) (spiffeid.ID, bool) {
	id, ok := ctx.Value(adminIDKey{}).(spiffeid.ID)
	return id, ok
}

// NewAdminTLSServer returns a gRPC server with AdminService registered, for a TCP listener.
// The TLS handshake requires a client certificate that is a valid X.509-SVID chaining to a
// known bundle (no certificate, or an unknown issuer: the handshake fails). Authorization is a
// separate step so that a verified caller who is not allowed gets a clear PermissionDenied:
// its SPIFFE ID must be in TrustDomain and in AllowedIDs.
func NewAdminTLSServer(cfg AdminConfig, tc AdminTLSConfig) (*grpc.Server, error) {
	switch {
	case tc.SVID == nil:
		return nil, errors.New("server: admin TLS: svid source is required")
	case tc.Bundles == nil:
		return nil, errors.New("server: admin TLS: bundle source is required")
	case tc.TrustDomain.IsZero():
		return nil, errors.New("server: admin TLS: trust domain is required")
	case len(tc.AllowedIDs) == 0:
		return nil, errors.New("server: admin TLS: at least one allowed admin SPIFFE ID is required")
	}
	for _, id := range tc.AllowedIDs {
		if !id.MemberOf(tc.TrustDomain) {
			return nil, fmt.Errorf("server: admin TLS: allowed ID %s is not in trust domain %s", id, tc.TrustDomain)
		}
	}
	allowed := slices.Clone(tc.AllowedIDs)
	defaultRecorder(&cfg)
	refuse := func(ctx context.Context, method string, id string, err error) error {
		// Refused callers never reach the audit or status interceptors: map and record here.
		err = grpcx.ToStatus(err)
		cfg.Recorder.Record(ctx, audit.Event{Kind: audit.KindAdmin, Outcome: audit.OutcomeDeny, Action: path.Base(method),
			Actor: id, Reason: status.Code(err).String() + ": " + status.Convert(err).Message()})
		return err
	}
	authorize := func(ctx context.Context, method string) (context.Context, error) {
		p, ok := peer.FromContext(ctx)
		if !ok {
			return nil, refuse(ctx, method, "unknown", grpcx.Errorf(broker.ErrUnauthenticated, "no peer"))
		}
		ti, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok || len(ti.State.PeerCertificates) == 0 {
			return nil, refuse(ctx, method, "unknown", grpcx.Errorf(broker.ErrUnauthenticated, "a client X.509-SVID is required"))
		}
		id, err := x509svid.IDFromCert(ti.State.PeerCertificates[0])
		if err != nil {
			return nil, refuse(ctx, method, "unknown", grpcx.Errorf(broker.ErrUnauthenticated, "the client certificate is not an X.509-SVID"))
		}
		if !id.MemberOf(tc.TrustDomain) {
			return nil, refuse(ctx, method, id.String(), grpcx.Errorf(broker.ErrPermissionDenied, "SPIFFE ID %s is from trust domain %q; admin callers must be in %q", id, id.TrustDomain(), tc.TrustDomain))
		}
		if !slices.Contains(allowed, id) {
			return nil, refuse(ctx, method, id.String(), grpcx.Errorf(broker.ErrPermissionDenied, "SPIFFE ID %s is not an allowed admin ID", id))
		}
		return context.WithValue(ctx, adminIDKey{}, id), nil
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := authorize(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := authorize(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, grpcx.WithContext(ss, ctx))
	}
	opts, err := adminOptions(&cfg, unary, stream)
	if err != nil {
		return nil, err
	}
	// AuthorizeAny at the handshake: the chain is still verified against Bundles for the
	// peer's trust domain; the ID check happens above, with a status the caller can read.
	tlsCfg := tlsconfig.MTLSServerConfig(tc.SVID, tc.Bundles, tlsconfig.AuthorizeAny())
	srv := grpc.NewServer(append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))...)
	registerAdmin(srv, cfg)
	return srv, nil
}
