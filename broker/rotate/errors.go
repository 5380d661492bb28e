package rotate

import (
	"fmt"

	"github.com/keywarden/keywarden/broker/source"
)

// ErrClosed is returned by Get and Refresh once the engine is closed (Run returned or Close was
// called). It wraps source.ErrUnavailable: callers treat it as a transient outage.
var ErrClosed = fmt.Errorf("%w: the secret cache is shut down", source.ErrUnavailable)
