package grpcx

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
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
