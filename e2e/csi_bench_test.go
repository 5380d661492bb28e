//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keywarden/keywarden/e2e/framework"
)

// benchFreshSecrets is how many never-fetched secrets BenchmarkCSI_publish/vaultFetch can use:
// one per publish, over every b.N round of the benchmark.
const benchFreshSecrets = 16 * 32 // 16 grants of 32 secrets (the most a grant may name)

func freshGrants(ns string) string {
	var b strings.Builder
	for g := range benchFreshSecrets / 32 {
		fmt.Fprintf(&b, "---\napiVersion: keywarden.io/v1alpha1\nkind: AccessGrant\nmetadata: {name: fresh-%d}\nspec:\n  subjects: [{namespace: %s, serviceAccount: app}]\n  secrets:\n", g, ns)
		for i := range 32 {
			n := g*32 + i
			fmt.Fprintf(&b, "    - {name: fresh-%d, source: {vault: {mount: secret, path: app/fresh-%d}}}\n", n, n)
		}
	}
	return b.String()
}

// BenchmarkCSI_publish measures NodePublishVolume as kubelet sees it (the CSI call through the
// daemon's socket: token verification, grant check, secrets, tmpfs mount, atomic write, volume
// record) on a node with the real apiserver and Vault:
//
//   - warm: the secret is in the node cache (another volume uses it);
//   - vaultFetch: the first publish of a secret nobody fetched yet (one KV v2 read from Vault).
//
// Each iteration publishes a new pod's volume; creating the pod, requesting its token and
// unpublishing are not timed. It reports p50 and p99 in µs from the sorted samples, and asserts
// nothing. Run it (as root, for tmpfs) with
//
//	go test -tags e2e -run '^$' -bench BenchmarkCSI_publish -benchtime 100x ./e2e/
//
// vaultFetch has benchFreshSecrets fresh secrets for all its rounds together; use -benchtime Nx
// with N well below that.
func BenchmarkCSI_publish(b *testing.B) {
	e := startCSIVault(b, csiVaultOptions{pollInterval: time.Hour, logLevel: "info", extraGrants: freshGrants})
	bctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	e.putKV(b, "app/api", map[string]any{"token": "bench-csi-value"})
	// One volume keeps "api" in the cache (and watched) for the warm case.
	keep := e.kl.CreatePod(b, e.ns, "app")
	if _, _, err := e.kl.Publish(bctx, keep, "secrets", map[string]string{"secrets": "api"}); err != nil {
		b.Fatalf("warm-up publish: %v", err)
	}
	b.Cleanup(func() { _ = e.kl.Unpublish(context.Background(), keep, "secrets") })

	// publish times one NodePublishVolume of a new pod's volume with attrs.
	publish := func(b *testing.B, attrs map[string]string) time.Duration {
		b.StopTimer()
		pod := e.kl.CreatePod(b, e.ns, "app")
		tok := e.kl.PodToken(b, pod, framework.DefaultAudience)
		req := framework.PublishRequest{Pod: framework.PodInfoOf(pod), Tokens: map[string]framework.Token{framework.DefaultAudience: tok},
			Attributes: attrs, TargetPath: e.kl.TargetPath(pod, "secrets"), Driver: "keywarden.dev"}
		b.StartTimer()
		start := time.Now()
		id, err := e.kl.CSI().Publish(bctx, req)
		d := time.Since(start)
		b.StopTimer()
		if err != nil {
			b.Fatalf("publish: %v", err)
		}
		if err := e.kl.CSI().Unpublish(bctx, id, req.TargetPath); err != nil {
			b.Fatalf("unpublish: %v", err)
		}
		b.StartTimer()
		return d
	}
	report := func(b *testing.B, samples []time.Duration) {
		slices.Sort(samples)
		pct := func(p int) float64 {
			return float64(samples[min(len(samples)-1, len(samples)*p/100)].Microseconds())
		}
		b.ReportMetric(pct(50), "p50-µs")
		b.ReportMetric(pct(99), "p99-µs")
		b.ReportMetric(0, "ns/op") // the per-op mean includes untimed-setup noise; the percentiles are the result
	}

	var warm []time.Duration
	b.Run("warm", func(b *testing.B) {
		samples := make([]time.Duration, 0, b.N)
		for range b.N {
			samples = append(samples, publish(b, map[string]string{"secrets": "api"}))
		}
		report(b, samples)
		warm = samples
	})
	// floor is the physical floor of a warm publish on this node: a plain tmpfs mount at a
	// kubelet-shaped target and a write of the same files (marker, data directory with the
	// secret's file, the ..data and top-level symlinks), with no gRPC, identity, grant, seal or
	// record. It reports the warm publish's p50 and p99 over the floor's.
	b.Run("floor", func(b *testing.B) {
		if os.Geteuid() != 0 {
			b.Skip("needs root to mount tmpfs")
		}
		dir := b.TempDir()
		samples := make([]time.Duration, 0, b.N)
		for i := range b.N {
			b.StopTimer()
			target := filepath.Join(dir, "pods", fmt.Sprintf("floor-%d", i), "volumes", "kubernetes.io~csi", "secrets", "mount")
			if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			start := time.Now()
			err := floorPublish(target)
			samples = append(samples, time.Since(start))
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			if err := syscall.Unmount(target, 0); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		report(b, samples)
		if len(warm) > 0 {
			pct := func(s []time.Duration, p int) float64 { return float64(s[min(len(s)-1, len(s)*p/100)]) }
			b.ReportMetric(pct(warm, 50)/pct(samples, 50), "warm/floor-p50")
			b.ReportMetric(pct(warm, 99)/pct(samples, 99), "warm/floor-p99")
		}
	})
	next := 0
	b.Run("vaultFetch", func(b *testing.B) {
		samples := make([]time.Duration, 0, b.N)
		for range b.N {
			if next >= benchFreshSecrets {
				b.Fatalf("out of fresh secrets after %d publishes: use -benchtime Nx with N < %d", next, benchFreshSecrets/2)
			}
			b.StopTimer()
			name := fmt.Sprintf("fresh-%d", next)
			next++
			e.putKV(b, "app/"+name, map[string]any{"v": "bench-fresh-value"})
			b.StartTimer()
			samples = append(samples, publish(b, map[string]string{"secrets": name}))
		}
		report(b, samples)
	})
}

// floorPublish mounts a tmpfs at target and writes what a one-secret volume holds.
func floorPublish(target string) error {
	if err := os.MkdirAll(target, 0o750); err != nil {
		return err
	}
	if err := syscall.Mount("tmpfs", target, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, "mode=0755,size=1048576"); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	if err := os.WriteFile(filepath.Join(target, "..volume"), []byte("vol-floor"), 0o444); err != nil {
		return err
	}
	data := filepath.Join(target, "..2026_01_01_00_00_00.000000000_00000000")
	if err := os.MkdirAll(filepath.Join(data, "api"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(data, "api", "token"), []byte("bench-csi-value"), 0o400); err != nil {
		return err
	}
	if err := os.Symlink(filepath.Base(data), filepath.Join(target, "..data")); err != nil {
		return err
	}
	return os.Symlink(filepath.Join("..data", "api"), filepath.Join(target, "api"))
}
