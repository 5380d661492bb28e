package framework

import "errors"

// ErrToolMissing reports that a server binary is not in the tools cache; run
// `make tools` (or e2e/tools/build.sh) to build it.
var ErrToolMissing = errors.New("tool binary missing: run `make tools`")

// ErrExited reports that a server process exited before it became ready.
var ErrExited = errors.New("process exited before it was ready")

// ErrNotReady reports that a server did not become ready within its bounded wait.
var ErrNotReady = errors.New("process not ready in time")

// errAddrInUse marks a start attempt that lost a port race; the caller retries
// with new ports.
var errAddrInUse = errors.New("address already in use")
