//go:build e2e

package e2e

import (
	"context"
	"sync"
	"sync/atomic"
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

// BenchmarkVault_throughputGetSecretVsDirectKV is the DESIGN.md throughput comparison: 16
// concurrent callers read one warm secret through the daemon, then the same number read it
// straight from Vault with vault/api, each for b.N reads in total; it reports both rates and
// their ratio from one run. (The benchmark above is the sequential latency of one caller.)
func BenchmarkVault_throughputGetSecretVsDirectKV(b *testing.B) {
	s := startVaultSetup(b, vaultOptions{pollInterval: time.Hour, leaseGrace: time.Second, logLevel: "info"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	kv := s.vault.Client.KVv2("secret")
	if _, err := kv.Put(ctx, "app/api", map[string]any{"token": "bench-value"}); err != nil {
		b.Fatal(err)
	}
	if _, err := s.client.Get(ctx, "api"); err != nil {
		b.Fatal(err)
	}
	const callers = 16
	run := func(get func() error) time.Duration {
		var wg sync.WaitGroup
		var failed atomic.Bool
		per := (b.N + callers - 1) / callers
		start := time.Now()
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range per {
					if err := get(); err != nil {
						failed.Store(true)
						return
					}
				}
			}()
		}
		wg.Wait()
		if failed.Load() {
			b.Fatal("a read failed")
		}
		return time.Since(start)
	}
	b.ResetTimer()
	daemon := run(func() error { _, err := s.client.Get(ctx, "api"); return err })
	b.StopTimer()
	direct := run(func() error { _, err := kv.Get(ctx, "app/api"); return err })
	n := float64(((b.N + callers - 1) / callers) * callers)
	b.ReportMetric(n/daemon.Seconds(), "daemon-reads/s")
	b.ReportMetric(n/direct.Seconds(), "vault-reads/s")
	b.ReportMetric(direct.Seconds()/daemon.Seconds(), "throughput-ratio")
}
