//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"
)

// BenchmarkVault_warmGetSecretVsDirectKV compares a warm GetSecret through the daemon's Unix
// socket with a direct KV v2 read with vault/api on loopback, in one run, and reports the
// ratio (DESIGN.md target: at least 5×). Run it with
//
//	make tools && go test -tags e2e -run '^$' -bench BenchmarkVault_ ./e2e/
//
// (`make bench` includes it).
func BenchmarkVault_warmGetSecretVsDirectKV(b *testing.B) {
	s := startVaultSetup(b, vaultOptions{pollInterval: time.Hour, leaseGrace: time.Second, logLevel: "info"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	kv := s.vault.Client.KVv2("secret")
	if _, err := kv.Put(ctx, "app/api", map[string]any{"token": "bench-value"}); err != nil {
		b.Fatal(err)
	}
	if _, err := s.client.Get(ctx, "api"); err != nil { // warm the cache
		b.Fatal(err)
	}
	if _, err := kv.Get(ctx, "app/api"); err != nil { // warm the connection
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if _, err := s.client.Get(ctx, "api"); err != nil {
			b.Fatal(err)
		}
	}
	daemon := time.Since(start)
	b.StopTimer()
	start = time.Now()
	for range b.N {
		if _, err := kv.Get(ctx, "app/api"); err != nil {
			b.Fatal(err)
		}
	}
	direct := time.Since(start)
	b.ReportMetric(float64(daemon.Nanoseconds())/float64(b.N), "daemon-ns/op")
	b.ReportMetric(float64(direct.Nanoseconds())/float64(b.N), "vault-ns/op")
	b.ReportMetric(float64(direct)/float64(daemon), "speedup")
}
