package csi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// Mounter prepares and removes volume directories. Two implementations: TmpfsMounter (one
// sized tmpfs per volume; needs root / CAP_SYS_ADMIN) and DirMounter (a plain directory, for
// tests and unprivileged runs: the files then live on the disk that holds the kubelet root).
//
// The daemon writes through a handle (*os.Root) on the volume's root; the view at the target,
// the one kubelet gives the pod, is read-only where the mounter can make it so.
type Mounter interface {
	// Setup makes target a volume and returns a writable handle on its root. It is
	// idempotent: an existing volume is kept with its files. What keeps the handle writable
	// lasts until Teardown of target.
	Setup(target string, gid int) (*os.Root, error)
	// Open returns a writable handle on the volume already at target (one recorded before a
	// restart). It fails with ErrNotMounted when target holds no volume of this mounter.
	Open(target string) (*os.Root, error)
	// BindSocket makes the socket at src visible as APISocketName in the volume at target;
	// vol is the volume's writable handle, which creates the mount point. It returns
	// errors.ErrUnsupported when the mounter cannot.
	BindSocket(vol *os.Root, src, target string) error
	// Teardown unmounts and removes target and everything in it. A missing target is not an
	// error.
	Teardown(target string) error
}

// TmpfsMounter mounts one tmpfs per volume. The tmpfs is mounted read-only at the target and
// written through a private writable clone of that mount, which lives only as long as the
// daemon's handle on it: a pod (even one running as root) cannot write to, or fill, its
// secrets volume, whatever its volumeMount says. k8s.io/mount-utils tells mount points apart.
type TmpfsMounter struct {
	m mount.Interface
	// clones holds, per target, the open_tree fd of the writable clone its handle is in. It
	// stays open until Teardown: closing the last fd of a detached mount tree unmounts it,
	// and the kernel then waits for an RCU grace period, which on a busy node took up to tens
	// of milliseconds; kept open, that wait is the unpublish's instead of the publish's.
	mu     sync.Mutex
	clones map[string]int
	// SizeBytes caps each volume; 0 means the kernel default (half of RAM).
	sizeBytes int64
	// readOnlyView is false on kernels without the mount API (Linux < 5.12): the tmpfs is then
	// mounted read-write at the target, as it was before.
	readOnlyView bool
}

// NewTmpfsMounter returns a TmpfsMounter whose volumes hold at most sizeBytes.
func NewTmpfsMounter(sizeBytes int64) *TmpfsMounter {
	// mount_setattr(2) on an invalid fd answers EBADF where it exists and may be called;
	// ENOSYS where it does not (Linux < 5.12), EPERM where a seccomp filter refuses it.
	err := unix.MountSetattr(-1, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY})
	return &TmpfsMounter{m: mount.New(""), sizeBytes: sizeBytes, readOnlyView: errors.Is(err, unix.EBADF), clones: map[string]int{}}
}

var _ Mounter = (*TmpfsMounter)(nil)

// ReadOnlyView reports whether pods see their volumes read-only (false on Linux < 5.12).
func (t *TmpfsMounter) ReadOnlyView() bool { return t.readOnlyView }

