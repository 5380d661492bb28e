package csi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// mountOptions returns the per-mount options of every mount at target, from mountinfo.
func mountOptions(t *testing.T, target string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var opts []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == target {
			opts = append(opts, f[5])
		}
	}
	return opts
}

// The pod's view of its tmpfs volume is read-only, for root in the pod too, while the daemon
// keeps writing rotations into it, also after a restart.
func TestTmpfsMounter_podViewIsReadOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount tmpfs; CI runs as root")
	}
	m := NewTmpfsMounter(1 << 20)
	if !m.ReadOnlyView() {
		t.Skip("this kernel has no mount_setattr (Linux < 5.12): volumes stay read-write")
	}
	e := newEnv(t)
	e.d.Close()
	e.mount = m
	e.start()
	e.b.set("db", "v1", map[string]string{"password": "pw1"})
	r, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.d.Unpublish(context.Background(), r.VolumeID, r.TargetPath) })
	if opts := mountOptions(t, r.TargetPath); len(opts) != 1 || !strings.HasPrefix(opts[0], "ro,") {
		t.Fatalf("mounts at the target: %q; want one, read-only", opts)
	}
	if n := m.Clones(); n != 1 {
		t.Fatalf("writable clones kept after a publish: %d, want 1", n)
	}
	refused := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, syscall.EROFS) {
			t.Fatalf("%s through the pod's view: %v; want EROFS", what, err)
		}
	}
	refused("create a file", os.WriteFile(filepath.Join(r.TargetPath, "planted"), []byte("x"), 0o600))
	refused("remove a file", os.Remove(filepath.Join(r.TargetPath, "db")))
	refused("rename the data link", os.Rename(filepath.Join(r.TargetPath, dataLink), filepath.Join(r.TargetPath, "x")))
	refused("chmod a file", os.Chmod(filepath.Join(r.TargetPath, "db/password"), 0o666))

	e.b.set("db", "v2", map[string]string{"password": "pw2"})
	eventually(t, "rotation into the read-only volume", func() bool {
		b, _ := os.ReadFile(filepath.Join(r.TargetPath, "db/password"))
		return string(b) == "pw2"
	})
	e.d.Close()
	e.start()
	if e.d.Volumes() != 1 {
		t.Fatalf("recovered %d volumes, want 1", e.d.Volumes())
	}
	e.b.set("db", "v3", map[string]string{"password": "pw3"})
	eventually(t, "rotation after a restart", func() bool {
		b, _ := os.ReadFile(filepath.Join(r.TargetPath, "db/password"))
		return string(b) == "pw3"
	})
	if opts := mountOptions(t, r.TargetPath); len(opts) != 1 || !strings.HasPrefix(opts[0], "ro,") {
		t.Fatalf("mounts at the target after a restart: %q; want one, read-only", opts)
	}
	if n := m.Clones(); n != 1 {
		t.Fatalf("writable clones kept after a recovery: %d, want 1 (the recovery's replaces the old)", n)
	}
	if err := e.d.Unpublish(context.Background(), r.VolumeID, r.TargetPath); err != nil {
		t.Fatal(err)
	}
	if n := m.Clones(); n != 0 {
		t.Fatalf("writable clones kept after the unpublish: %d, want 0", n)
	}
	if _, err := os.Stat(r.TargetPath); !os.IsNotExist(err) || len(mountOptions(t, r.TargetPath)) != 0 {
		t.Fatalf("unpublish left the target (%v) or a mount (%q)", err, mountOptions(t, r.TargetPath))
	}
}

// A record whose tmpfs is gone (the node rebooted) is dropped at recovery: writing the files
// again into the bare directory would put secrets on the kubelet's disk.
func TestDriver_Recover_unmountedVolumeDropped(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount tmpfs; CI runs as root")
	}
	e := newEnv(t)
	e.d.Close()
	e.mount = NewTmpfsMounter(1 << 20)
	e.start()
	e.b.set("db", "v1", map[string]string{"password": "pw1"})
	r, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db"})
	if err != nil {
		t.Fatal(err)
	}
	e.d.Close()
	if err := syscall.Unmount(filepath.Join(r.TargetPath, APISocketName), 0); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
		t.Fatal(err)
	}
	if err := syscall.Unmount(r.TargetPath, 0); err != nil {
		t.Fatal(err)
	}
	e.start()
	if e.d.Volumes() != 0 {
		t.Fatalf("recovered %d volumes from an unmounted target, want 0", e.d.Volumes())
	}
	if !strings.Contains(e.logs.String(), "recorded volume is no longer mounted; record dropped") {
		t.Fatalf("not logged:\n%s", e.logs.String())
	}
	entries, _ := os.ReadDir(r.TargetPath)
	if len(entries) != 0 {
		t.Fatalf("files written into the bare target directory: %v", entries)
	}
}
