//go:build !linux

package store

// dropPageCache is a no-op where the page cache cannot be dropped per file.
func dropPageCache(string) {}
