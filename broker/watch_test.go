package broker

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/source"
)

// otherGrantDoc is a grant that names none of the watched secrets.
const otherGrantDoc = `apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: other}
spec:
  subjects: [{namespace: demo, serviceAccount: app}]
  secrets: [{name: x, source: {local: {}}}]
`

// settle polls runtime.NumGoroutine until ok accepts it; the bound only keeps a broken test
// from hanging, it asserts nothing about time.
func settle(t *testing.T, what string, ok func(n int) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	n := runtime.NumGoroutine()
	for !ok(n) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%s: %d goroutines\n%s", what, n, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
		n = runtime.NumGoroutine()
	}
}

func TestBroker_Watch_startsAndLeavesNoGoroutines(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	src := mapSource{
		"db":  {Data: map[string]source.Value{"password": source.Value("pw")}, Version: "1"},
		"api": {Data: map[string]source.Value{"token": source.Value("t")}, Version: "1"},
	}
	eng, err := rotate.New(rotate.Config{Sources: map[string]source.Source{"local": src}, Logger: discard(), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	// Binding and expiry on: every kind of event the stream waits for is in play.
	b, err := New(Config{Verifier: fakeVerifier{}, Cache: eng, Audit: audit.Discard{}, Logger: discard(), Clock: clk, Binding: &flipBinding{}, RecheckInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.UpdateGrantSource("file", mustSet(t, `apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: g1}
spec:
  subjects: [{namespace: demo, serviceAccount: app}]
  secrets:
    - {name: db, source: {local: {}}}
    - {name: api, source: {local: {}}}
`)); err != nil {
		t.Fatal(err)
	}
	w := app
	w.ExpiresAt = clk.Now().Add(time.Hour)

	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	sent := make(chan string, 8)
	done := make(chan error, 1)
	go func() {
		done <- b.Watch(ctx, w, []string{"db", "api"}, grant.DeliveryGRPC, func(name string, _ *source.Secret) error {
			sent <- name
			return nil
		})
	}()
	<-sent
	<-sent
	// While it streams, the watch is its own goroutine and nothing else: no forwarders.
	settle(t, "goroutines while the stream is open (want one more than before)", func(n int) bool { return n <= before+1 })
	// Events still reach it: a grant change is handled in the loop.
	if err := b.UpdateGrantSource("store", mustSet(t, otherGrantDoc)); err != nil {
		t.Fatal(err)
	}
	clk.Step(time.Second) // a binding re-check
	settle(t, "goroutines after grant change and re-check", func(n int) bool { return n <= before+1 })

	cancel()
	if err := <-done; !errors.Is(err, ErrCanceled) {
		t.Fatalf("watch ended with %v, want ErrCanceled", err)
	}
	settle(t, "goroutines after the stream ended", func(n int) bool { return n <= before })
	if n := b.WatchStreams(); n != 0 {
		t.Fatalf("%d watch streams still counted", n)
	}
}

// lockedSource is a mapSource the test may change while a watch reads it.
type lockedSource struct {
	mu sync.Mutex
	m  mapSource
}

func (l *lockedSource) Fetch(ctx context.Context, path string) (*source.Secret, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m.Fetch(ctx, path)
}

func (l *lockedSource) set(path, version string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.m[path] = &source.Secret{Data: map[string]source.Value{"k": source.Value(version)}, Version: version}
}

func TestBroker_Watch_followsAGrantThatMoves(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	src := &lockedSource{m: mapSource{}}
	src.set("one", "1")
	src.set("two", "a")
	eng, err := rotate.New(rotate.Config{Sources: map[string]source.Source{"local": src}, Logger: discard(), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Verifier: fakeVerifier{}, Cache: eng, Audit: audit.Discard{}, Logger: discard(), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	grantFor := func(path string) *grant.Set {
		return mustSet(t, `apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: g1}
spec:
  subjects: [{namespace: demo, serviceAccount: app}]
  secrets: [{name: db, source: {local: {name: `+path+`}}}]
`)
	}
	if err := b.UpdateGrantSource("file", grantFor("one")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sent := make(chan string, 8)
	done := make(chan error, 1)
	go func() {
		done <- b.Watch(ctx, app, []string{"db"}, grant.DeliveryGRPC, func(_ string, s *source.Secret) error {
			sent <- s.Version
			return nil
		})
	}()
	want := func(v string) {
		t.Helper()
		select {
		case got := <-sent:
			if got != v {
				t.Fatalf("sent version %q, want %q", got, v)
			}
		case err := <-done:
			t.Fatalf("watch ended: %v", err)
		}
	}
	want("1")
	if err := b.UpdateGrantSource("file", grantFor("two")); err != nil {
		t.Fatal(err)
	}
	want("a") // the grant moved: the new reference's value
	src.set("one", "2")
	_ = eng.Refresh(context.Background(), source.Ref{Source: "local", Path: "one"})
	src.set("two", "b")
	_ = eng.Refresh(context.Background(), source.Ref{Source: "local", Path: "two"})
	want("b") // the stream now selects on the new reference's subscription
	if err := b.UpdateGrantSource("file", mustSet(t, otherGrantDoc)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("after the grant was withdrawn: %v, want ErrPermissionDenied", err)
	}
	select {
	case v := <-sent:
		t.Fatalf("sent %q from a reference the grant no longer names", v)
	default:
	}
}
