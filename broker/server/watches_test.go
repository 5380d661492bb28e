package server_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/server"
	"github.com/keywarden/keywarden/client"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// Pods of the demo/app service account, by UID.
const (
	podA = "0a0a0a0a-0000-4000-8000-00000000000a"
	podB = "0b0b0b0b-0000-4000-8000-00000000000b"
	podC = "0c0c0c0c-0000-4000-8000-00000000000c"
)

// openWatch opens a WatchSecrets stream for demo-db as pod on a connection of its own and
// waits for the first value, so the stream is open on the server when it returns nil. The
// stream lives until cancel is called or the test ends.
func (s *stack) openWatch(t *testing.T, pod string) (cancel context.CancelFunc, err error) {
	t.Helper()
	tok, err := s.dev.Issue(identity.DevTokenRequest{Namespace: "demo", ServiceAccount: "app", PodUID: pod})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(client.Target(s.socket), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok.Reveal()))
	t.Cleanup(cancel)
	st, err := keywardenv1.NewSecretServiceClient(conn).WatchSecrets(ctx, &keywardenv1.WatchSecretsRequest{Names: []string{"demo-db"}})
	if err == nil {
		_, err = st.Recv()
	}
	return cancel, err
}

// expectWatchSlotFreed retries opening a stream for pod until it succeeds: the server sees a
// cancelled stream end shortly after the client does. Until then it must refuse with
// ResourceExhausted.
func (s *stack) expectWatchSlotFreed(t *testing.T, pod string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		cancel, err := s.openWatch(t, pod)
		if err == nil {
			return
		}
		cancel()
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("after a cancel: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("a cancelled watch stream never gave its slot back")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// refusedWatches reads keywarden_grpc_watch_streams_refused_total{limit}.
func (s *stack) refusedWatches(t *testing.T, limit string) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "keywarden_grpc_watch_streams_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == limit {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no series for limit %q", limit)
	return 0
}

// TestSecretService_WatchSecrets_capPerWorkload: one pod opens more streams than its cap over
// as many connections; the one beyond is refused at once, another pod of the same service
// account is still served, and a cancelled stream's slot can be taken again.
func TestSecretService_WatchSecrets_capPerWorkload(t *testing.T) {
	s := newStackLimits(t, server.Limits{MaxWatchesPerWorkload: 3, MaxWatches: 100})
	var cancels []context.CancelFunc
	for i := range 3 {
		cancel, err := s.openWatch(t, podA)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		cancels = append(cancels, cancel)
	}
	_, err := s.openWatch(t, podA)
	expectExactStatus(t, err, codes.ResourceExhausted, "too many watch streams for this workload (limit 3, limits.maxWatchesPerWorkload)")
	if n := s.refusedWatches(t, "per_workload"); n != 1 {
		t.Fatalf("refused per_workload: %v, want 1", n)
	}
	if _, err := s.openWatch(t, podB); err != nil {
		t.Fatalf("another pod of the service account while pod A is at its cap: %v", err)
	}
	cancels[1]()
	s.expectWatchSlotFreed(t, podA)
	_, err = s.openWatch(t, podA)
	expectExactStatus(t, err, codes.ResourceExhausted, "too many watch streams for this workload (limit 3, limits.maxWatchesPerWorkload)")
}

// TestSecretService_WatchSecrets_capTotal: streams of several pods, each under its own cap,
// fill the server's; the next pod is refused until one of them ends.
func TestSecretService_WatchSecrets_capTotal(t *testing.T) {
	s := newStackLimits(t, server.Limits{MaxWatchesPerWorkload: 2, MaxWatches: 3})
	var cancels []context.CancelFunc
	for _, pod := range []string{podA, podA, podB} {
		cancel, err := s.openWatch(t, pod)
		if err != nil {
			t.Fatalf("pod %s: %v", pod, err)
		}
		cancels = append(cancels, cancel)
	}
	const msg = "too many watch streams on this node (limit 3, limits.maxWatches)"
	_, err := s.openWatch(t, podC)
	expectExactStatus(t, err, codes.ResourceExhausted, msg)
	_, err = s.openWatch(t, podB) // under its own cap, over the server's
	expectExactStatus(t, err, codes.ResourceExhausted, msg)
	if n := s.refusedWatches(t, "total"); n != 2 {
		t.Fatalf("refused total: %v, want 2", n)
	}
	cancels[0]()
	s.expectWatchSlotFreed(t, podC)
}

// TestSecretService_WatchSecrets_slotFreedOnError: a stream the server ends with an error
// (a name the pod may not read) gives its slot back.
func TestSecretService_WatchSecrets_slotFreedOnError(t *testing.T) {
	s := newStackLimits(t, server.Limits{MaxWatchesPerWorkload: 1, MaxWatches: 100})
	tok, err := s.dev.Issue(identity.DevTokenRequest{Namespace: "demo", ServiceAccount: "app", PodUID: podA})
	if err != nil {
		t.Fatal(err)
	}
	pc := s.client(t, tok.Reveal())
	for range 3 {
		err := pc.Watch(context.Background(), []string{"demo-db", "not-granted"}, func(*client.Secret) error { return nil })
		expectStatus(t, err, codes.PermissionDenied, "no grant allows")
	}
	if _, err := s.openWatch(t, podA); err != nil {
		t.Fatalf("after streams that ended with errors: %v", err)
	}
}

func expectExactStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code || st.Message() != msg {
		t.Fatalf("got %v %q, want %v %q", st.Code(), st.Message(), code, msg)
	}
}
