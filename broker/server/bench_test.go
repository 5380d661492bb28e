package server_test

import (
	"context"
	"testing"
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
