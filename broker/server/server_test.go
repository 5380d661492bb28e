package server_test

import (
	"context"
	"errors"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/server"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/local"
	"github.com/keywarden/keywarden/client"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"

	"github.com/keywarden/keywarden/internal/testlog"
)

const (
	issuer       = "https://issuer.test"
	secretValue  = "s3cr3t-value-4b1d9e"
	demoGrantDoc = `apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: demo-app}
spec:
  subjects: [{namespace: demo, serviceAccount: app}]
  secrets:
    - name: demo-db
      source: {local: {}}
    - name: granted-missing
      source: {local: {}}
---
apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: sealed-only}
spec:
  subjects: [{namespace: demo, serviceAccount: sealer}]
  secrets:
    - name: demo-db
      source: {local: {}}
  delivery: [GRPCSealed]
`
)

// countingSource counts fetches so tests can prove that rejected calls reach no backend.
type countingSource struct {
	source.Source
	mu sync.Mutex
	n  int
	// hold, when set, makes Fetch wait for it (or for its context) and report the context
	// on started, so tests can act in the middle of a backend call.
	hold    chan struct{}
	started chan context.Context
}

func (c *countingSource) Fetch(ctx context.Context, path string) (*source.Secret, error) {
	c.mu.Lock()
	c.n++
	hold, started := c.hold, c.started
	c.mu.Unlock()
	if hold != nil {
		started <- ctx
		select {
		case <-hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return c.Source.Fetch(ctx, path)
}

func (c *countingSource) Changes(ctx context.Context) <-chan string {
	return c.Source.(source.Notifier).Changes(ctx)
}

func (c *countingSource) fetches() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

type stack struct {
	socket string
	admin  string
	dev    *identity.DevIssuer
	local  *local.Store
	src    *countingSource
	broker *broker.Broker
	logs   *testlog.Buffer
	reg    *prometheus.Registry
	engine *rotate.Engine
	bs     *base
}

// newStack runs the real broker, store, local source and both gRPC servers over Unix sockets.
func newStack(t *testing.T) *stack { return newStackTB(t) }

func newStackTB(t testing.TB) *stack { return newStackLimits(t, server.Limits{}) }

// newStackLimits is newStack whose workload server has the given limits.
func newStackLimits(t testing.TB, limits server.Limits) *stack {
	t.Helper()
	return newStackWith(t, limits, false)
}

// newStackWith is newStackLimits; with auditLog the broker audits to an audit.Log in the
// state store, as the daemon does (queued, written in batches), instead of to the test's log
// buffer, so benchmarks measure the daemon's hot path.
func newStackWith(t testing.TB, limits server.Limits, auditLog bool) *stack {
	t.Helper()
	bs := newBase(t)
	var rec audit.Recorder = audit.NewSlogRecorder(bs.log)
	if auditLog {
		l, err := audit.Open(audit.Config{DB: bs.db, Logger: bs.log})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = l.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		rec = l
	}
	cached, err := identity.NewCachingVerifier(identity.CacheConfig{Verifier: bs.ver})
	if err != nil {
		t.Fatal(err)
	}
	src := &countingSource{Source: bs.loc}
	eng, err := rotate.New(rotate.Config{Sources: map[string]source.Source{"local": src}, Logger: bs.log})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{Verifier: cached, Cache: eng, Audit: rec, Logger: bs.log})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.UpdateGrantSource("file", demoGrants(t)); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := server.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := server.NewWorkloadServer(server.WorkloadConfig{Broker: b, Logger: bs.log, Metrics: m, Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	as, err := server.NewAdminServer(server.AdminConfig{Broker: b, Secrets: bs.loc, Cache: eng, TrustDomain: bs.td, Logger: bs.log, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	st := &stack{dev: bs.dev, local: bs.loc, src: src, broker: b, logs: bs.logs, reg: reg, engine: eng, bs: bs}
	st.socket, st.admin = serveStack(t, bs.dir, ws, as, eng.Run)
	return st
}

func (s *stack) token(t *testing.T, ns, sa string) string { return s.tokenTB(t, ns, sa) }

func (s *stack) tokenTB(t testing.TB, ns, sa string) string {
	t.Helper()
	tok, err := s.dev.Issue(identity.DevTokenRequest{Namespace: ns, ServiceAccount: sa})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Reveal()
}

func (s *stack) client(t *testing.T, tok string) *client.Client { return s.clientTB(t, tok) }

func (s *stack) clientTB(t testing.TB, tok string) *client.Client {
	t.Helper()
	c, err := client.New(s.socket, client.WithToken(tok), client.WithBackoff(10*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (s *stack) rawConn(t *testing.T) keywardenv1.SecretServiceClient { return rawConnTB(t, s) }

func rawConnTB(t testing.TB, s *stack) keywardenv1.SecretServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(client.Target(s.socket), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return keywardenv1.NewSecretServiceClient(conn)
}

func expectStatus(t *testing.T, err error, code codes.Code, msgPart string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code || !strings.Contains(st.Message(), msgPart) {
		t.Fatalf("got %v %q, want %v containing %q", st.Code(), st.Message(), code, msgPart)
	}
}

func TestSecretService_GetSecret(t *testing.T) {
	s := newStack(t)
	appTok := s.token(t, "demo", "app")
	otherTok := s.token(t, "demo", "other")
	ctx := context.Background()

	t.Run("granted", func(t *testing.T) {
		got, err := s.client(t, appTok).Get(ctx, "demo-db")
		if err != nil {
			t.Fatal(err)
		}
		if string(got.Data["password"]) != secretValue || got.Version != "1" {
			t.Fatalf("got %v", got)
		}
	})

	tests := []struct {
		name    string
		tok     string
		secret  string
		code    codes.Code
		msgPart string
	}{
		{"not granted", otherTok, "demo-db", codes.PermissionDenied, `no grant allows service account "other" in namespace "demo" to read secret "demo-db"`},
		{"denied mentions explain", otherTok, "demo-db", codes.PermissionDenied, "keywarden grant explain"},
		{"does not exist and not granted", otherTok, "no-such-secret", codes.PermissionDenied, `to read secret "no-such-secret"`},
		{"granted but missing in source", appTok, "granted-missing", codes.NotFound, "its source holds no value"},
		{"invalid name dotdot", appTok, "../etc", codes.InvalidArgument, "invalid secret name"},
		{"invalid name slash", appTok, "a/b", codes.InvalidArgument, "invalid secret name"},
		{"invalid name NUL", appTok, "a\x00b", codes.InvalidArgument, "invalid secret name"},
		{"invalid name too long", appTok, strings.Repeat("a", 254), codes.InvalidArgument, "invalid secret name"},
		{"garbled token", "not.a.jwt", "demo-db", codes.Unauthenticated, "invalid token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.client(t, tc.tok).Get(ctx, tc.secret)
			expectStatus(t, err, tc.code, tc.msgPart)
		})
	}

	t.Run("existence is not revealed", func(t *testing.T) {
		c := s.client(t, otherTok)
		_, e1 := c.Get(ctx, "demo-db")
		_, e2 := c.Get(ctx, "no-such-db")
		m1 := strings.ReplaceAll(status.Convert(e1).Message(), "demo-db", "X")
		m2 := strings.ReplaceAll(status.Convert(e2).Message(), "no-such-db", "X")
		if status.Code(e1) != status.Code(e2) || m1 != m2 {
			t.Fatalf("existing and missing secrets answer differently:\n%v %q\n%v %q", status.Code(e1), m1, status.Code(e2), m2)
		}
	})
}

func TestSecretService_noCredentials(t *testing.T) {
	s := newStack(t)
	before := s.src.fetches()
	api := s.rawConn(t)
	_, err := api.GetSecret(context.Background(), &keywardenv1.GetSecretRequest{Name: "demo-db"})
	expectStatus(t, err, codes.Unauthenticated, "missing token")
	for _, md := range []metadata.MD{
		metadata.Pairs("authorization", "Basic abc"),
		metadata.Pairs("authorization", "Bearer "),
		metadata.Pairs("authorization", "Bearer a", "authorization", "Bearer b"),
		metadata.Pairs("authorization", "Bearer "+strings.Repeat("a", 17<<10)),
	} {
		ctx := metadata.NewOutgoingContext(context.Background(), md)
		_, err := api.GetSecret(ctx, &keywardenv1.GetSecretRequest{Name: "demo-db"})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("metadata %v: got %v", md.Len(), err)
		}
	}
	if s.src.fetches() != before {
		t.Fatal("an unauthenticated call reached the secret source")
	}
	if !strings.Contains(s.logs.String(), `"reason":"no token"`) {
		t.Fatal("missing token was not audited")
	}
}

func TestSecretService_oversizedRequest(t *testing.T) {
	s := newStack(t)
	_, err := s.client(t, s.token(t, "demo", "app")).Get(context.Background(), strings.Repeat("a", 70<<10))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("got %v, want ResourceExhausted", err)
	}
}

func TestSecretService_WatchSecrets_rotationAndRevocation(t *testing.T) {
	s := newStack(t)
	c := s.client(t, s.token(t, "demo", "app"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan *client.Secret, 10)
	done := make(chan error, 1)
	go func() {
		done <- c.Watch(ctx, []string{"demo-db"}, func(sec *client.Secret) error {
			got <- sec
			return nil
		})
	}()
	expectVersion := func(v string) *client.Secret {
		t.Helper()
		select {
		case sec := <-got:
			if sec.Version != v {
				t.Fatalf("version %s, want %s", sec.Version, v)
			}
			return sec
		case err := <-done:
			t.Fatalf("watch ended: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatalf("no version %s", v)
		}
		return nil
	}
	expectVersion("1")
	if _, err := s.local.Put(context.Background(), "demo-db", map[string][]byte{"password": []byte("rotated")}); err != nil {
		t.Fatal(err)
	}
	if sec := expectVersion("2"); string(sec.Data["password"]) != "rotated" {
		t.Fatal("wrong rotated value")
	}
	// Withdraw every grant: the stream must end with PermissionDenied.
	empty, _ := grant.NewSet(nil)
	if err := s.broker.UpdateGrantSource("file", empty); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		expectStatus(t, err, codes.PermissionDenied, "was withdrawn")
	case <-time.After(20 * time.Second):
		t.Fatal("watch did not end after its grant was withdrawn")
	}
	if !strings.Contains(s.logs.String(), `"reason":"grant withdrawn"`) {
		t.Fatal("revocation not audited")
	}
}

func TestSecretService_WatchSecrets_badRequests(t *testing.T) {
	s := newStack(t)
	c := s.client(t, s.token(t, "demo", "app"))
	ctx := context.Background()
	noop := func(*client.Secret) error { return nil }
	expectStatus(t, c.Watch(ctx, nil, noop), codes.InvalidArgument, "1 to 64 secret names")
	expectStatus(t, c.Watch(ctx, []string{"demo-db", "demo-db"}, noop), codes.InvalidArgument, "named twice")
	expectStatus(t, c.Watch(ctx, []string{"demo-db", "not-granted"}, noop), codes.PermissionDenied, "no grant allows")
	many := make([]string, 65)
	for i := range many {
		many[i] = "s" + strings.Repeat("x", i)
	}
	expectStatus(t, c.Watch(ctx, many, noop), codes.InvalidArgument, "1 to 64 secret names")
}

func TestSecretService_clientCancelMidFetch(t *testing.T) {
	s := newStack(t)
	c := s.client(t, s.token(t, "demo", "app"))
	if _, err := c.Get(context.Background(), "demo-db"); err != nil { // warm the connection
		t.Fatal(err)
	}
	if _, err := s.local.Put(context.Background(), "granted-missing", map[string][]byte{"k": []byte("v")}); err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	started := make(chan context.Context, 1)
	s.src.mu.Lock()
	s.src.hold, s.src.started = hold, started
	s.src.mu.Unlock()
	before := runtime.NumGoroutine()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := c.Get(ctx, "granted-missing"); done <- err }()
	var fetchCtx context.Context
	select {
	case fetchCtx = <-started:
	case <-time.After(20 * time.Second):
		t.Fatal("the backend fetch never started")
	}
	cancel()
	expectStatus(t, <-done, codes.Canceled, "")
	select {
	case <-fetchCtx.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the backend call was not cancelled when its only caller left")
	}

	// Nothing from the abandoned call is cached; the next call fetches and succeeds.
	s.src.mu.Lock()
	s.src.hold = nil
	s.src.mu.Unlock()
	close(hold)
	got, err := c.Get(context.Background(), "granted-missing")
	if err != nil || string(got.Data["k"]) != "v" {
		t.Fatalf("after a cancelled call: %v", err)
	}
	// No goroutine is left behind by the cancelled call (bounded poll: goroutines exit
	// asynchronously).
	deadline := time.Now().Add(20 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: %d before, %d after", before, runtime.NumGoroutine())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLogs_neverContainTokensOrValues runs a full flow, including failures, and searches
// every log line for the tokens and secret values used.
func TestLogs_neverContainTokensOrValues(t *testing.T) {
	s := newStack(t)
	app := s.token(t, "demo", "app")
	other := s.token(t, "demo", "other")
	ctx := context.Background()
	_, _ = s.client(t, app).Get(ctx, "demo-db")
	_, _ = s.client(t, other).Get(ctx, "demo-db")
	_, _ = s.client(t, app+"x").Get(ctx, "demo-db")
	_, _ = s.client(t, app).Get(ctx, "granted-missing")
	if _, err := s.local.Put(ctx, "demo-db", map[string][]byte{"password": []byte("rotated-" + secretValue)}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	_ = s.client(t, app).Watch(wctx, []string{"demo-db"}, func(*client.Secret) error { cancel(); return errors.New("stop") })
	logs := s.logs.String()
	if !strings.Contains(logs, "GetSecret") {
		t.Fatal("no logs captured; the test would prove nothing")
	}
	for _, needle := range []string{app, other, app[len(app)-40:], secretValue, "rotated-" + secretValue} {
		if strings.Contains(logs, needle) {
			t.Fatalf("logs contain a token or secret value (%d bytes)", len(needle))
		}
	}
}

func TestAdminService_explainAndPut(t *testing.T) {
	s := newStack(t)
	conn, err := grpc.NewClient(client.Target(s.admin), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	admin := keywardenv1.NewAdminServiceClient(conn)
	ctx := context.Background()
	ex, err := admin.ExplainGrant(ctx, &keywardenv1.ExplainGrantRequest{Namespace: "demo", ServiceAccount: "other", Secret: "demo-db"})
	if err != nil {
		t.Fatal(err)
	}
	if ex.GetAllowed() || ex.GetHint() == "" || len(ex.GetChecks()) != 2 || ex.GetChecks()[0].GetSubjectMatched() { // demo-app, then sealed-only
		t.Fatalf("explain: %v", ex)
	}
	if ex.GetSpiffeId() != "spiffe://cluster.local/ns/demo/sa/other" {
		t.Fatalf("spiffe id %q", ex.GetSpiffeId())
	}
	ex, err = admin.ExplainGrant(ctx, &keywardenv1.ExplainGrantRequest{Namespace: "demo", ServiceAccount: "app", Secret: "demo-db"})
	if err != nil || !ex.GetAllowed() || ex.GetGrant() != "demo-app" {
		t.Fatalf("explain allowed: %v %v", ex, err)
	}
	_, err = admin.ExplainGrant(ctx, &keywardenv1.ExplainGrantRequest{Secret: "demo-db"})
	expectStatus(t, err, codes.InvalidArgument, "namespace and service account")
	_, err = admin.ExplainGrant(ctx, &keywardenv1.ExplainGrantRequest{Namespace: "demo", ServiceAccount: "app", Secret: "demo-db", Delivery: "SMTP"})
	expectStatus(t, err, codes.InvalidArgument, "delivery must be")

	resp, err := admin.PutSecret(ctx, &keywardenv1.PutSecretRequest{Name: "demo-db", Data: map[string][]byte{"password": []byte("x")}})
	if err != nil || resp.GetVersion() != "2" {
		t.Fatalf("put: %v %v", resp, err)
	}
	_, err = admin.PutSecret(ctx, &keywardenv1.PutSecretRequest{Name: "../x", Data: map[string][]byte{"k": []byte("x")}})
	expectStatus(t, err, codes.InvalidArgument, "invalid secret")
	_, err = admin.ApplyGrant(ctx, &keywardenv1.ApplyGrantRequest{Manifest: []byte(demoGrantDoc)})
	expectStatus(t, err, codes.FailedPrecondition, "no admin grant store")
}

// panicBroker panics in GetSecret to exercise the recovery interceptor.
type panicBroker struct{ server.SecretBroker }

func (panicBroker) Authenticate(context.Context, identity.Token) (identity.Workload, error) {
	return identity.Workload{Namespace: "demo", ServiceAccount: "app"}, nil
}

func (panicBroker) GetSecret(context.Context, identity.Workload, string, grant.Delivery) (*source.Secret, error) {
	panic("boom " + secretValue)
}

func TestRecoverUnary_panicBecomesInternal(t *testing.T) {
	logs := &testlog.Buffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	srv, err := server.NewWorkloadServer(server.WorkloadConfig{Broker: panicBroker{}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(serveOne(t, srv), client.WithToken("t"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Get(context.Background(), "demo-db")
	expectStatus(t, err, codes.Internal, "internal error")
	if strings.Contains(logs.String(), secretValue) {
		t.Fatal("panic value reached the logs")
	}
	if !strings.Contains(logs.String(), "panic in handler") {
		t.Fatal("panic not logged")
	}
}

// TestSecretService_streamCapPerConnection opens more watch streams on one connection than
// the server allows: the extra stream waits (its deadline expires) while another client on
// its own connection is served normally (CVE-2023-44487 class).
func TestSecretService_streamCapPerConnection(t *testing.T) {
	// The per-workload watch cap is raised above the connection's, which is the one tested.
	s := newStackLimits(t, server.Limits{MaxWatchesPerWorkload: 100})
	tok := s.token(t, "demo", "app")
	conn, err := grpc.NewClient(client.Target(s.socket), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	api := keywardenv1.NewSecretServiceClient(conn)
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok))
	defer cancel()
	const limit = 64 // server.Limits default MaxConcurrentStreams
	for i := range limit {
		st, err := api.WatchSecrets(ctx, &keywardenv1.WatchSecretsRequest{Names: []string{"demo-db"}})
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		if _, err := st.Recv(); err != nil { // the stream is open on the server
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	extraCtx, extraCancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer extraCancel()
	extra, err := api.WatchSecrets(extraCtx, &keywardenv1.WatchSecretsRequest{Names: []string{"demo-db"}})
	if err == nil {
		_, err = extra.Recv()
	}
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("stream %d on one connection: got %v, want it held back (DeadlineExceeded)", limit+1, err)
	}
	// Another client is unaffected.
	got, err := s.client(t, s.token(t, "demo", "app")).Get(context.Background(), "demo-db")
	if err != nil || string(got.Data["password"]) != secretValue {
		t.Fatalf("another client while one is at its stream cap: %v", err)
	}
}
