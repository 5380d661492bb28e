package server_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/server"
	"github.com/keywarden/keywarden/client"
)

// BenchmarkGetSecret_warm measures GetSecret over the real Unix socket with a warm cache:
// token verification, grant evaluation, cache read and gRPC round trip.
func BenchmarkGetSecret_warm(b *testing.B) {
	s := newStackTB(b)
	c := s.clientTB(b, s.tokenTB(b, "demo", "app"))
	ctx := context.Background()
	if _, err := c.Get(ctx, "demo-db"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Get(ctx, "demo-db"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkGetSecret_warm16 is the in-process shape of e2e's throughput comparison: 16
// concurrent callers share one client (one connection) and read one warm secret, b.N reads in
// all; it reports reads/s and the p50/p99 latency of a read. "sealed" is the client's default
// (each response sealed to the request's reply key with HPKE: an X25519 key generation and
// one X25519 agreement in the daemon, two X25519 operations in the client to open it);
// "plain" is the same read without sealing, so the difference is the cost of sealing. The
// broker audits to an audit.Log as in the daemon.
// Profile it with
//
//	go test -run '^$' -bench 'BenchmarkGetSecret_warm16' -cpuprofile cpu.out -memprofile mem.out ./broker/server/
func BenchmarkGetSecret_warm16(b *testing.B) {
	const callers = 16
	for _, tc := range []struct {
		name string
		opts []client.Option
	}{
		{"sealed", nil},
		{"plain", []client.Option{client.WithoutSealing()}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := newStackWith(b, server.Limits{}, true)
			c, err := client.New(s.socket, append([]client.Option{client.WithToken(s.tokenTB(b, "demo", "app"))}, tc.opts...)...)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = c.Close() })
			ctx := context.Background()
			if _, err := c.Get(ctx, "demo-db"); err != nil {
				b.Fatal(err)
			}
			per := (b.N + callers - 1) / callers
			lat := make([][]time.Duration, callers)
			var wg sync.WaitGroup
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					l := make([]time.Duration, 0, per)
					for range per {
						t0 := time.Now()
						if _, err := c.Get(ctx, "demo-db"); err != nil {
							b.Error(err)
							return
						}
						l = append(l, time.Since(t0))
					}
					lat[i] = l
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			all := slices.Concat(lat...)
			if len(all) == 0 {
				return
			}
			slices.Sort(all)
			pct := func(p int) float64 { return float64(all[min(len(all)-1, len(all)*p/100)].Nanoseconds()) / 1e3 }
			b.ReportMetric(float64(len(all))/elapsed.Seconds(), "reads/s")
			b.ReportMetric(pct(50), "p50-µs")
			b.ReportMetric(pct(99), "p99-µs")
		})
	}
}
