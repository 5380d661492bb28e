package csi

import "errors"

// Errors the driver returns. The gRPC layer maps them in one place (toStatus).
var (
	// ErrInvalidRequest is a malformed or disallowed request: bad volume attributes, a target
	// path outside the pod's volume directory, a token for another pod.
	ErrInvalidRequest = errors.New("invalid request")
	// ErrAlreadyExists is a publish of a known volume with different arguments.
	ErrAlreadyExists = errors.New("volume already published with different arguments")
	// ErrVolumeFull is a volume whose files do not fit its tmpfs.
	ErrVolumeFull = errors.New("volume is full")
	// ErrNotMounted is a target that holds no volume of the mounter.
	ErrNotMounted = errors.New("no volume is mounted at the target")
)
