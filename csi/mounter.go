package csi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	mount "k8s.io/mount-utils"
)

// Mounter prepares and removes volume directories. Two implementations: TmpfsMounter (one
// sized tmpfs per volume; needs root / CAP_SYS_ADMIN) and DirMounter (a plain directory, for
// tests and unprivileged runs: the files then live on the disk that holds the kubelet root).
type Mounter interface {
	// Setup makes target a volume: creates it and mounts it when needed. It is idempotent: an
	// existing volume is kept with its files.
	Setup(target string, gid int) error
	// BindSocket makes the socket at src visible at dst inside a volume. It returns
	// errors.ErrUnsupported when the mounter cannot.
	BindSocket(src, dst string) error
	// Teardown unmounts and removes target and everything in it. A missing target is not an
	// error.
	Teardown(target string) error
}

// TmpfsMounter mounts one tmpfs per volume with mount(2); k8s.io/mount-utils tells mount points
// apart.
type TmpfsMounter struct {
	m mount.Interface
	// SizeBytes caps each volume; 0 means the kernel default (half of RAM).
	sizeBytes int64
}

// NewTmpfsMounter returns a TmpfsMounter whose volumes hold at most sizeBytes.
func NewTmpfsMounter(sizeBytes int64) *TmpfsMounter {
	return &TmpfsMounter{m: mount.New(""), sizeBytes: sizeBytes}
}

var _ Mounter = (*TmpfsMounter)(nil)

// Setup implements Mounter.
func (t *TmpfsMounter) Setup(target string, gid int) error {
	if err := os.MkdirAll(target, 0o750); err != nil {
		return fmt.Errorf("create target: %w", err)
	}
	notMnt, err := t.m.IsLikelyNotMountPoint(target)
	if err != nil {
		return fmt.Errorf("check target: %w", err)
	}
	if !notMnt {
		return nil
	}
	data := []string{"mode=0755"}
	if gid >= 0 {
		data = []string{"mode=0750", "gid=" + strconv.Itoa(gid)}
	}
	if t.sizeBytes > 0 {
		data = append(data, "size="+strconv.FormatInt(t.sizeBytes, 10))
	}
	// mount(2) directly: mount-utils execs /bin/mount, which costs milliseconds per publish.
	if err := syscall.Mount("tmpfs", target, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, strings.Join(data, ",")); err != nil {
		return fmt.Errorf("mount tmpfs: %w", err)
	}
	return nil
}

// BindSocket implements Mounter. A bind of another socket at dst — the socket of a daemon that
// ran before a restart, which the new daemon replaced with a new file — is replaced: a bind
// mount pins the old inode, and a client dialing it would get "connection refused" forever.
func (t *TmpfsMounter) BindSocket(src, dst string) error {
	if notMnt, err := t.m.IsLikelyNotMountPoint(dst); err == nil && !notMnt {
		if sameFile(src, dst) {
			return nil
		}
		if err := syscall.Unmount(dst, 0); err != nil {
			return fmt.Errorf("unbind the previous workload socket: %w", err)
		}
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create socket mount point: %w", err)
	}
	_ = f.Close()
	if err := syscall.Mount(src, dst, "", syscall.MS_BIND, ""); err != nil {
		_ = os.Remove(dst)
		return fmt.Errorf("bind workload socket: %w", err)
	}
	return nil
}

// sameFile reports whether a and b (following a bind mount) are the same inode.
func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// Teardown implements Mounter.
func (t *TmpfsMounter) Teardown(target string) error {
	if _, err := os.Lstat(target); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	sock := filepath.Join(target, APISocketName)
	if _, err := os.Lstat(sock); err == nil {
		if notMnt, err := t.m.IsLikelyNotMountPoint(sock); err == nil && !notMnt {
			if err := syscall.Unmount(sock, 0); err != nil {
				return fmt.Errorf("unmount workload socket: %w", err)
			}
		}
	}
	notMnt, err := t.m.IsLikelyNotMountPoint(target)
	if err != nil {
		return fmt.Errorf("check target: %w", err)
	}
	if !notMnt {
		if err := syscall.Unmount(target, 0); err != nil {
			return fmt.Errorf("unmount tmpfs: %w", err)
		}
	}
	// Left: a plain directory (a volume from a DirMounter run, or an interrupted setup).
	return os.RemoveAll(target)
}

// DirMounter uses a plain directory per volume.
type DirMounter struct{}

var _ Mounter = DirMounter{}

// Setup implements Mounter.
func (DirMounter) Setup(target string, gid int) error {
	mode := os.FileMode(0o755)
	if gid >= 0 {
		mode = 0o750
	}
	if err := os.MkdirAll(target, mode); err != nil {
		return fmt.Errorf("create target: %w", err)
	}
	if gid >= 0 {
		if err := os.Lchown(target, -1, gid); err != nil {
			return fmt.Errorf("set target group: %w", err)
		}
	}
	return nil
}

// BindSocket implements Mounter: a plain directory cannot carry the socket.
func (DirMounter) BindSocket(_, _ string) error { return errors.ErrUnsupported }

// Teardown implements Mounter.
func (DirMounter) Teardown(target string) error {
	if err := os.RemoveAll(target); err != nil {
		return fmt.Errorf("remove target: %w", err)
	}
	return nil
}
