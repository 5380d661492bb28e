package csi

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Names the atomic writer owns at a volume root. User paths may not start with "..".
const (
	dataLink    = "..data"
	dataLinkTmp = "..data_tmp"
	// volumeMarker holds the volume ID of the driver's own volume (see Driver.Unpublish).
	volumeMarker = "..volume"
)

// File is one file of a volume payload.
type File struct {
	Data []byte
	Mode fs.FileMode
}

// AtomicWriter writes a volume's files so that a reader never sees half of an update, the way
// kubelet's AtomicWriter does: the files go into a new timestamped directory, the "..data"
// symlink is swapped to it with one rename, and each top-level user path is a symlink through
// "..data". Every operation is relative to the volume root opened once (os.Root), so a symlink
// planted anywhere in the volume cannot make it write outside.
type AtomicWriter struct {
	root *os.Root
	// gid owns files and directories when >= 0 (the pod's fsGroup).
	gid int
	// now names data directories.
	now func() time.Time
}

// NewAtomicWriter writes the volume whose root is root, and closes root when it is closed (also
// when it fails). gid < 0 leaves the group alone. It removes what an interrupted write left
// behind (a stale "..data_tmp", data directories "..data" does not point to), so a crash in the
// middle of a write leaves the old or the new set, never both.
func NewAtomicWriter(root *os.Root, gid int, now func() time.Time) (*AtomicWriter, error) {
	w := &AtomicWriter{root: root, gid: gid, now: now}
	if err := w.cleanup(); err != nil {
		_ = root.Close()
		return nil, err
	}
	return w, nil
}

// Close releases the volume root.
func (w *AtomicWriter) Close() error { return w.root.Close() }

// current returns the data directory "..data" points to, or "".
func (w *AtomicWriter) current() string {
	target, err := w.root.Readlink(dataLink)
	if err != nil {
		return ""
	}
	return target
}

// Written reports whether the volume holds a complete payload.
func (w *AtomicWriter) Written() bool { return w.current() != "" }

func (w *AtomicWriter) cleanup() error {
	_ = w.root.Remove(dataLinkTmp)
	cur := w.current()
	entries, err := w.readRoot()
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, "..") && n != dataLink && n != cur && e.IsDir() {
			if err := w.root.RemoveAll(n); err != nil {
				return fmt.Errorf("remove stale data directory: %w", err)
			}
		}
	}
	return nil
}

func (w *AtomicWriter) readRoot() ([]fs.DirEntry, error) {
	f, err := w.root.Open(".")
	if err != nil {
		return nil, fmt.Errorf("read volume: %w", err)
	}
	defer f.Close()
	entries, err := f.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("read volume: %w", err)
	}
	return entries, nil
}

// checkPayload rejects invalid paths and a path that is also a directory of another.
func checkPayload(payload map[string]File) error {
	if len(payload) == 0 {
		return errors.New("empty payload")
	}
	for p := range payload {
		if err := validateVolumePath(p); err != nil {
			return err
		}
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := payload[d]; ok {
				return fmt.Errorf("%w: a file path is also the directory of another file", ErrInvalidRequest)
			}
		}
	}
	return nil
}

// Write replaces the volume's files with payload in one atomic swap. On error the previous
// files stay in place and what was partly written is removed.
func (w *AtomicWriter) Write(payload map[string]File) (err error) {
	if err := checkPayload(payload); err != nil {
		return err
	}
	old := w.current()
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	dir := ".." + w.now().UTC().Format("2006_01_02_15_04_05.000000000") + "_" + hex.EncodeToString(rnd[:])
	dirMode := fs.FileMode(0o755)
	if w.gid >= 0 {
		dirMode = 0o750
	}
	if err := w.root.Mkdir(dir, dirMode); err != nil {
		return wrapWrite("create data directory", err)
	}
	defer func() {
		if err != nil {
			_ = w.root.RemoveAll(dir)
		}
	}()
	if err := w.chown(dir); err != nil {
		return err
	}
	paths := slices.Sorted(func(yield func(string) bool) {
		for p := range payload {
			if !yield(p) {
				return
			}
		}
	})
	tops := map[string]bool{}
	for _, p := range paths {
		f := payload[p]
		first, _, _ := strings.Cut(p, "/")
		tops[first] = true
		if err := w.mkdirs(dir, path.Dir(p), dirMode); err != nil {
			return err
		}
		if err := w.writeFile(path.Join(dir, p), f); err != nil {
			return err
		}
	}
	// Swap: a new symlink renamed over "..data" is atomic.
	_ = w.root.Remove(dataLinkTmp)
	if err := w.root.Symlink(dir, dataLinkTmp); err != nil {
		return wrapWrite("link data directory", err)
	}
	if err := w.root.Rename(dataLinkTmp, dataLink); err != nil {
		_ = w.root.Remove(dataLinkTmp)
		return wrapWrite("swap data directory", err)
	}
	// From here the new set is visible; link new top-level names and drop the old ones.
	if err := w.syncTopLevel(tops); err != nil {
		return err
	}
	if old != "" && old != dir {
		_ = w.root.RemoveAll(old)
	}
	return nil
}

