package server_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/source/local"
	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"
	"github.com/keywarden/keywarden/internal/grpcx"

	"github.com/keywarden/keywarden/internal/testlog"
)

// base is what every test stack shares: a private dir, captured logs, the real encrypted
// store with the local source seeded with demo-db, and a dev issuer with its verifier.
type base struct {
	dir  string
	logs *testlog.Buffer
	log  *slog.Logger
	db   *store.DB
	loc  *local.Store
	dev  *identity.DevIssuer
	td   spiffeid.TrustDomain
	ver  *identity.Verifier
}

func newBase(t testing.TB) *base {
	t.Helper()
	b := &base{dir: t.TempDir(), logs: &testlog.Buffer{}, td: spiffeid.RequireTrustDomainFromString("cluster.local")}
	b.log = slog.New(slog.NewJSONHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	kek, err := crypto.LoadOrCreateLocalKEK(filepath.Join(b.dir, "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	if b.db, err = store.Open(store.Config{Path: filepath.Join(b.dir, "state.db"), KEK: kek, Logger: b.log}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.db.Close() })
	if b.loc, err = local.New(local.Config{DB: b.db, Logger: b.log}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.loc.Put(context.Background(), "demo-db", map[string][]byte{"password": []byte(secretValue), "username": []byte("demo")}); err != nil {
		t.Fatal(err)
	}
	if b.dev, err = identity.LoadOrCreateDevIssuer(filepath.Join(b.dir, "issuer.jwk"), issuer); err != nil {
		t.Fatal(err)
	}
	if b.ver, err = identity.NewVerifier(identity.Config{Issuer: issuer, Keys: b.dev.KeySet(), TrustDomain: b.td}); err != nil {
		t.Fatal(err)
	}
	return b
}

// demoGrants is the grant set of demoGrantDoc.
func demoGrants(t testing.TB) *grant.Set {
	t.Helper()
	grants, err := grant.Parse([]byte(demoGrantDoc))
	if err != nil {
		t.Fatal(err)
	}
	set, err := grant.NewSet(grants)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// serveStack listens on the workload and admin sockets in dir and runs both servers plus
// runners until the test ends; it returns the two socket paths.
func serveStack(t testing.TB, dir string, ws, as *grpc.Server, runners ...func(context.Context) error) (workload, admin string) {
	t.Helper()
	workload, admin = filepath.Join(dir, "w.sock"), filepath.Join(dir, "a.sock")
	wl, err := grpcx.ListenUnix(workload, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	al, err := grpcx.ListenUnix(admin, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	runs := append(runners,
		func(ctx context.Context) error { return grpcx.Serve(ctx, ws, wl, time.Second) },
		func(ctx context.Context) error { return grpcx.Serve(ctx, as, al, time.Second) },
	)
	for _, run := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return workload, admin
}

// serveOne serves srv on a Unix socket in a private directory until the test ends and returns
// the socket's path.
func serveOne(t testing.TB, srv *grpc.Server) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	lis, err := grpcx.ListenUnix(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- grpcx.Serve(ctx, srv, lis, time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return sock
}
