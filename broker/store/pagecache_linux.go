package store

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// dropPageCache asks the kernel to forget the file's clean cached pages. After a failed
// writeback Linux marks those pages clean although the disk does not hold them.
func dropPageCache(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// unmapFile removes this process's mappings of the file f refers to. bbolt maps the file
// before it reads it; when it panics on a damaged page it cannot unmap it, and a mapping keeps
// the open file, and so its flock, alive after the descriptor is closed: a later Open of the
// same path in this process would wait for the lock and fail as if another daemon held it.
// The mappings are found in /proc/self/maps by device and inode; this process maps a store
// file only through bbolt, so nothing else is removed.
func unmapFile(f *os.File) {
	fi, err := f.Stat()
	if err != nil {
		return
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return
	}
	dev := fmt.Sprintf("%02x:%02x", unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)))
	ino := strconv.FormatUint(uint64(st.Ino), 10)
	for line := range strings.Lines(string(maps)) {
		// start-end perms offset dev inode [path]
		fields := strings.Fields(line)
		if len(fields) < 5 || fields[3] != dev || fields[4] != ino {
			continue
		}
		start, end, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		lo, err1 := strconv.ParseUint(start, 16, 64)
		hi, err2 := strconv.ParseUint(end, 16, 64)
		if err1 != nil || err2 != nil || hi <= lo {
			continue
		}
		_, _, _ = unix.Syscall(unix.SYS_MUNMAP, uintptr(lo), uintptr(hi-lo), 0)
	}
}
