package rotate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/keywarden/keywarden/broker/source"
)

// TestEngine_Status_freshness checks the per-secret freshness of Status: the next refresh, the
// failures since the last success and the last error, which is a fixed reason and never the
// source's own text (that may quote a value).
func TestEngine_Status_freshness(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	src := &fakeSource{version: 1, expires: clk.Now().Add(time.Hour)}
	e, err := New(Config{Sources: map[string]source.Source{"vault": src}, Logger: discard(), Clock: clk, PollInterval: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ref := source.Ref{Source: "vault", Path: "p"}
	if _, err := e.Get(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	st := e.Status()
	if len(st) != 1 || st[0].NextRefresh.IsZero() || st[0].Failures != 0 || st[0].LastError != "" || st[0].FetchedAt != clk.Now() {
		t.Fatalf("fresh: %+v", st)
	}
	const leaky = "password=v1-s3cr3t"
	src.set(2, fmt.Errorf("%w: vault said %s", source.ErrUnavailable, leaky))
	for range 2 {
		if err := e.Refresh(context.Background(), ref); !errors.Is(err, source.ErrUnavailable) {
			t.Fatal(err)
		}
	}
	st = e.Status()
	if st[0].Failures != 2 || !st[0].Stale || st[0].LastError != source.ErrUnavailable.Error() {
		t.Fatalf("after failures: %+v", st[0])
	}
	if strings.Contains(fmt.Sprintf("%+v", st), "s3cr3t") {
		t.Fatalf("status carries value material: %+v", st)
	}
	src.set(3, nil)
	if err := e.Refresh(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	if st = e.Status(); st[0].Failures != 0 || st[0].LastError != "" || st[0].Stale {
		t.Fatalf("after recovery: %+v", st[0])
	}
}
