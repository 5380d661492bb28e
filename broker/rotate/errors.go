package rotate

import (
	"fmt"

	"github.com/keywarden/keywarden/broker/source"
)

// ErrClosed is returned by Get and Refresh once the engine is closed (Run returned or Close was
// called). It wraps source.ErrUnavailable: callers treat it as a transient outage.
var ErrClosed = fmt.Errorf("%w: the secret cache is shut down", source.ErrUnavailable)

// ErrExpired is returned by Get when the cached value ran out — its expiry passed, or a value
// without one went unconfirmed for longer than Config.MaxStale — and the source did not give
// a new one (it is unreachable, or the caller's deadline came first). It wraps
// source.ErrUnavailable: the secret may come back when the source does.
var ErrExpired = fmt.Errorf("%w: the cached value expired and no new one could be fetched", source.ErrUnavailable)
