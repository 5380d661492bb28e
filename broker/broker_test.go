package broker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/source"
)

type fakeVerifier struct {
	w   identity.Workload
	err error
}

func (f fakeVerifier) Verify(context.Context, identity.Token) (identity.Workload, error) {
	return f.w, f.err
}

type mapSource map[string]*source.Secret

func (m mapSource) Fetch(_ context.Context, path string) (*source.Secret, error) {
	if s, ok := m[path]; ok {
		return s.Clone(), nil
	}
	return nil, source.ErrNotFound
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func mustSet(t *testing.T, doc string) *grant.Set {
	t.Helper()
	gs, err := grant.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	s, err := grant.NewSet(gs)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const grantDoc = `apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: g1}
spec:
  subjects: [{namespace: demo, serviceAccount: app}]
  secrets:
    - name: db
      source: {local: {}}
      keys: [password]
`

func newBroker(t *testing.T, clk *clocktesting.FakeClock, v Verifier) *Broker {
	t.Helper()
	src := mapSource{"db": {Data: map[string]source.Value{"password": source.Value("pw"), "username": source.Value("u")}, Version: "1"}}
	eng, err := rotate.New(rotate.Config{Sources: map[string]source.Source{"local": src}, Logger: discard(), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Verifier: v, Cache: eng, Audit: audit.Discard{}, Logger: discard(), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.UpdateGrantSource("file", mustSet(t, grantDoc)); err != nil {
		t.Fatal(err)
	}
	return b
}

var app = identity.Workload{Namespace: "demo", ServiceAccount: "app"}

func TestNew_requiresDependencies(t *testing.T) {
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "verifier is required") {
		t.Fatal(err)
	}
}

func TestBroker_GetSecret_deliversOnlyGrantedKeys(t *testing.T) {
	b := newBroker(t, clocktesting.NewFakeClock(time.Now()), fakeVerifier{})
	s, err := b.GetSecret(context.Background(), app, "db", grant.DeliveryGRPC)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Data) != 1 || string(s.Data["password"]) != "pw" {
		t.Fatalf("keys %v", s.Keys())
	}
}

func TestBroker_UpdateGrantSource_conflictKeepsPrevious(t *testing.T) {
	b := newBroker(t, clocktesting.NewFakeClock(time.Now()), fakeVerifier{})
	err := b.UpdateGrantSource("store", mustSet(t, grantDoc))
	if !errors.Is(err, grant.ErrDuplicateGrant) {
		t.Fatalf("same grant name in two sources: %v", err)
	}
	if got := b.ListGrants(); len(got) != 1 || got[0].Source != "file" {
		t.Fatalf("grants after refused update: %+v", got)
	}
	if _, err := b.GetSecret(context.Background(), app, "db", grant.DeliveryGRPC); err != nil {
		t.Fatalf("previous grants no longer in force: %v", err)
	}
}

func TestBroker_Authenticate_errorKinds(t *testing.T) {
	tests := []struct {
		name string
		err  error
		kind error
		msg  string
	}{
		{"invalid", &identity.VerifyError{Reason: identity.ReasonExpired}, ErrUnauthenticated, "invalid token: expired"},
		{"unavailable", identity.ErrUnavailable, ErrUnavailable, "token verification is unavailable"},
		{"other", errors.New("boom secret-ish detail"), ErrInternal, "internal error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newBroker(t, clocktesting.NewFakeClock(time.Now()), fakeVerifier{err: tc.err})
			_, err := b.Authenticate(context.Background(), identity.NewToken("t"))
			if !errors.Is(err, tc.kind) || err.Error() != tc.msg && !strings.HasPrefix(err.Error(), tc.msg) {
				t.Fatalf("got %v, want kind %v message %q", err, tc.kind, tc.msg)
			}
		})
	}
	b := newBroker(t, clocktesting.NewFakeClock(time.Now()), fakeVerifier{})
	if _, err := b.Authenticate(context.Background(), identity.Token{}); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("empty token: %v", err)
	}
}

func TestBroker_Watch_endsWhenTokenExpires(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	b := newBroker(t, clk, fakeVerifier{})
	w := app
	w.ExpiresAt = clk.Now().Add(time.Minute)
	sent := make(chan string, 4)
	done := make(chan error, 1)
	go func() {
		done <- b.Watch(context.Background(), w, []string{"db"}, grant.DeliveryGRPC, func(_ string, s *source.Secret) error {
			sent <- s.Version
			return nil
		})
	}()
	<-sent
	for !clk.HasWaiters() {
		time.Sleep(time.Millisecond)
	}
	clk.Step(time.Minute)
	select {
	case err := <-done:
		if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "token expired") {
			t.Fatalf("got %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("watch outlived its token")
	}
}

// flipBinding is a BindingChecker whose answer the test changes.
type flipBinding struct{ err atomic.Pointer[error] }

func (f *flipBinding) Check(identity.Workload) error {
	if e := f.err.Load(); e != nil {
		return *e
	}
	return nil
}

func TestBroker_Watch_endsWhenPodLeavesNode(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	src := mapSource{"db": {Data: map[string]source.Value{"password": source.Value("pw")}, Version: "1"}}
	eng, _ := rotate.New(rotate.Config{Sources: map[string]source.Source{"local": src}, Logger: discard(), Clock: clk})
	fb := &flipBinding{}
	b, err := New(Config{Verifier: fakeVerifier{}, Cache: eng, Audit: audit.Discard{}, Logger: discard(), Clock: clk, Binding: fb, RecheckInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.UpdateGrantSource("file", mustSet(t, grantDoc)); err != nil {
		t.Fatal(err)
	}
	sent := make(chan string, 4)
	done := make(chan error, 1)
	go func() {
		done <- b.Watch(context.Background(), app, []string{"db"}, grant.DeliveryGRPC, func(_ string, s *source.Secret) error {
			sent <- s.Version
			return nil
		})
	}()
	<-sent
	gone := error(&identity.VerifyError{Reason: identity.ReasonPodNotOnNode})
	fb.err.Store(&gone)
	for {
		select {
		case err := <-done:
			if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), identity.ReasonPodNotOnNode) {
				t.Fatalf("got %v", err)
			}
			return
		case <-time.After(10 * time.Millisecond):
			clk.Step(time.Second)
		}
	}
}
