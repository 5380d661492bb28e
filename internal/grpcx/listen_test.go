package grpcx

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
