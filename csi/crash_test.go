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

// crashEnv names the env var that makes the test binary act as a daemon that is killed
// between writing a volume's files and recording the volume.
const crashEnv = "KEYWARDEN_CSI_CRASH_DIR"

// TestMain lets the test binary re-exec itself as the crashing child.
func TestMain(m *testing.M) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashChild(dir)
		return
	}
	if dir := os.Getenv(publishChaosEnv); dir != "" {
		runPublishChaosChild(dir)
		return
	}
	os.Exit(m.Run())
}

func crashChild(dir string) {
	t := &testing.T{}
	e := &env{t: t, dir: dir, root: filepath.Join(dir, "kubelet"), b: newFakeBroker(), logs: &testlog.Buffer{}, mount: DirMounter{}}
	e.db = openTestStore(t, dir)
	e.start()
	e.b.set("db", "v1", map[string]string{"password": "crash-v1"})
	e.d.afterWrite = func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL) }
	_, _ = e.publish("p1", "secrets", map[string]string{AttrSecrets: "db"})
	os.Exit(3) // not reached: the hook kills the process
}

// TestDriver_Publish_killedBeforeRecord kills the daemon (SIGKILL, a re-executed child) after
// the files are written but before the volume is recorded. After a restart, kubelet's retry of
// the same publish succeeds with the right files and the volume is managed again, and an
// unpublish removes everything.
func TestDriver_Publish_killedBeforeRecord(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "kubelet"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashEnv+"="+dir)
	err := cmd.Run()
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if err == nil || !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the child was not killed by SIGKILL mid-publish: %v", err)
	}

	e := &env{t: t, dir: dir, root: filepath.Join(dir, "kubelet"), b: newFakeBroker(), logs: &testlog.Buffer{}, mount: DirMounter{}}
	e.db = openTestStore(t, dir)
	t.Cleanup(func() { _ = e.db.Close() })
	e.start()
	uid, _ := e.pod("p1")
	target := e.target(uid, "secrets")
	if _, err := os.Stat(filepath.Join(target, "db/password")); err != nil {
		t.Fatalf("the fault did not fire: the child wrote no files before dying: %v", err)
	}
	if e.d.Volumes() != 0 {
		t.Fatalf("an unrecorded volume was recovered: %d", e.d.Volumes())
	}
	e.b.set("db", "v2", map[string]string{"password": "crash-v2"})
	r, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db"})
	if err != nil {
		t.Fatalf("kubelet's retry after the crash: %v", err)
	}
	if got := readFile(t, filepath.Join(r.TargetPath, "db/password")); got != "crash-v2" {
		t.Fatalf("after the retry: %q, want the current value", got)
	}
	if e.d.Volumes() != 1 {
		t.Fatalf("volumes = %d after the retry", e.d.Volumes())
	}
	if err := e.d.Unpublish(context.Background(), r.VolumeID, r.TargetPath); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(r.TargetPath); !os.IsNotExist(err) {
		t.Fatalf("unpublish left the target: %v", err)
	}
}
