package csi

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func openWriter(t testing.TB, dir string) *AtomicWriter {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewAtomicWriter(root, -1, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func newWriter(t testing.TB) (*AtomicWriter, string) {
	t.Helper()
	dir := t.TempDir()
	w := openWriter(t, dir)
	t.Cleanup(func() { _ = w.Close() })
	return w, dir
}

func TestAtomicWriter_Write_replacesAndPrunes(t *testing.T) {
	w, dir := newWriter(t)
	if err := w.Write(map[string]File{"db/user": {Data: []byte("u1"), Mode: 0o400}, "old": {Data: []byte("o"), Mode: 0o400}}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dir, "db/user")); got != "u1" {
		t.Fatalf("db/user = %q", got)
	}
	fi, err := os.Stat(filepath.Join(dir, "db/user"))
	if err != nil || fi.Mode().Perm() != 0o400 {
		t.Fatalf("mode = %v, %v; want 0400", fi.Mode(), err)
	}
	if err := w.Write(map[string]File{"db/user": {Data: []byte("u2"), Mode: 0o440}}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dir, "db/user")); got != "u2" {
		t.Fatalf("db/user = %q", got)
	}
	if _, err := os.Lstat(filepath.Join(dir, "old")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a file of the previous payload is still there: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	dataDirs := 0
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "..") && e.Name() != dataLink {
			dataDirs++
		}
	}
	if dataDirs != 1 {
		t.Errorf("%d data directories left, want 1", dataDirs)
	}
	if err := w.Clear(); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("Clear left %d entries", len(entries))
	}
}

func TestAtomicWriter_Write_rejectsBadPaths(t *testing.T) {
	w, dir := newWriter(t)
	for _, p := range []string{"../x", "/abs", "a/../../b", "..data", "a\x00b", strings.Repeat("n", 256), "", "a//b", "keywarden.sock"} {
		if err := w.Write(map[string]File{p: {Data: []byte("x"), Mode: 0o400}}); err == nil {
			t.Errorf("path %q accepted", p)
		}
	}
	if err := w.Write(map[string]File{"a": {Data: []byte("x")}, "a/b": {Data: []byte("y")}}); err == nil {
		t.Error("a file that is also a directory accepted")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("rejected writes left %d entries", len(entries))
	}
}

// A symlink planted in the volume (by a compromised container with write access, or an old
// run) never makes the writer write outside the volume.
func TestAtomicWriter_Write_plantedSymlinkDoesNotEscape(t *testing.T) {
	w, dir := newWriter(t)
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "db")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, dataLink)); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(map[string]File{"db/password": {Data: []byte("p"), Mode: 0o400}}); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("the writer wrote %d entries outside the volume", len(entries))
	}
	if got := readFile(t, filepath.Join(dir, "db/password")); got != "p" {
		t.Fatalf("db/password = %q", got)
	}
}

// A crash between creating the data directory and swapping "..data" leaves a stale directory;
// the next open removes it and keeps the complete old set.
func TestNewAtomicWriter_removesInterruptedWrite(t *testing.T) {
	w, dir := newWriter(t)
	if err := w.Write(map[string]File{"k": {Data: []byte("old"), Mode: 0o400}}); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "..2099_01_01_half", "k"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..2099_01_01_half", filepath.Join(dir, dataLinkTmp)); err != nil {
		t.Fatal(err)
	}
	w2 := openWriter(t, dir)
	defer w2.Close()
	for _, n := range []string{"..2099_01_01_half", dataLinkTmp} {
		if _, err := os.Lstat(filepath.Join(dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived: %v", n, err)
		}
	}
	if got := readFile(t, filepath.Join(dir, "k")); got != "old" {
		t.Errorf("k = %q, want the old set", got)
	}
}

// 0 torn reads over N rotations with K readers: every reader opens "..data" once per read and
// reads all files through it; the files must always be from one generation and complete.
func TestAtomicWriter_Write_noTornReads(t *testing.T) {
	const (
		rotations = 300
		readers   = 4
		files     = 5
	)
	w, dir := newWriter(t)
	payload := func(gen int) map[string]File {
		p := map[string]File{}
		for i := range files {
			// Sizes vary so a partial write would show.
			p[fmt.Sprintf("s%d/key", i)] = File{Data: []byte(strings.Repeat(fmt.Sprintf("%06d;", gen), 50+i*100)), Mode: 0o400}
		}
		return p
	}
	if err := w.Write(payload(0)); err != nil {
		t.Fatal(err)
	}
	var (
		stop             atomic.Bool
		reads, torn, gen atomic.Int64
		wg               sync.WaitGroup
	)
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				d, err := os.Open(filepath.Join(dir, dataLink))
				if err != nil {
					continue // between swaps on a slow machine: not a torn read
				}
				seen := ""
				ok := true
				for i := range files {
					b, err := readAt(d, fmt.Sprintf("s%d/key", i))
					if err != nil {
						ok = false // the old generation was removed under the reader: retry
						break
					}
					g := string(b[:7])
					if strings.Count(string(b), g) != 50+i*100 || len(b) != 7*(50+i*100) || (seen != "" && g != seen) {
						torn.Add(1)
					}
					seen = g
				}
				_ = d.Close()
				if ok {
					reads.Add(1)
				}
				// Single files through the top-level path are always complete.
				if b, err := os.ReadFile(filepath.Join(dir, "s1/key")); err == nil && len(b) != 7*150 {
					torn.Add(1)
				}
			}
		}()
	}
	for i := 1; i <= rotations; i++ {
		if err := w.Write(payload(i)); err != nil {
			t.Fatal(err)
		}
		gen.Store(int64(i))
	}
	eventually(t, "readers to read the final generation", func() bool { return reads.Load() > int64(readers) })
	stop.Store(true)
	wg.Wait()
	t.Logf("%d torn reads over %d rotations with %d readers (%d complete reads)", torn.Load(), rotations, readers, reads.Load())
	if torn.Load() != 0 {
		t.Fatalf("%d torn reads", torn.Load())
	}
}

// readAt reads rel relative to the open directory d (openat), not through its path.
func readAt(d *os.File, rel string) ([]byte, error) {
	fd, err := syscall.Openat(int(d.Fd()), rel, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	return io.ReadAll(f)
}