func (w *AtomicWriter) mkdirs(dir, rel string, mode fs.FileMode) error {
	if rel == "." {
		return nil
	}
	cur := dir
	for c := range strings.SplitSeq(rel, "/") {
		cur = path.Join(cur, c)
		err := w.root.Mkdir(cur, mode)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return wrapWrite("create directory", err)
		}
		if err := w.chown(cur); err != nil {
			return err
		}
	}
	return nil
}

func (w *AtomicWriter) writeFile(p string, f File) error {
	fh, err := w.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return wrapWrite("create file", err)
	}
	// No fsync: volumes are tmpfs, and after a crash the "..data" swap decides which complete
	// set is visible.
	_, werr := fh.Write(f.Data)
	if werr == nil && w.gid >= 0 {
		werr = fh.Chown(-1, w.gid)
	}
	if werr == nil {
		// Chmod after chown: chown may clear set-id bits, and the mode is applied last so the
		// file is never wider than 0600 while being written.
		werr = fh.Chmod(f.Mode)
	}
	cerr := fh.Close()
	if werr != nil {
		return wrapWrite("write file", werr)
	}
	if cerr != nil {
		return wrapWrite("close file", cerr)
	}
	return nil
}

func (w *AtomicWriter) chown(p string) error {
	if w.gid < 0 {
		return nil
	}
	if err := w.root.Lchown(p, -1, w.gid); err != nil {
		return wrapWrite("set group", err)
	}
	return nil
}

// syncTopLevel makes each name in tops a symlink to "..data/<name>" and removes the user
// symlinks of a previous payload that are gone.
func (w *AtomicWriter) syncTopLevel(tops map[string]bool) error {
	for name := range tops {
		want := path.Join(dataLink, name)
		if got, err := w.root.Readlink(name); err == nil && got == want {
			continue
		}
		tmp := dataLinkTmp + "_" + name
		_ = w.root.Remove(tmp)
		if err := w.root.Symlink(want, tmp); err != nil {
			return wrapWrite("link file", err)
		}
		if err := w.root.Rename(tmp, name); err != nil {
			_ = w.root.Remove(tmp)
			return wrapWrite("link file", err)
		}
	}
	entries, err := w.readRoot()
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, "..") || tops[n] || e.Type()&fs.ModeSymlink == 0 {
			continue
		}
		if target, err := w.root.Readlink(n); err == nil && strings.HasPrefix(target, dataLink+"/") {
			_ = w.root.Remove(n)
		}
	}
	return nil
}

// Clear removes every file the writer manages (revocation). Other entries (the API socket)
// stay.
func (w *AtomicWriter) Clear() error {
	entries, err := w.readRoot()
	if err != nil {
		return err
	}
	var errs []error
	// The user symlinks first, so no path resolves while the data goes.
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, "..") || e.Type()&fs.ModeSymlink == 0 {
			continue
		}
		if target, err := w.root.Readlink(n); err == nil && strings.HasPrefix(target, dataLink+"/") {
			errs = append(errs, w.root.Remove(n))
		}
	}
	_ = w.root.Remove(dataLink)
	for _, e := range entries {
		if n := e.Name(); strings.HasPrefix(n, "..") && n != dataLink && n != volumeMarker {
			errs = append(errs, w.root.RemoveAll(n))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clear volume: %w", err)
	}
	return nil
}

// wrapWrite maps "no space left" to ErrVolumeFull so the caller can say what to change.
func wrapWrite(op string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%s: %w", op, ErrVolumeFull)
	}
	return fmt.Errorf("%s: %w", op, err)
}
