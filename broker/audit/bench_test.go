package audit

import (
	"context"
	"encoding/json"
	"testing"
	"time"
)

// BenchmarkLog_Record is the cost the request path pays: queueing one event while the
// flusher writes batches to a real store in the background.
func BenchmarkLog_Record(b *testing.B) {
	l, _ := newLog(b, openDB(b), func(c *Config) { c.FlushInterval = 10 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	ev := event(1)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Record(ctx, ev)
		}
	})
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	if st := l.Stats(); st.Dropped > 0 {
		b.Logf("%d events dropped (queue full)", st.Dropped)
	}
}

// BenchmarkLog_Flush_batched writes events in batches of DefaultMaxBatch (one fsync'd bbolt
// transaction per batch): the durable throughput of the log.
func BenchmarkLog_Flush_batched(b *testing.B) {
	l, _ := newLog(b, openDB(b))
	ev := event(1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l.Record(context.Background(), ev)
		if (i+1)%DefaultMaxBatch == 0 {
			if err := l.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := l.Flush(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkLog_Flush_perEvent is the baseline without batching: one transaction per event.
func BenchmarkLog_Flush_perEvent(b *testing.B) {
	l, _ := newLog(b, openDB(b))
	ev := event(1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l.Record(context.Background(), ev)
		if err := l.Flush(); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzVerifyExport feeds arbitrary exports to the verifier: it must never panic, and a
// genuine export must always verify.
func FuzzVerifyExport(f *testing.F) {
	var prev = ZeroHash
	var lines []byte
	for i := range 3 {
		ev := event(i)
		e := Entry{Seq: uint64(i + 1), Time: ev.Time, Event: &ev, Prev: prev}
		e.Event.Time = time.Time{}
		e.seal()
		prev = e.Hash
		b, _ := json.Marshal(e)
		lines = append(append(lines, b...), '\n')
	}
	f.Add(lines)
	f.Add([]byte("{}\n{\"seq\":1}\n"))
	f.Add([]byte(`{"seq":2,"time":"2030-01-01T00:00:00Z","checkpoint":{"droppedThrough":1,"droppedHash":"x","dropped":1},"prev":"y","hash":"z"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := VerifyExport(bytesReader(data))
		if err == nil && rep.Entries > 0 && rep.Last < rep.First {
			t.Fatalf("report %+v", rep)
		}
	})
}
