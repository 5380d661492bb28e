package grpcx

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"google.golang.org/grpc"
)

// ListenUnix listens on a Unix socket at path with the given file mode. A stale socket file
// left by a previous run is removed; any other file at path is an error, never deleted. The
// daemon runs under umask 077 (set in cmd), so between creation and chmod the socket is never
// wider than the owner.
func ListenUnix(path string, mode fs.FileMode) (net.Listener, error) {
	if mode&^0o777 != 0 {
		return nil, fmt.Errorf("socket mode %#o: only permission bits are allowed", mode)
	}
	// An owner-only socket gets an owner-only directory when the directory is new, so the
	// admin socket is not even visible to pods that share the workload socket's directory.
	dirMode := fs.FileMode(0o755)
	if mode&0o077 == 0 {
		dirMode = 0o700
	}
	if err := os.MkdirAll(filepath.Dir(path), dirMode); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	switch fi, err := os.Lstat(path); {
	case err == nil && fi.Mode()&fs.ModeSocket != 0:
		if c, derr := net.DialTimeout("unix", path, time.Second); derr == nil {
			_ = c.Close()
			return nil, fmt.Errorf("socket %s is in use by another process: is another keywarden running?", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	case err == nil:
		return nil, fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("check socket path: %w", err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("set socket mode: %w", err)
	}
	return lis, nil
}

// Serve runs srv on lis until ctx is done, then stops gracefully, cutting off streams that
// do not end within grace.
func Serve(ctx context.Context, srv *grpc.Server, lis net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	done := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		srv.Stop()
		<-done
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// PeerFilter wraps a Unix listener so that only processes running as one of the allowed user
// ids can connect (SO_PEERCRED): the admin socket's file mode is one guard, this is a second
// that also holds when the socket is bind-mounted somewhere with other permissions. Refused
// connections are closed at once and reported to onRefuse.
func PeerFilter(lis net.Listener, allowed []uint32, onRefuse func(uid uint32)) net.Listener {
	return &peerFilter{Listener: lis, allowed: allowed, onRefuse: onRefuse}
}

type peerFilter struct {
	net.Listener
	allowed  []uint32
	onRefuse func(uid uint32)
}

func (p *peerFilter) Accept() (net.Conn, error) {
	for {
		c, err := p.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, ok := peerUID(c)
		if ok && slices.Contains(p.allowed, uid) {
			return c, nil
		}
		_ = c.Close()
		if p.onRefuse != nil {
			p.onRefuse(uid)
		}
	}
}

func peerUID(c net.Conn) (uint32, bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return 0, false
	}
	return cred.Uid, true
}
