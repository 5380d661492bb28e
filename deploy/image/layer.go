package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Users and groups of the image. The daemon runs as nonroot; root is there so that the
// privileged CSI container (which the chart runs as 0) resolves its user too. Neither has a
// shell: there is none in the image.
const (
	etcPasswd = "root:x:0:0:root:/root:/sbin/nologin\n" +
		"nonroot:x:65532:65532:nonroot:/var/lib/keywarden:/sbin/nologin\n"
	etcGroup = "root:x:0:\n" +
		"nonroot:x:65532:\n"
)

// entry is one file or directory of the layer. Paths have no leading slash, as in
// docker's and every other image builder's layers.
type entry struct {
	name     string
	dir      bool
	mode     int64
	uid, gid int
	data     []byte
}

// layerEntries is the whole file system of the image, parents before children once sorted.
func layerEntries(bin, sbom []byte) []entry {
	root := func(name string) entry { return entry{name: name, dir: true, mode: 0o755} }
	return []entry{
		root("etc"),
		{name: "etc/group", mode: 0o644, data: []byte(etcGroup)},
		{name: "etc/passwd", mode: 0o644, data: []byte(etcPasswd)},
		root("run"),
		// The daemon's socket directory and state directory; on Kubernetes the chart mounts
		// host paths over them, run alone (docker run) they are usable by nonroot.
		{name: "run/keywarden", dir: true, mode: 0o755, uid: nonrootID, gid: nonrootID},
		{name: "tmp", dir: true, mode: 0o1777},
		root("usr"),
		root("usr/bin"),
		{name: tarName(binaryPath), mode: 0o755, data: bin},
		root("usr/share"),
		root("usr/share/doc"),
		root("usr/share/doc/keywarden"),
		{name: tarName(sbomPath), mode: 0o644, data: sbom},
		root("var"),
		root("var/lib"),
		{name: "var/lib/keywarden", dir: true, mode: 0o755, uid: nonrootID, gid: nonrootID},
	}
}

// makeLayer writes the layer as an uncompressed tar with sorted entries and every owner,
// mode and mtime fixed, so the same inputs always give the same bytes.
func makeLayer(mtime time.Time, bin, sbom []byte) ([]byte, error) {
	entries := layerEntries(bin, sbom)
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{
			Name:    e.name,
			Mode:    e.mode,
			Uid:     e.uid,
			Gid:     e.gid,
			Uname:   userName(e.uid),
			Gname:   userName(e.gid),
			ModTime: mtime,
			// USTAR has no atime/ctime, and all our names and sizes fit it: the header
			// bytes then depend on nothing but the fields above.
			Format: tar.FormatUSTAR,
		}
		if e.dir {
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		} else {
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", e.name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}

func userName(id int) string {
	if id == nonrootID {
		return "nonroot"
	}
	return "root"
}

// gzipDeterministic compresses with the standard library at the given level and a zeroed
// header (no name, no mtime, OS unknown), so the output is a function of the input, the level
// and the Go version alone.
func gzipDeterministic(b []byte, level int) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, level)
	if err != nil {
		return nil, err
	}
	zw.Header = gzip.Header{OS: 255}
	if _, err := zw.Write(b); err != nil {
		return nil, fmt.Errorf("gzip layer: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("gzip layer: %w", err)
	}
	return buf.Bytes(), nil
}

// tarName is the layer path of an absolute image path.
func tarName(p string) string { return strings.TrimPrefix(p, "/") }
