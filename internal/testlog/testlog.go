// Package testlog is the log sink of the tests: a buffer that slog handlers on many goroutines
// write to while the test reads it, e.g. to prove that no token or secret value was logged.
package testlog

import (
	"bytes"
	"sync"
)

// Buffer is a goroutine-safe io.Writer whose contents can be read at any time.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
