//go:build !unix

package identity

const syscallNoFollow = 0
