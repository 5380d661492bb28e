package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

// leaseSource issues a new credential per fetch of a reference it has not issued (or whose
// credential was released), like the Vault source's dynamic engines.
type leaseSource struct {
	mu     sync.Mutex
	n      int
	issued map[string]string // path → current lease id
}

func (l *leaseSource) Fetch(_ context.Context, path string) (*source.Secret, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	id, ok := l.issued[path]
	if !ok {
		l.n++
		id = fmt.Sprintf("lease-%d", l.n)
		l.issued[path] = id
	}
	return &source.Secret{Data: map[string]source.Value{"password": source.Value("pw-" + id)}, Version: id, LeaseID: id}, nil
}

// recordingReleaser drops the reference from the cache and the source, and records it.
type recordingReleaser struct {
	eng *rotate.Engine
	src *leaseSource

	mu       sync.Mutex
	released []string // owners of released references
}

func (r *recordingReleaser) Release(ref source.Ref) {
	r.eng.Drop(ref)
	r.src.mu.Lock()
	delete(r.src.issued, ref.Path)
	r.src.mu.Unlock()
	spec, _ := vaultref.Parse(ref.Path)
	r.mu.Lock()
	r.released = append(r.released, spec.Owner)
	r.mu.Unlock()
}

func (r *recordingReleaser) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.released
	r.released = nil
	slices.Sort(out)
	return out
}

const leaseGrants = `apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: db-pod}
spec:
  subjects: [{namespace: demo, serviceAccount: app}]
  secrets:
    - {name: db, share: Pod, source: {vault: {mount: database, engine: database, role: app}}}
---
apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: db-sa}
spec:
  subjects: [{namespace: demo, serviceAccount: app}]
  secrets:
    - {name: shared, source: {vault: {mount: database, engine: database, role: ro}}}
`

type leaseEnv struct {
	b   *Broker
	rel *recordingReleaser
	src *leaseSource
}

func newLeaseEnv(t *testing.T) *leaseEnv {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Now())
	src := &leaseSource{issued: map[string]string{}}
	eng, err := rotate.New(rotate.Config{Sources: map[string]source.Source{VaultSourceName: src}, Logger: discard(), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	rel := &recordingReleaser{eng: eng, src: src}
	b, err := New(Config{Verifier: fakeVerifier{}, Cache: eng, Audit: audit.Discard{}, Logger: discard(), Clock: clk, Leases: rel})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.UpdateGrantSource("file", mustSet(t, leaseGrants)); err != nil {
		t.Fatal(err)
	}
	return &leaseEnv{b: b, rel: rel, src: src}
}

func pod(uid string) identity.Workload {
	return identity.Workload{Namespace: "demo", ServiceAccount: "app", PodName: "p-" + uid, PodUID: uid}
}

func (e *leaseEnv) get(t *testing.T, ctx context.Context, w identity.Workload, name string) string {
	t.Helper()
	s, err := e.b.GetSecret(ctx, w, name, grant.DeliveryGRPC)
	if err != nil {
		t.Fatalf("GetSecret(%s, %s): %v", w.PodUID, name, err)
	}
	return s.LeaseID
}

func TestHolds_podShare_releasedWhenItsPodIsDeleted(t *testing.T) {
	e := newLeaseEnv(t)
	a1 := e.get(t, context.Background(), pod("a"), "db")
	b1 := e.get(t, context.Background(), pod("b"), "db")
	if a1 == b1 {
		t.Fatal("two pods share a share: Pod credential")
	}
	if e.get(t, context.Background(), pod("a"), "db") != a1 {
		t.Fatal("the pod's second read got another credential")
	}
	if n := e.b.PodGone("a"); n != 1 {
		t.Fatalf("PodGone released %d references, want 1", n)
	}
	if got := e.rel.take(); !slices.Equal(got, []string{vaultref.PodOwner("a")}) {
		t.Fatalf("released %v, want pod a's", got)
	}
	// The deleted pod cannot take a new one (a stream or volume watch still running).
	_, err := e.b.GetSecret(context.Background(), pod("a"), "db", grant.DeliveryGRPC)
	if !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("deleted pod's read: %v, want Unauthenticated", err)
	}
	if e.get(t, context.Background(), pod("b"), "db") != b1 {
		t.Fatal("another pod's credential changed")
	}
}

