//go:build !linux

package store

import "os"

// dropPageCache is a no-op where the page cache cannot be dropped per file.
func dropPageCache(string) {}

// unmapFile is a no-op where the process's mappings cannot be listed.
func unmapFile(*os.File) {}
