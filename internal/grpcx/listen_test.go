package grpcx

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestListenUnix_refusesNonSocketAndLiveSocket(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "regular")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenUnix(file, 0o600); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file: %v", err)
	}
	sock := filepath.Join(dir, "s.sock")
	l1, err := ListenUnix(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Close()
	if _, err := ListenUnix(sock, 0o600); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("live socket: %v", err)
	}
}

func TestPeerFilter_refusesOtherUsers(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "a.sock")
	lis, err := ListenUnix(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	refused := make(chan uint32, 1)
	// Allow only a uid nobody runs as: our own connection must be refused.
	f := PeerFilter(lis, []uint32{4294967294}, func(uid uint32) { refused <- uid })
	defer f.Close()
	go func() { _, _ = f.Accept() }()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case uid := <-refused:
		if uid != uint32(os.Getuid()) {
			t.Fatalf("refused uid %d, want %d", uid, os.Getuid())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("connection from a disallowed uid was not refused")
	}
	// Allowed: our own uid.
	lis2, err := ListenUnix(filepath.Join(t.TempDir(), "b.sock"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f2 := PeerFilter(lis2, []uint32{uint32(os.Getuid())}, nil)
	defer f2.Close()
	accepted := make(chan error, 1)
	go func() {
		c, err := f2.Accept()
		if c != nil {
			c.Close()
		}
		accepted <- err
	}()
	c2, err := net.Dial("unix", lis2.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := <-accepted; err != nil {
		t.Fatalf("own uid refused: %v", err)
	}
}
