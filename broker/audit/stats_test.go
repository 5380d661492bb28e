package audit

import (
	"context"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// TestLog_Stats_flushesAndFailures checks the counters behind keywarden_audit_backlog_entries
// and keywarden_audit_flushes_total.
func TestLog_Stats_flushesAndFailures(t *testing.T) {
	f := newFailingDB(t)
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	l, _ := newLog(t, f.DB, func(c *Config) { c.Clock, c.FlushInterval = clk, time.Second })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	// waitFor steps the clock until the stats satisfy ok.
	waitFor := func(what string, ok func(Stats) bool) Stats {
		t.Helper()
		for range 10000 {
			if st := l.Stats(); ok(st) {
				return st
			}
			clk.Step(time.Second)
			time.Sleep(time.Millisecond)
		}
		t.Fatalf("never: %s; stats %+v", what, l.Stats())
		return Stats{}
	}

	f.set(true)
	for i := range 3 {
		l.Record(ctx, event(i))
	}
	st := waitFor("a failed flush", func(s Stats) bool { return s.Failures > 0 })
	if st.Pending != 3 || st.Flushes != 0 {
		t.Fatalf("after failed flush: %+v, want 3 pending, 0 flushes", st)
	}
	f.set(false)
	st = waitFor("the backlog written", func(s Stats) bool { return s.Pending == 0 })
	if st.Flushes == 0 || st.Written != 3 {
		t.Fatalf("after recovery: %+v, want ≥1 flush and 3 written", st)
	}
}
