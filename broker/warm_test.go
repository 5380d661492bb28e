package broker

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/revoke"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"
)

// downableSource is a polled source (like Vault) that can be made unreachable.
type downableSource struct {
	m    mapSource
	down atomic.Bool
}

func (s *downableSource) Fetch(ctx context.Context, path string) (*source.Secret, error) {
	if s.down.Load() {
		return nil, fmt.Errorf("%w: connection refused", source.ErrUnavailable)
	}
	return s.m.Fetch(ctx, path)
}

const warmGrantDoc = `apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: g-vault}
spec:
  subjects: [{namespace: demo, serviceAccount: app}]
  secrets:
    - name: api
      source: {vault: {mount: secret, path: app/api}}
`

// warmNode is one node's data directory; start builds a broker over a fresh engine that
// restores node.db, like a daemon starting.
type warmNode struct {
	dir string
	src *downableSource
	clk *clocktesting.FakeClock
}

func (n *warmNode) start(t *testing.T) (*Broker, *rotate.Engine, *store.DB) {
	t.Helper()
	kek, err := crypto.LoadOrCreateLocalKEK(filepath.Join(n.dir, "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(store.Config{Path: filepath.Join(n.dir, "node.db"), KEK: kek, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := rotate.New(rotate.Config{Sources: map[string]source.Source{VaultSourceName: n.src}, Logger: discard(), Clock: n.clk, Store: db})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Verifier: fakeVerifier{}, Cache: eng, Audit: audit.Discard{}, Logger: discard(), Clock: n.clk})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.UpdateGrantSource("file", mustSet(t, warmGrantDoc)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close(); _ = db.Close() })
	return b, eng, db
}

func (n *warmNode) stop(t *testing.T, eng *rotate.Engine, db *store.DB) {
	t.Helper()
	eng.Close()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func newWarmNode(t *testing.T) *warmNode {
	t.Helper()
	ref, _, err := resolve(&mustSet(t, warmGrantDoc).Grants()[0].Spec.Secrets[0])
	if err != nil {
		t.Fatal(err)
	}
	src := &downableSource{m: mapSource{ref.Path: {Data: map[string]source.Value{"token": source.Value("warm-token")}, Version: "2"}}}
	return &warmNode{dir: t.TempDir(), src: src, clk: clocktesting.NewFakeClock(time.Now())}
}

// Restored values are reached only through GetSecret, after the identity and grant checks.
func TestBroker_GetSecret_warmValueNeedsTheGrant(t *testing.T) {
	n := newWarmNode(t)
	b, eng, db := n.start(t)
	if _, err := b.GetSecret(context.Background(), app, "api", grant.DeliveryGRPC); err != nil {
		t.Fatal(err)
	}
	n.stop(t, eng, db)

	n.src.down.Store(true)
	b, _, _ = n.start(t)
	s, err := b.GetSecret(context.Background(), app, "api", grant.DeliveryGRPC)
	if err != nil || string(s.Data["token"]) != "warm-token" {
		t.Fatalf("granted caller after a restart with the source down: %v", err)
	}
	other := identity.Workload{Namespace: "demo", ServiceAccount: "other"}
	if _, err := b.GetSecret(context.Background(), other, "api", grant.DeliveryGRPC); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("caller without a grant: %v, want PermissionDenied", err)
	}
}

// A revoked secret's persisted value is deleted: after a restart (the revocation lifted
// meanwhile, or lost with state.db) it is not served from node.db with the source down.
func TestBroker_revokedSecretNotRestored(t *testing.T) {
	n := newWarmNode(t)
	b, eng, db := n.start(t)
	if _, err := b.GetSecret(context.Background(), app, "api", grant.DeliveryGRPC); err != nil {
		t.Fatal(err)
	}
	m, err := revoke.New(revoke.Config{Broker: b, Purger: eng, Logger: discard(),
		Apply: func(s *grant.Set) error { return b.UpdateGrantSource(revoke.SourceName, s) }})
	if err != nil {
		t.Fatal(err)
	}
	if _, purged, err := m.Revoke(revoke.Target{Secret: "api"}); err != nil || purged != 1 {
		t.Fatalf("revoke: purged %d, %v", purged, err)
	}
	keys, err := store.NewBucket[struct{}](db, rotate.ValuesBucket).Keys()
	if err != nil || len(keys) != 0 {
		t.Fatalf("node.db still holds %d values after the revocation (%v)", len(keys), err)
	}
	n.stop(t, eng, db)

	n.src.down.Store(true)
	b, _, _ = n.start(t) // no revocation in force: only the store could serve it
	if s, err := b.GetSecret(context.Background(), app, "api", grant.DeliveryGRPC); err == nil {
		t.Fatalf("a revoked value came back after a restart (version %s)", s.Version)
	} else if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("GetSecret: %v, want Unavailable (nothing cached, the source down)", err)
	}
}
