//go:build unix

package identity

import "syscall"

// syscallNoFollow refuses a symlink at the key path: the key must be the
// file whose mode we check.
const syscallNoFollow = syscall.O_NOFOLLOW
