package rotate

import (
	"context"
	"errors"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/keywarden/keywarden/broker/source"
)

func TestEngine_Freshness(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	static := &fakeSource{version: 1}
	leased := &fakeSource{version: 1, expires: clk.Now().Add(time.Hour)}
	e, err := New(Config{Sources: map[string]source.Source{"static": static, "leased": leased}, Logger: discard(), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	staticRef := source.Ref{Source: "static", Path: "a"}
	leasedRef := source.Ref{Source: "leased", Path: "b"}

	if f := e.Freshness(); f != (Freshness{}) {
		t.Fatalf("empty cache: %+v", f)
	}
	steps := []struct {
		name string
		do   func(t *testing.T)
		want Freshness
	}{
		{"static cached", func(t *testing.T) {
			if _, err := e.Get(context.Background(), staticRef); err != nil {
				t.Fatal(err)
			}
			clk.Step(10 * time.Second)
		}, Freshness{Cached: 1, OldestAge: 10 * time.Second}},
		{"leased cached", func(t *testing.T) {
			if _, err := e.Get(context.Background(), leasedRef); err != nil {
				t.Fatal(err)
			}
			clk.Step(5 * time.Second)
		}, Freshness{Cached: 2, OldestAge: 15 * time.Second, MinTimeToExpiry: time.Hour - 15*time.Second, ExpiryKnown: true}},
		{"refresh fails: stale", func(t *testing.T) {
			static.set(2, source.ErrUnavailable)
			if err := e.Refresh(context.Background(), staticRef); !errors.Is(err, source.ErrUnavailable) {
				t.Fatal(err)
			}
		}, Freshness{Cached: 2, Stale: 1, OldestAge: 15 * time.Second, MinTimeToExpiry: time.Hour - 15*time.Second, ExpiryKnown: true, RefreshFailures: 1}},
		{"refresh recovers", func(t *testing.T) {
			static.set(2, nil)
			if err := e.Refresh(context.Background(), staticRef); err != nil {
				t.Fatal(err)
			}
		}, Freshness{Cached: 2, OldestAge: 5 * time.Second, MinTimeToExpiry: time.Hour - 15*time.Second, ExpiryKnown: true, RefreshFailures: 1}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.do(t)
			if got := e.Freshness(); got != st.want {
				t.Fatalf("got %+v\nwant %+v", got, st.want)
			}
		})
	}
}
