package rotate

import (
	"log/slog"
	"time"

	"github.com/keywarden/keywarden/broker/source"
)

// Drop discards the cached value of ref (an administrator's revocation), without asking the
// source. Subscribers are signalled so that they re-read: a revoked reader is refused by its
// grants, any other fetches the value again. It reports whether a value was cached.
func (e *Engine) Drop(ref source.Ref) bool {
	had := e.dropEntry(ref)
	if e.persist != nil {
		// Written before Drop returns: a revoked value must not come back after a restart.
		e.persist.flush()
	}
	return had
}

func (e *Engine) dropEntry(ref source.Ref) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	en := e.entries[ref]
	if en == nil {
		return false
	}
	had := en.secret != nil
	// Fetches already under way started before the drop: their answers must not refill it.
	e.gen++
	en.gen = e.gen
	en.secret = nil
	en.ranOut = time.Time{}
	e.unsaveLocked(ref, en)
	en.lastErr = "dropped by an administrator"
	e.signalLocked(en)
	if len(en.subs) == 0 {
		delete(e.entries, ref)
	}
	if had {
		e.log.Info("cached secret dropped", slog.String("ref", ref.String()))
	}
	return had
}