// Setup implements Mounter.
func (t *TmpfsMounter) Setup(target string, gid int) (*os.Root, error) {
	if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, fmt.Errorf("create target: %w", err)
	}
	notMnt, err := t.m.IsLikelyNotMountPoint(target)
	if err != nil {
		return nil, fmt.Errorf("check target: %w", err)
	}
	if !notMnt {
		return t.Open(target)
	}
	opts := [][2]string{{"mode", "0755"}}
	if gid >= 0 {
		opts = [][2]string{{"mode", "0750"}, {"gid", strconv.Itoa(gid)}}
	}
	if t.sizeBytes > 0 {
		opts = append(opts, [2]string{"size", strconv.FormatInt(t.sizeBytes, 10)})
	}
	if !t.readOnlyView {
		data := make([]string, len(opts))
		for i, o := range opts {
			data[i] = o[0] + "=" + o[1]
		}
		// mount(2) directly: mount-utils execs /bin/mount, which costs milliseconds per publish.
		if err := syscall.Mount("tmpfs", target, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, strings.Join(data, ",")); err != nil {
			return nil, fmt.Errorf("mount tmpfs: %w", err)
		}
		return openRoot(target)
	}
	// The new mount API makes the tmpfs as a detached read-only mount and attaches it in one
	// step, so every copy that mount propagation makes (kubelet's, the pod's) is read-only from
	// its first moment: flags changed after an attach would not reach the copies.
	fsfd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("mount tmpfs: fsopen: %w", err)
	}
	defer unix.Close(fsfd)
	for _, o := range opts {
		if err := unix.FsconfigSetString(fsfd, o[0], o[1]); err != nil {
			return nil, fmt.Errorf("mount tmpfs: option %s: %w", o[0], err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return nil, fmt.Errorf("mount tmpfs: create: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return nil, fmt.Errorf("mount tmpfs: fsmount: %w", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return nil, fmt.Errorf("mount tmpfs: attach: %w", err)
	}
	// Just attached: no need to ask again (as Open does) whether target is a mount point.
	return t.cloneWritable(target)
}

// Open implements Mounter: the handle is a detached writable clone of the read-only mount at
// target, reachable only through the handle and gone when it is closed.
func (t *TmpfsMounter) Open(target string) (*os.Root, error) {
	if notMnt, err := t.m.IsLikelyNotMountPoint(target); err != nil || notMnt {
		return nil, fmt.Errorf("%w: %s", ErrNotMounted, target)
	}
	if !t.readOnlyView {
		return openRoot(target)
	}
	return t.cloneWritable(target)
}

// cloneWritable returns a handle on a detached writable clone of the read-only mount at
// target. The handle is the writer's for the volume's whole life, and the clone's fd is kept
// until Teardown (see TmpfsMounter.clones), so the clone is made once per publish or
// recovery, never per write, and its unmount is not on the publish's path.
func (t *TmpfsMounter) cloneWritable(target string) (*os.Root, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, target, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("open volume: clone mount: %w", err)
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_clr: unix.MOUNT_ATTR_RDONLY}); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("open volume: make the clone writable: %w", err)
	}
	root, err := openRoot("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	t.mu.Lock()
	old, had := t.clones[target]
	t.clones[target] = fd
	t.mu.Unlock()
	if had {
		_ = unix.Close(old) // a handle opened again (Setup of a mounted target): the old one's writer is gone
	}
	return root, nil
}

// releaseClone closes the clone fd kept for target, if any.
func (t *TmpfsMounter) releaseClone(target string) {
	t.mu.Lock()
	fd, ok := t.clones[target]
	delete(t.clones, target)
	t.mu.Unlock()
	if ok {
		_ = unix.Close(fd)
	}
}

// Clones is the number of writable clones kept open (one per volume handed out and not torn
// down).
func (t *TmpfsMounter) Clones() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.clones)
}

func openRoot(dir string) (*os.Root, error) {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open volume: %w", err)
	}
	return r, nil
}

// BindSocket implements Mounter. A bind of another socket at dst — the socket of a daemon that
// ran before a restart, which the new daemon replaced with a new file — is replaced: a bind
// mount pins the old inode, and a client dialing it would get "connection refused" forever.
func (t *TmpfsMounter) BindSocket(vol *os.Root, src, target string) error {
	dst := filepath.Join(target, APISocketName)
	if notMnt, err := t.m.IsLikelyNotMountPoint(dst); err == nil && !notMnt {
		if sameFile(src, dst) {
			return nil
		}
		if err := syscall.Unmount(dst, 0); err != nil {
			return fmt.Errorf("unbind the previous workload socket: %w", err)
		}
	}
	// The mount point is made through the writable handle: the view at target is read-only,
	// and a bind onto a file of a read-only mount is allowed.
	f, err := vol.OpenFile(APISocketName, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create socket mount point: %w", err)
	}
	_ = f.Close()
	if err := syscall.Mount(src, dst, "", syscall.MS_BIND, ""); err != nil {
		_ = vol.Remove(APISocketName)
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
	t.releaseClone(target)
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

// Setup implements Mounter. The directory stays writable at target: a plain directory has no
// read-only view.
func (DirMounter) Setup(target string, gid int) (*os.Root, error) {
	mode := os.FileMode(0o755)
	if gid >= 0 {
		mode = 0o750
	}
	if err := os.MkdirAll(target, mode); err != nil {
		return nil, fmt.Errorf("create target: %w", err)
	}
	if gid >= 0 {
		if err := os.Lchown(target, -1, gid); err != nil {
			return nil, fmt.Errorf("set target group: %w", err)
		}
	}
	return openRoot(target)
}

// Open implements Mounter.
func (DirMounter) Open(target string) (*os.Root, error) {
	if fi, err := os.Lstat(target); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%w: %s", ErrNotMounted, target)
	}
	return openRoot(target)
}

// BindSocket implements Mounter: a plain directory cannot carry the socket.
func (DirMounter) BindSocket(*os.Root, string, string) error { return errors.ErrUnsupported }

// Teardown implements Mounter.
func (DirMounter) Teardown(target string) error {
	if err := os.RemoveAll(target); err != nil {
		return fmt.Errorf("remove target: %w", err)
	}
	return nil
}
