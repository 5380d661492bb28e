package server_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/keyrot"
	"github.com/keywarden/keywarden/broker/revoke"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/server"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/local"
	"github.com/keywarden/keywarden/client"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"

	"github.com/keywarden/keywarden/internal/testlog"
)

// Hand-written fakes for the admin service's dependencies, each failing with a set error.

type fakeAdminBroker struct{}

func (fakeAdminBroker) ListGrants() []broker.SourcedGrant       { return nil }
func (fakeAdminBroker) Explain(grant.Request) grant.Explanation { return grant.Explanation{} }
func (fakeAdminBroker) WatchStreams() int64                     { return 0 }
func (fakeAdminBroker) SourceRefs(string) []source.Ref          { return nil }

type fakeCacheStatus struct{}

func (fakeCacheStatus) Status() []rotate.EntryStatus { return nil }

type errGrantStore struct{ err error }

func (s errGrantStore) Apply(context.Context, []grant.AccessGrant) error { return s.err }
func (s errGrantStore) Delete(context.Context, string) error             { return s.err }

type errSecrets struct{ err error }

func (s errSecrets) Put(context.Context, string, map[string][]byte) (string, error) { return "", s.err }

type nopRotator struct{}

func (nopRotator) Refresh(context.Context, source.Ref) error { return nil }

type errRevoker struct{ revokeErr, liftErr error }

func (r errRevoker) Revoke(revoke.Target) (string, int, error) { return "", 0, r.revokeErr }
func (r errRevoker) Lift(revoke.Target) (string, error)        { return "", r.liftErr }
func (errRevoker) Names() []string                             { return nil }

type errKeys struct{ err error }

func (k errKeys) Start(keyrot.Kinds) error { return k.err }
func (errKeys) Status() keyrot.Status      { return keyrot.Status{} }

type errAuditLog struct{ err error }

func (l errAuditLog) Last(int) ([]audit.Entry, error)       { return nil, l.err }
func (errAuditLog) Subscribe(int) *audit.Subscription       { return nil }
func (l errAuditLog) Verify() (audit.Report, error)         { return audit.Report{}, l.err }
func (l errAuditLog) Export(io.Writer, uint64) (int, error) { return 0, l.err }
func (errAuditLog) Stats() audit.Stats                      { return audit.Stats{} }
func (errAuditLog) Flush() error                            { return nil }

