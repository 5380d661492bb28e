package revoke

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/source"
)

type fakeBroker struct {
	mu      sync.Mutex
	names   []string
	changed chan struct{}
}

func (f *fakeBroker) SourceRefs(name string) []source.Ref {
	return []source.Ref{{Source: "local", Path: name}}
}

func (f *fakeBroker) SecretNames(string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.names...)
}

func (f *fakeBroker) GrantsChanged() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *fakeBroker) setNames(n ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.names = n
	close(f.changed)
	f.changed = make(chan struct{})
}

type fakePurger struct{ dropped []source.Ref }

func (p *fakePurger) Drop(ref source.Ref) bool { p.dropped = append(p.dropped, ref); return true }

type applied struct {
	mu  sync.Mutex
	set *grant.Set
}

func (a *applied) apply(s *grant.Set) error { a.mu.Lock(); a.set = s; a.mu.Unlock(); return nil }
func (a *applied) get() *grant.Set          { a.mu.Lock(); defer a.mu.Unlock(); return a.set }

func newManager(t *testing.T, names ...string) (*Manager, *fakeBroker, *fakePurger, *applied) {
	t.Helper()
	b := &fakeBroker{names: names, changed: make(chan struct{})}
	p := &fakePurger{}
	a := &applied{}
	m, err := New(Config{Broker: b, Purger: p, Apply: a.apply, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return m, b, p, a
}

func req(ns, sa, secret string) grant.Request {
	return grant.Request{Namespace: ns, ServiceAccount: sa, SPIFFEID: "spiffe://cluster.local/ns/" + ns + "/sa/" + sa, Secret: secret, Delivery: grant.DeliveryGRPC}
}

func TestManager_Revoke_secretDeniesEveryoneAndPurges(t *testing.T) {
	m, _, p, a := newManager(t, "db", "api")
	name, purged, err := m.Revoke(Target{Secret: "db"})
	if err != nil || name != "revoked.secret.db" || purged != 1 || len(p.dropped) != 1 {
		t.Fatalf("Revoke = %q, %d, %v", name, purged, err)
	}
	if d := a.get().Evaluate(req("any", "one", "db")); d.Allowed || d.Grant != name {
		t.Errorf("decision %+v, want denied by %s", d, name)
	}
	if d := a.get().Evaluate(req("any", "one", "api")); d.Grant != "" {
		t.Errorf("other secret touched: %+v", d)
	}
	if _, err := m.Lift(Target{Secret: "db"}); err != nil {
		t.Fatal(err)
	}
	if a.get().Len() != 0 || len(m.Names()) != 0 {
		t.Errorf("lift left %d grants", a.get().Len())
	}
	if _, err := m.Lift(Target{Secret: "db"}); !errors.Is(err, ErrNotRevoked) {
		t.Errorf("second lift = %v", err)
	}
}

func TestManager_Revoke_workloadCoversGrantsAddedLater(t *testing.T) {
	m, b, _, a := newManager(t, "db")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if _, _, err := m.Revoke(Target{Namespace: "demo", ServiceAccount: "app"}); err != nil {
		t.Fatal(err)
	}
	if d := a.get().Evaluate(req("demo", "app", "db")); d.Allowed || d.Grant == "" {
		t.Fatalf("decision %+v", d)
	}
	if d := a.get().Evaluate(req("demo", "other", "db")); d.Grant != "" {
		t.Errorf("another workload denied: %+v", d)
	}
	b.setNames("db", "new-secret")
	deadline := time.Now().Add(10 * time.Second)
	for a.get().Evaluate(req("demo", "app", "new-secret")).Grant == "" {
		if time.Now().After(deadline) {
			t.Fatal("a secret granted after the revocation is not covered")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTarget_Validate_badInput(t *testing.T) {
	for name, tg := range map[string]Target{
		"nothing":           {},
		"secret and sa":     {Secret: "db", Namespace: "a", ServiceAccount: "b"},
		"sa and spiffe":     {Namespace: "a", ServiceAccount: "b", SPIFFEID: "spiffe://x/y"},
		"bad secret":        {Secret: "../etc"},
		"namespace only":    {Namespace: "a"},
		"bad namespace":     {Namespace: "A_B", ServiceAccount: "b"},
		"bad spiffe":        {SPIFFEID: "http://x/y"},
		"secret upper case": {Secret: "DB"},
		"service account /": {Namespace: "a", ServiceAccount: "b/c"},
	} {
		if err := tg.Validate(); !errors.Is(err, ErrInvalidTarget) {
			t.Errorf("%s: Validate = %v, want ErrInvalidTarget", name, err)
		}
	}
	if n := (Target{Secret: "db_main"}).Name(); len(n) == 0 || n == "revoked.secret.db_main" {
		t.Errorf("name %q is not a DNS subdomain", n)
	}
}
