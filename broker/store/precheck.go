package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
)

// bbolt's on-disk meta page, as laid out by go.etcd.io/bbolt/internal/common
// (native byte order): a 16-byte page header, then magic, version, pageSize,
// flags (uint32 each), root pgid, root sequence, freelist pgid, high-water
// pgid, txid, checksum (uint64 each). The checksum is FNV-64a of the 56 bytes
// before it.
const (
	boltPageHeaderSize = 16
	boltMetaSumLen     = 56
	boltMetaSize       = 64
	boltMagic          = 0xED0CDAED
	boltVersion        = 2
	boltNoFreelist     = ^uint64(0)
)

// precheckFile rejects a file whose checksum-valid meta pages point past the
// end of the file (a truncated store). bbolt maps the file and reads those
// pages during Open; past EOF that is a SIGBUS, and once bbolt's Open has
// faulted its mapping and file lock cannot be released. Everything else is
// left to bbolt, which reports bad meta pages as errors.
func precheckFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return nil // let bbolt report it with its own open
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return nil
	}
	size := uint64(fi.Size())

	meta0 := readMeta(f, 0)
	offsets := []int64{4096}
	if meta0 != nil {
		offsets = []int64{int64(binary.NativeEndian.Uint32(meta0[8:]))}
		if err := checkMetaBounds(meta0, size); err != nil {
			return err
		}
	}
	for _, off := range offsets {
		if m := readMeta(f, off); m != nil {
			if err := checkMetaBounds(m, size); err != nil {
				return err
			}
		}
	}
	return nil
}

// readMeta returns the meta struct at the page starting at off, or nil if
// it is absent or fails bbolt's own validation (magic, version, checksum).
func readMeta(r io.ReaderAt, off int64) []byte {
	if off < 0 {
		return nil
	}
	buf := make([]byte, boltMetaSize)
	if _, err := r.ReadAt(buf, off+boltPageHeaderSize); err != nil {
		return nil
	}
	ne := binary.NativeEndian
	if ne.Uint32(buf[0:]) != boltMagic || ne.Uint32(buf[4:]) != boltVersion {
		return nil
	}
	h := fnv.New64a()
	_, _ = h.Write(buf[:boltMetaSumLen])
	if h.Sum64() != ne.Uint64(buf[boltMetaSumLen:]) {
		return nil
	}
	return buf
}

func checkMetaBounds(m []byte, size uint64) error {
	ne := binary.NativeEndian
	pageSize := uint64(ne.Uint32(m[8:]))
	root, freelist, pgid := ne.Uint64(m[16:]), ne.Uint64(m[32:]), ne.Uint64(m[40:])
	switch {
	case pageSize < 512 || pageSize > 1<<20:
		return fmt.Errorf("meta page size %d out of range", pageSize)
	case pgid > size/pageSize:
		return fmt.Errorf("file is truncated: %d bytes, meta page expects %d pages of %d bytes", size, pgid, pageSize)
	case root >= pgid || (freelist >= pgid && freelist != boltNoFreelist):
		return fmt.Errorf("meta page points past the last page")
	}
	return nil
}