// serveAdmin runs an admin server built from cfg on a Unix socket until the test ends.
func serveAdmin(t *testing.T, cfg server.AdminConfig) keywardenv1.AdminServiceClient {
	t.Helper()
	srv, err := server.NewAdminServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(client.Target(serveOne(t, srv)), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return keywardenv1.NewAdminServiceClient(conn)
}

// streamErr receives from a server stream until it ends and returns its error.
func streamErr[T any](s interface{ Recv() (T, error) }, err error) error {
	if err != nil {
		return err
	}
	for {
		if _, err := s.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// TestAdminService_errorCodes pins the code and the message of every error case of the admin
// RPCs that can be reached through the API, so that how the codes are decided can change
// without the caller seeing any difference.
func TestAdminService_errorCodes(t *testing.T) {
	storeFail := errors.New("bbolt: disk on fire")
	cases := []struct {
		name string
		cfg  func(*server.AdminConfig)
		call func(context.Context, keywardenv1.AdminServiceClient) error
		code codes.Code
		msg  string
	}{
		{"ApplyGrant without a grant store", nil, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.ApplyGrant(ctx, &keywardenv1.ApplyGrantRequest{Manifest: []byte(demoGrantDoc)})
			return err
		}, codes.FailedPrecondition, "this daemon has no admin grant store"},
		{"ApplyGrant bad manifest", func(c *server.AdminConfig) { c.Grants = errGrantStore{} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.ApplyGrant(ctx, &keywardenv1.ApplyGrantRequest{Manifest: []byte("kind: Nope\n")})
			return err
		}, codes.InvalidArgument, `document 1 (line 1): apiVersion: is required: set it to "keywarden.io/v1alpha1"; document 1 (line 1): kind: must be "AccessGrant", got "Nope"; ` +
			`document 1 (line 1): metadata.name: is required: set it to a DNS-1123 subdomain such as "demo-app"; ` +
			`document 1 (line 1): spec.subjects: at least one subject is required: add {namespace, serviceAccount} or {spiffeID}; ` +
			`document 1 (line 1): spec.secrets: at least one secret is required: add {name, source}`},
		{"ApplyGrant empty manifest", func(c *server.AdminConfig) { c.Grants = errGrantStore{} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.ApplyGrant(ctx, &keywardenv1.ApplyGrantRequest{Manifest: []byte("---\n")})
			return err
		}, codes.InvalidArgument, "the manifest holds no grant"},
		{"ApplyGrant store rejects", func(c *server.AdminConfig) { c.Grants = errGrantStore{err: grant.ErrDuplicateGrant} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.ApplyGrant(ctx, &keywardenv1.ApplyGrantRequest{Manifest: []byte(demoGrantDoc)})
			return err
		}, codes.InvalidArgument, "duplicate access grant name"},
		{"ApplyGrant store invalid", func(c *server.AdminConfig) { c.Grants = errGrantStore{err: grant.ErrInvalidGrant} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.ApplyGrant(ctx, &keywardenv1.ApplyGrantRequest{Manifest: []byte(demoGrantDoc)})
			return err
		}, codes.InvalidArgument, "invalid access grant"},
		{"ApplyGrant store fails", func(c *server.AdminConfig) { c.Grants = errGrantStore{err: storeFail} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.ApplyGrant(ctx, &keywardenv1.ApplyGrantRequest{Manifest: []byte(demoGrantDoc)})
			return err
		}, codes.Internal, "grant store: internal error"},
		{"DeleteGrant without a grant store", nil, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.DeleteGrant(ctx, &keywardenv1.DeleteGrantRequest{Name: "g"})
			return err
		}, codes.FailedPrecondition, "this daemon has no admin grant store"},
		{"DeleteGrant without a name", func(c *server.AdminConfig) { c.Grants = errGrantStore{} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.DeleteGrant(ctx, &keywardenv1.DeleteGrantRequest{})
			return err
		}, codes.InvalidArgument, "name is required"},
		{"DeleteGrant unknown", func(c *server.AdminConfig) { c.Grants = errGrantStore{err: grant.ErrGrantNotFound} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.DeleteGrant(ctx, &keywardenv1.DeleteGrantRequest{Name: "g"})
			return err
		}, codes.NotFound, "access grant not found"},
		{"DeleteGrant store fails", func(c *server.AdminConfig) { c.Grants = errGrantStore{err: storeFail} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.DeleteGrant(ctx, &keywardenv1.DeleteGrantRequest{Name: "g"})
			return err
		}, codes.Internal, "grant store: internal error"},
		{"ExplainGrant bad delivery", nil, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.ExplainGrant(ctx, &keywardenv1.ExplainGrantRequest{Secret: "s", Namespace: "n", ServiceAccount: "a", Delivery: "smtp"})
			return err
		}, codes.InvalidArgument, "delivery must be CSI, GRPC or GRPCSealed"},
		{"ExplainGrant without a secret", nil, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.ExplainGrant(ctx, &keywardenv1.ExplainGrantRequest{Namespace: "n", ServiceAccount: "a"})
			return err
		}, codes.InvalidArgument, "secret is required"},
		{"ExplainGrant without a subject", nil, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.ExplainGrant(ctx, &keywardenv1.ExplainGrantRequest{Secret: "s", Namespace: "n"})
			return err
		}, codes.InvalidArgument, "give namespace and service account, or a SPIFFE ID"},
		{"ExplainGrant subject not a SPIFFE path", nil, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.ExplainGrant(ctx, &keywardenv1.ExplainGrantRequest{Secret: "s", Namespace: "N/S", ServiceAccount: "a"})
			return err
		}, codes.InvalidArgument, "namespace or service account cannot form a SPIFFE ID: path segment characters are limited to letters, numbers, dots, dashes, and underscores"},
		{"PutSecret without a secret store", nil, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.PutSecret(ctx, &keywardenv1.PutSecretRequest{Name: "s"})
			return err
		}, codes.FailedPrecondition, "this daemon has no embedded secret store"},
		{"PutSecret invalid", func(c *server.AdminConfig) { c.Secrets = errSecrets{err: local.ErrInvalidSecret} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.PutSecret(ctx, &keywardenv1.PutSecretRequest{Name: "s"})
			return err
		}, codes.InvalidArgument, "invalid secret"},
		{"PutSecret store fails", func(c *server.AdminConfig) { c.Secrets = errSecrets{err: storeFail} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.PutSecret(ctx, &keywardenv1.PutSecretRequest{Name: "s"})
			return err
		}, codes.Internal, "put secret: internal error"},
		{"RotateNow without a rotator", nil, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.RotateNow(ctx, &keywardenv1.RotateNowRequest{Secret: "s"})
			return err
		}, codes.FailedPrecondition, "this daemon cannot rotate secrets"},
		{"RotateNow invalid name", func(c *server.AdminConfig) { c.Rotator = nopRotator{} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.RotateNow(ctx, &keywardenv1.RotateNowRequest{Secret: "../x"})
			return err
		}, codes.InvalidArgument, `secret: invalid secret name: must not contain "/"`},
		{"RotateNow ungranted", func(c *server.AdminConfig) { c.Rotator = nopRotator{} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.RotateNow(ctx, &keywardenv1.RotateNowRequest{Secret: "s"})
			return err
		}, codes.NotFound, `no grant in force names secret "s"`},
		{"Revoke without a revoker", nil, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.Revoke(ctx, &keywardenv1.RevokeRequest{Secret: "s"})
			return err
		}, codes.FailedPrecondition, "this daemon cannot revoke"},
		{"Revoke invalid target", func(c *server.AdminConfig) { c.Revoker = errRevoker{} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.Revoke(ctx, &keywardenv1.RevokeRequest{})
			return err
		}, codes.InvalidArgument, "invalid revocation target: name a secret, or a workload (namespace and service account, or SPIFFE ID)"},
		{"Revoke fails", func(c *server.AdminConfig) { c.Revoker = errRevoker{revokeErr: storeFail} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.Revoke(ctx, &keywardenv1.RevokeRequest{Secret: "s"})
			return err
		}, codes.Internal, "revoke: internal error"},
		{"Revoke lift not revoked", func(c *server.AdminConfig) { c.Revoker = errRevoker{liftErr: revoke.ErrNotRevoked} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.Revoke(ctx, &keywardenv1.RevokeRequest{Secret: "s", Lift: true})
			return err
		}, codes.NotFound, "not revoked"},
		{"Revoke lift fails", func(c *server.AdminConfig) { c.Revoker = errRevoker{liftErr: storeFail} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.Revoke(ctx, &keywardenv1.RevokeRequest{Secret: "s", Lift: true})
			return err
		}, codes.Internal, "lift revocation: internal error"},
		{"RotateKeys without a key rotator", nil, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.RotateKeys(ctx, &keywardenv1.RotateKeysRequest{Dek: true})
			return err
		}, codes.FailedPrecondition, "this daemon cannot rotate its keys"},
		{"RotateKeys names nothing", func(c *server.AdminConfig) { c.Keys = errKeys{err: keyrot.ErrNothingToRotate} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.RotateKeys(ctx, &keywardenv1.RotateKeysRequest{})
			return err
		}, codes.InvalidArgument, "name the keys to rotate: dek, kek or both"},
		{"RotateKeys while one runs", func(c *server.AdminConfig) { c.Keys = errKeys{err: keyrot.ErrBusy} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.RotateKeys(ctx, &keywardenv1.RotateKeysRequest{Kek: true})
			return err
		}, codes.FailedPrecondition, "a key rotation is already running: follow it with the rotation status"},
		{"RotateKeys fails", func(c *server.AdminConfig) { c.Keys = errKeys{err: storeFail} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.RotateKeys(ctx, &keywardenv1.RotateKeysRequest{Dek: true})
			return err
		}, codes.Internal, "rotate keys: internal error"},
		{"RotationStatus without a key rotator", nil, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.RotationStatus(ctx, &keywardenv1.RotationStatusRequest{})
			return err
		}, codes.FailedPrecondition, "this daemon cannot rotate its keys"},
		{"AuditTail without an audit log", nil, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			return streamErr(c.AuditTail(ctx, &keywardenv1.AuditTailRequest{}))
		}, codes.FailedPrecondition, "this daemon keeps no audit log (audit records go to its log)"},
		{"AuditTail read fails", func(c *server.AdminConfig) { c.Audit = errAuditLog{err: storeFail} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			return streamErr(c.AuditTail(ctx, &keywardenv1.AuditTailRequest{}))
		}, codes.Internal, "read audit log: internal error"},
		{"AuditVerify without an audit log", nil, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.AuditVerify(ctx, &keywardenv1.AuditVerifyRequest{})
			return err
		}, codes.FailedPrecondition, "this daemon keeps no audit log (audit records go to its log)"},
		{"AuditVerify fails", func(c *server.AdminConfig) { c.Audit = errAuditLog{err: storeFail} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			_, err := c.AuditVerify(ctx, &keywardenv1.AuditVerifyRequest{})
			return err
		}, codes.Internal, "verify audit log: internal error"},
		{"AuditExport without an audit log", nil, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			return streamErr(c.AuditExport(ctx, &keywardenv1.AuditExportRequest{}))
		}, codes.FailedPrecondition, "this daemon keeps no audit log (audit records go to its log)"},
		{"AuditExport fails", func(c *server.AdminConfig) { c.Audit = errAuditLog{err: storeFail} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			return streamErr(c.AuditExport(ctx, &keywardenv1.AuditExportRequest{}))
		}, codes.Internal, "export audit log: internal error"},
		{"AuditExport send fails", func(c *server.AdminConfig) { c.Audit = errAuditLog{err: status.Error(codes.Aborted, "stream broke")} }, func(ctx context.Context, c keywardenv1.AdminServiceClient) error {
			return streamErr(c.AuditExport(ctx, &keywardenv1.AuditExportRequest{}))
		}, codes.Aborted, "stream broke"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			logs := &testlog.Buffer{}
			cfg := server.AdminConfig{Broker: fakeAdminBroker{}, Cache: fakeCacheStatus{}, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
				Logger: slog.New(slog.NewJSONHandler(logs, nil))}
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			c := serveAdmin(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := tc.call(ctx, c)
			st, _ := status.FromError(err)
			if st.Code() != tc.code || st.Message() != tc.msg {
				t.Fatalf("got %v %q, want %v %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
			// Backend error text stays in the daemon's log, never in the caller's message.
			if strings.Contains(st.Message(), "disk on fire") {
				t.Fatalf("backend error text reached the caller: %q", st.Message())
			}
		})
	}
}
