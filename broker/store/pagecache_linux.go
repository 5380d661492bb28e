package store

import (
	"os"

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
