package csi

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/keywarden/keywarden/internal/testlog"
)

// An unpublish under an unknown volume ID at the target of a published volume — a confused or
// hostile caller on the CSI socket — must not remove that volume's files, record or watch.
func TestDriver_Unpublish_unknownVolumeAtAnotherVolumesTarget(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"password": "pw1"})
	r, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.d.Unpublish(context.Background(), "vol-someone-else", r.TargetPath); err != nil {
		t.Fatalf("unpublish of an unknown volume: %v; want success (idempotent)", err)
	}
	if got := readFile(t, filepath.Join(r.TargetPath, "db/password")); got != "pw1" {
		t.Fatalf("the published volume's file = %q after another ID's unpublish", got)
	}
	if e.d.Volumes() != 1 {
		t.Fatalf("volumes = %d; want the published one kept", e.d.Volumes())
	}
	// Its watch still runs: a new version still reaches the file.
	e.b.set("db", "v2", map[string]string{"password": "pw2"})
	eventually(t, "rotation after the foreign unpublish", func() bool {
		b, _ := os.ReadFile(filepath.Join(r.TargetPath, "db/password"))
		return string(b) == "pw2"
	})
	// A restart still finds its record.
	e.d.Close()
	e.start()
	if e.d.Volumes() != 1 {
		t.Fatalf("volumes after restart = %d; the record was lost", e.d.Volumes())
	}
}

// Whatever else sits at a kubelet CSI target — another driver's volume on the same device, a
// directory nobody recorded — is left alone by an unpublish this driver knows nothing of.
func TestDriver_Unpublish_foreignTargetLeftAlone(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"password": "pw1"})
	r, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db"})
	if err != nil {
		t.Fatal(err)
	}
	foreign := e.target("uid-p9", "other-driver")
	if err := os.MkdirAll(foreign, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(foreign, "data"), []byte("not ours"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A marker naming another volume does not make it ours either.
	if err := os.WriteFile(filepath.Join(foreign, volumeMarker), []byte("vol-p9-other"), 0o444); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"vol-p9-x", r.VolumeID} {
		if err := e.d.Unpublish(context.Background(), id, foreign); err != nil {
			t.Fatalf("unpublish %s at a foreign target: %v; want success (idempotent)", id, err)
		}
		if got := readFile(t, filepath.Join(foreign, "data")); got != "not ours" {
			t.Fatalf("unpublish %s: the foreign file = %q", id, got)
		}
	}
	if got := readFile(t, filepath.Join(r.TargetPath, "db/password")); got != "pw1" || e.d.Volumes() != 1 {
		t.Fatalf("the published volume changed: %q, %d volumes", got, e.d.Volumes())
	}
}

// A volume mounted and written but never recorded (killed in between) is still the driver's:
// its marker names the volume, so kubelet's unpublish, without a retry of the publish, removes
// it.
func TestDriver_Unpublish_killedBeforeRecord(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "kubelet"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashEnv+"="+dir)
	err := cmd.Run()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); err == nil || !ok || !ws.Signaled() {
		t.Fatalf("the child was not killed mid-publish: %v", err)
	}
	e := &env{t: t, dir: dir, root: filepath.Join(dir, "kubelet"), b: newFakeBroker(), logs: &testlog.Buffer{}, mount: DirMounter{}}
	e.db = openTestStore(t, dir)
	t.Cleanup(func() { _ = e.db.Close() })
	e.start()
	uid, _ := e.pod("p1")
	target := e.target(uid, "secrets")
	if _, err := os.Stat(filepath.Join(target, "db/password")); err != nil || e.d.Volumes() != 0 {
		t.Fatalf("the fault did not fire (files: %v, volumes %d)", err, e.d.Volumes())
	}
	if err := e.d.Unpublish(context.Background(), "vol-p1-secrets", target); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("unpublish left the unrecorded volume: %v", err)
	}
}

// An unpublish killed after the unmount and before the directory was removed leaves an empty
// directory and, after a restart, no record (the recorded volume is no longer mounted).
// kubelet's retry of the unpublish removes the directory; one with entries stays.
func TestDriver_Unpublish_emptyTargetRemoved(t *testing.T) {
	e := newEnv(t)
	empty := e.target("uid-p1", "secrets")
	full := e.target("uid-p2", "secrets")
	for _, dir := range []string{empty, full} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(full, "data"), []byte("not ours"), 0o600); err != nil {
		t.Fatal(err)
	}
	for id, target := range map[string]string{"vol-p1-secrets": empty, "vol-p2-secrets": full} {
		if err := e.d.Unpublish(context.Background(), id, target); err != nil {
			t.Fatalf("unpublish %s: %v", id, err)
		}
	}
	if _, err := os.Lstat(empty); !os.IsNotExist(err) {
		t.Fatalf("the empty target is still there: %v", err)
	}
	if got := readFile(t, filepath.Join(full, "data")); got != "not ours" {
		t.Fatalf("a target with entries was touched: %q", got)
	}
}