func TestHolds_sharedCredential_releasedWithItsLastConsumer(t *testing.T) {
	e := newLeaseEnv(t)
	vol := WithConsumer(context.Background(), ConsumerVolume+"v1")
	l1 := e.get(t, vol, pod("a"), "shared")
	if e.get(t, context.Background(), pod("b"), "shared") != l1 {
		t.Fatal("ServiceAccount share: pods got different credentials")
	}
	ref := source.Ref{Source: VaultSourceName, Path: mustRef(t, "ro", vaultref.ServiceAccountOwner("demo", "app"))}
	if n := e.b.LeaseConsumers(ref); n != 2 {
		t.Fatalf("%d consumers, want the volume and pod b", n)
	}
	if e.b.ReleaseConsumer(ConsumerVolume+"v1") != 0 || len(e.rel.take()) != 0 {
		t.Fatal("released while pod b still holds it")
	}
	if e.b.PodGone("b") != 1 {
		t.Fatal("last consumer gone, nothing released")
	}
	if got := e.rel.take(); !slices.Equal(got, []string{vaultref.ServiceAccountOwner("demo", "app")}) {
		t.Fatalf("released %v", got)
	}
	if l2 := e.get(t, context.Background(), pod("c"), "shared"); l2 == l1 {
		t.Fatal("a released credential was served again")
	}
}

func TestHolds_volumeConsumer_releasedAtUnpublishNotAtPodDeletionOfAnother(t *testing.T) {
	e := newLeaseEnv(t)
	vol := WithConsumer(context.Background(), ConsumerVolume+"v1")
	e.get(t, vol, pod("a"), "db")
	if e.b.PodGone("zzz") != 0 {
		t.Fatal("another pod's deletion released the volume's credential")
	}
	if e.b.ReleaseConsumer(ConsumerVolume+"v1") != 1 {
		t.Fatal("unpublish released nothing")
	}
	if got := e.rel.take(); !slices.Equal(got, []string{vaultref.PodOwner("a")}) {
		t.Fatalf("released %v", got)
	}
}

func TestHolds_grantWithdrawn_releases(t *testing.T) {
	e := newLeaseEnv(t)
	e.get(t, context.Background(), pod("a"), "db")
	e.get(t, context.Background(), pod("a"), "shared")
	// Withdraw db-pod only.
	if err := e.b.UpdateGrantSource("file", mustSet(t, leaseGrants[strings.Index(leaseGrants, "---")+4:])); err != nil {
		t.Fatal(err)
	}
	if got := e.rel.take(); !slices.Equal(got, []string{vaultref.PodOwner("a")}) {
		t.Fatalf("released %v, want only the withdrawn grant's", got)
	}
	// A share mode change moves the consumers to another reference: the old one is released.
	moved := strings.Replace(leaseGrants[strings.Index(leaseGrants, "---")+4:], "role: ro}}}", "role: ro}}, share: Pod}", 1)
	if err := e.b.UpdateGrantSource("file", mustSet(t, moved)); err != nil {
		t.Fatal(err)
	}
	if got := e.rel.take(); !slices.Equal(got, []string{vaultref.ServiceAccountOwner("demo", "app")}) {
		t.Fatalf("released %v after the share mode changed", got)
	}
}

func TestHolds_watchStream_holdsWhileOpen(t *testing.T) {
	e := newLeaseEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	sent := make(chan string, 4)
	done := make(chan error, 1)
	go func() {
		done <- e.b.Watch(ctx, pod("a"), []string{"db"}, grant.DeliveryGRPC, func(_ string, s *source.Secret) error {
			sent <- s.LeaseID
			return nil
		})
	}()
	<-sent
	if got := e.rel.take(); len(got) != 0 {
		t.Fatalf("released %v while the stream is open", got)
	}
	cancel()
	<-done
	if got := e.rel.take(); !slices.Equal(got, []string{vaultref.PodOwner("a")}) {
		t.Fatalf("released %v when the stream closed", got)
	}
}

func mustRef(t *testing.T, role, owner string) string {
	t.Helper()
	p, err := vaultref.Spec{Engine: vaultref.Database, Mount: "database", Role: role, Owner: owner}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return p
}
