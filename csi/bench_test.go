package csi

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// benchMounter is the mounter of the publish benchmarks: a TmpfsMounter when the process may
// mount (root), as the daemon runs, else a DirMounter (then the figures include the disk).
func benchMounter(b *testing.B) (Mounter, string) {
	if os.Geteuid() == 0 {
		return NewTmpfsMounter(1 << 20), "tmpfs"
	}
	b.Log("not root: plain directories instead of tmpfs")
	return DirMounter{}, "dir"
}

// reportPercentiles reports p50 and p99 of samples in µs and hides the mean, which includes
// the untimed setup.
func reportPercentiles(b *testing.B, samples []time.Duration) {
	b.Helper()
	slices.Sort(samples)
	pct := func(p int) float64 {
		return float64(samples[min(len(samples)-1, len(samples)*p/100)].Nanoseconds()) / 1e3
	}
	b.ReportMetric(pct(50), "p50-µs")
	b.ReportMetric(pct(99), "p99-µs")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkDriver_Publish_warm measures Driver.Publish of a new pod's volume whose secret the
// broker answers at once (a fake: the broker's own cost is BenchmarkGetSecret_warm's), on a
// real sealed store file and, as root, a real tmpfs: what the driver itself costs per publish
// (parse, target check, mount, marker, atomic write, volume record, watch start). Unpublishing
// is not timed. Profile it without the e2e servers:
//
//	go test -run '^$' -bench BenchmarkDriver_Publish -benchtime 2000x -cpuprofile cpu.out ./csi/
func BenchmarkDriver_Publish_warm(b *testing.B) {
	e := newEnv(b)
	m, kind := benchMounter(b)
	e.mount = m
	e.start()
	e.b.set("api", "v1", map[string]string{"token": "bench-csi-value"})
	ctx := context.Background()
	samples := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		name := "bench-" + strconv.Itoa(i)
		uid, tok := e.pod(name)
		r := PublishRequest{VolumeID: "vol-" + name, TargetPath: e.target(uid, "secrets"), VolumeContext: volumeContext(name, uid, tok, map[string]string{AttrSecrets: "api"}), GID: -1}
		// kubelet makes the volume's directory (and writes vol_data.json in it) before it asks.
		if err := os.MkdirAll(filepath.Dir(r.TargetPath), 0o750); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		err := e.d.Publish(ctx, r)
		samples = append(samples, time.Since(start))
		b.StopTimer()
		if err != nil {
			b.Fatalf("publish (%s): %v", kind, err)
		}
		if err := e.d.Unpublish(ctx, r.VolumeID, r.TargetPath); err != nil {
			b.Fatalf("unpublish: %v", err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	reportPercentiles(b, samples)
}

// BenchmarkDriver_PublishFloor is the physical floor of a publish: a plain tmpfs mount (or, not
// as root, a directory) at a kubelet-shaped target and a write of the same files the driver
// writes (the marker, one data directory with the secret's file, the "..data" and top-level
// symlinks), with no identity check, no sealing and no record. Publish p50/p99 over this
// floor's is the driver's overhead ratio.
func BenchmarkDriver_PublishFloor(b *testing.B) {
	root := filepath.Join(b.TempDir(), "kubelet")
	tmpfs := os.Geteuid() == 0
	samples := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		target := filepath.Join(root, "pods", "uid-"+strconv.Itoa(i), "volumes", "kubernetes.io~csi", "secrets", "mount")
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		err := floorPublish(target, tmpfs)
		samples = append(samples, time.Since(start))
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		if tmpfs {
			if err := syscall.Unmount(target, 0); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.RemoveAll(target); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	reportPercentiles(b, samples)
}

func floorPublish(target string, tmpfs bool) error {
	if err := os.MkdirAll(target, 0o750); err != nil {
		return err
	}
	if tmpfs {
		if err := syscall.Mount("tmpfs", target, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, "mode=0755,size=1048576"); err != nil {
			return fmt.Errorf("mount: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(target, volumeMarker), []byte("vol-bench"), 0o444); err != nil {
		return err
	}
	data := filepath.Join(target, "..2026_01_01_00_00_00.000000000_00000000")
	if err := os.MkdirAll(filepath.Join(data, "api"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(data, "api", "token"), []byte("bench-csi-value"), 0o400); err != nil {
		return err
	}
	if err := os.Symlink(filepath.Base(data), filepath.Join(target, dataLink)); err != nil {
		return err
	}
	return os.Symlink(filepath.Join(dataLink, "api"), filepath.Join(target, "api"))
}
