package csi

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// recordingMounter is a DirMounter that records BindSocket calls (a plain directory cannot
// carry a bind mount).
type recordingMounter struct {
	DirMounter
	mu    sync.Mutex
	binds []string // dst of every BindSocket call
}

func (m *recordingMounter) BindSocket(_ *os.Root, _, target string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.binds = append(m.binds, filepath.Join(target, APISocketName))
	return nil
}

func (m *recordingMounter) bound() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.binds)
}

// A restarted daemon listens on a new socket file; the binds in recovered volumes still pin the
// old one. Recover must bind the socket again into every volume that asked for it.
func TestDriver_Recover_rebindsAPISocket(t *testing.T) {
	e := newEnv(t)
	e.d.Close()
	m := &recordingMounter{}
	e.mount, e.apiSocket = m, "/run/keywarden/keywarden.sock"
	e.start()
	e.b.set("db", "v1", map[string]string{"password": "pw1"})
	with, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.publish("p2", "secrets", map[string]string{AttrSecrets: "db", AttrAPISocket: "false"}); err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(with.TargetPath, APISocketName)
	if got := m.bound(); !slices.Equal(got, []string{want}) {
		t.Fatalf("binds after publish = %q, want only %q", got, want)
	}
	e.d.Close()
	e.start()
	if e.d.Volumes() != 2 {
		t.Fatalf("recovered %d volumes, want 2", e.d.Volumes())
	}
	if got := m.bound(); !slices.Equal(got, []string{want, want}) {
		t.Fatalf("binds after recovery = %q, want %q bound again (and the apiSocket=false volume never)", got, want)
	}
}

// The TmpfsMounter replaces a bind of a previous daemon's socket with the current one.
func TestTmpfsMounter_BindSocket_replacesStaleSocket(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting tmpfs and bind mounts needs root")
	}
	dir, err := os.MkdirTemp("", "kwm-") // short: socket addresses are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	m := NewTmpfsMounter(1 << 20)
	target := filepath.Join(dir, "vol")
	vol, err := m.Setup(target, -1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = vol.Close()
		if err := m.Teardown(target); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	src, dst := filepath.Join(dir, "kw.sock"), filepath.Join(target, APISocketName)
	listen := func() net.Listener {
		t.Helper()
		_ = os.Remove(src)
		l, err := net.Listen("unix", src)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		return l
	}
	dial := func() error {
		c, err := net.Dial("unix", dst)
		if err == nil {
			_ = c.Close()
		}
		return err
	}
	first := listen()
	if err := m.BindSocket(vol, src, target); err != nil {
		t.Fatal(err)
	}
	if err := dial(); err != nil {
		t.Fatalf("dial the bound socket: %v", err)
	}
	if err := m.BindSocket(vol, src, target); err != nil { // same socket: a no-op
		t.Fatalf("second bind of the same socket: %v", err)
	}
	// "Restart": the old socket goes, a new file takes its name.
	_ = first.Close()
	listen()
	if err := dial(); err == nil {
		t.Fatal("the stale bind still reaches a socket; the test proves nothing")
	}
	if err := m.BindSocket(vol, src, target); err != nil {
		t.Fatalf("rebind: %v", err)
	}
	if err := dial(); err != nil {
		t.Fatalf("after rebind the volume's socket does not reach the new daemon: %v", err)
	}
}
