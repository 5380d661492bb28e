package rotate

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/store"
)

// ValuesBucket is the store bucket of the last values (Config.Store): one record per cached
// secret, keyed by a hash of its reference. Records hold secret values, so they exist only
// sealed by the store.
const ValuesBucket = "values"

// Defaults of the bounds on the values kept in Config.Store.
const (
	DefaultMaxStale          = 24 * time.Hour
	DefaultUnclaimedTTL      = 2 * time.Minute
	DefaultMaxPersisted      = 1024
	DefaultMaxPersistedBytes = 8 << 20
)

// Log attribute keys of this file.
const (
	attrRef    = "ref"
	attrKey    = "key"
	attrReason = "reason"
)

// valueRecord is one persisted value. Data is plain bytes here (source.Value redacts itself
// in JSON): the store seals the whole record before it reaches the disk.
type valueRecord struct {
	Source     string            `json:"source"`
	Path       string            `json:"path"`
	Version    string            `json:"version"`
	Data       map[string][]byte `json:"data"`
	LeaseID    string            `json:"leaseId,omitempty"`
	ExpiresAt  time.Time         `json:"expiresAt,omitzero"`
	RenewAfter time.Time         `json:"renewAfter,omitzero"`
	// ConfirmedAt is the last time the source answered with this value, as of the write. It
	// is rewritten at most every confirmEvery, so after a restart it is at most that much
	// older than the truth: the staleness bound is measured from an earlier time, never a
	// later one.
	ConfirmedAt time.Time `json:"confirmedAt"`
}

func (r *valueRecord) ref() source.Ref { return source.Ref{Source: r.Source, Path: r.Path} }

func (r *valueRecord) secret() *source.Secret {
	data := make(map[string]source.Value, len(r.Data))
	for k, v := range r.Data {
		data[k] = source.Value(v)
	}
	return &source.Secret{Data: data, Version: r.Version, ExpiresAt: r.ExpiresAt, RenewAfter: r.RenewAfter, LeaseID: r.LeaseID}
}

func recordOf(ref source.Ref, s *source.Secret, confirmed time.Time) *valueRecord {
	data := make(map[string][]byte, len(s.Data))
	for k, v := range s.Data {
		data[k] = []byte(v)
	}
	return &valueRecord{Source: ref.Source, Path: ref.Path, Version: s.Version, Data: data, LeaseID: s.LeaseID,
		ExpiresAt: s.ExpiresAt, RenewAfter: s.RenewAfter, ConfirmedAt: confirmed}
}

// size is what a record counts against MaxPersistedBytes: its values and key names.
func (r *valueRecord) size() int {
	n := len(r.Version) + len(r.Path)
	for k, v := range r.Data {
		n += len(k) + len(v)
	}
	return n
}

// valueKey is the record key of ref: a hash, so that the key's length does not depend on the
// reference (Vault references carry a certificate request or an owner).
func valueKey(ref source.Ref) string {
	h := sha256.New()
	h.Write([]byte(ref.Source))
	h.Write([]byte{0})
	h.Write([]byte(ref.Path))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// saved is what the store holds for an entry, as last written by this engine.
type saved struct {
	version     string
	expiresAt   time.Time
	renewAfter  time.Time
	confirmedAt time.Time
	size        int
}

// persister writes the engine's values to the store off the engine's lock: the engine queues
// the latest record (or a deletion) per key, and flush writes everything queued in one
// transaction (one fsync for a burst of rotations).
type persister struct {
	b   store.Bucket[valueRecord]
	log *slog.Logger

	mu      sync.Mutex
	pending map[string]*valueRecord // nil: delete
	kick    chan struct{}
	// puts counts the records queued for writing (tests).
	puts atomic.Uint64

	// flushMu lets one flush run at a time, so a batch never lands after a newer one.
	flushMu sync.Mutex
}

func newPersister(db *store.DB, log *slog.Logger) *persister {
	return &persister{b: store.NewBucket[valueRecord](db, ValuesBucket), log: log,
		pending: map[string]*valueRecord{}, kick: make(chan struct{}, 1)}
}

func (p *persister) queue(key string, r *valueRecord) {
	if r != nil {
		p.puts.Add(1)
	}
	p.mu.Lock()
	p.pending[key] = r
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// flush writes what is queued. On failure the batch is queued again, under anything queued
// since, and the next flush retries it: a deletion (a revocation, an eviction) is never lost
// while the daemon runs.
func (p *persister) flush() {
	p.flushMu.Lock()
	defer p.flushMu.Unlock()
	p.mu.Lock()
	batch := p.pending
	p.pending = map[string]*valueRecord{}
	p.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	err := p.b.Update(func(tx store.TxBucket[valueRecord]) error {
		for k, r := range batch {
			var err error
			if r == nil {
				err = tx.Delete(k)
			} else {
				err = tx.Put(k, *r)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		return
	}
	p.log.Error("cannot record the last values of cached secrets; retrying", slog.Int("records", len(batch)), slog.String("error", err.Error()))
	p.mu.Lock()
	maps.Copy(batch, p.pending)
	p.pending = batch
	p.mu.Unlock()
}

// notifies reports whether ref's source tells the engine about changes (the embedded store):
// its values are on the node already and always confirmed, so they are neither persisted
// nor held to the staleness bound.
func (e *Engine) notifies(ref source.Ref) bool {
	_, ok := e.cfg.Sources[ref.Source].(source.Notifier)
	return ok
}

// servableLocked reports whether en's value may be handed out at now: before its expiry, or,
// for a value without one, before MaxStale has passed since its source last confirmed it.
func (e *Engine) servableLocked(ref source.Ref, en *entry, now time.Time) bool {
	s := en.secret
	switch {
	case s == nil:
		return false
	case !s.ExpiresAt.IsZero():
		return now.Before(s.ExpiresAt)
	case e.notifies(ref):
		return true
	default:
		return now.Sub(en.fetchedAt) < e.cfg.MaxStale
	}
}

// servedUntil is when en's value stops being served (zero: while the source notifies).
func (e *Engine) servedUntil(ref source.Ref, en *entry) time.Time {
	switch {
	case !en.secret.ExpiresAt.IsZero():
		return en.secret.ExpiresAt
	case e.notifies(ref):
		return time.Time{}
	default:
		return en.fetchedAt.Add(e.cfg.MaxStale)
	}
}

// confirmEvery is how often the confirmation time of an unchanged value without an expiry is
// written again: often enough that a restart does not cut much off the staleness bound,
// rarely enough that polls do not turn into writes.
func (e *Engine) confirmEvery() time.Duration { return min(e.cfg.MaxStale/8, 10*time.Minute) }

// saveLocked queues en's value for the store when it changed (version, expiry or renewal
// time) or when its recorded confirmation is older than confirmEvery. A value beyond the
// bounds (MaxPersisted, MaxPersistedBytes) is kept in memory only, with one log line per
// reference.
func (e *Engine) saveLocked(ref source.Ref, en *entry, now time.Time) {
	if e.persist == nil || en.secret == nil || e.notifies(ref) {
		return
	}
	s := en.secret
	if sv := en.saved; sv != nil && sv.version == s.Version && sv.expiresAt.Equal(s.ExpiresAt) && sv.renewAfter.Equal(s.RenewAfter) &&
		(!s.ExpiresAt.IsZero() || en.fetchedAt.Sub(sv.confirmedAt) < e.confirmEvery()) {
		return
	}
	rec := recordOf(ref, s, en.fetchedAt)
	size := rec.size()
	old := 0
	if en.saved != nil {
		old = en.saved.size
	}
	if (en.saved == nil && e.savedCount >= e.cfg.MaxPersisted) || e.savedBytes-old+size > e.cfg.MaxPersistedBytes {
		if en.saved != nil {
			e.unsaveLocked(ref, en)
		}
		if !en.overBound {
			en.overBound = true
			e.log.Warn("cached secret kept in memory only: the bound on persisted values is reached",
				slog.String(attrRef, ref.String()), slog.Int("persisted", e.savedCount), slog.Int("persisted_bytes", e.savedBytes))
		}
		return
	}
	if en.saved == nil {
		e.savedCount++
	}
	e.savedBytes += size - old
	en.saved = &saved{version: s.Version, expiresAt: s.ExpiresAt, renewAfter: s.RenewAfter, confirmedAt: en.fetchedAt, size: size}
	en.overBound = false
	e.persist.queue(valueKey(ref), rec)
}

// claimLocked marks a restored entry as in use and schedules its first refresh.
func (e *Engine) claimLocked(en *entry, now time.Time) {
	if en.unclaimed {
		en.unclaimed = false
		en.nextRefresh = now
	}
}

// unsaveLocked queues the deletion of en's persisted value.
func (e *Engine) unsaveLocked(ref source.Ref, en *entry) {
	if e.persist == nil || en.saved == nil {
		return
	}
	e.savedCount--
	e.savedBytes -= en.saved.size
	en.saved = nil
	e.persist.queue(valueKey(ref), nil)
}

// restore loads the values of the previous run as warm entries: served (after the caller's
// grant check, like any cached value) until they expire, refreshed from their first use on,
// and dropped unrefreshed if nobody uses them within UnclaimedTTL. A
// record that does not open or decode, names a reference that is not its key or a source
// that is not configured, or whose value expired (or went unconfirmed for MaxStale) while
// the daemon was down is deleted, never served; a store that cannot be read at all is
// logged and the engine starts empty.
func (e *Engine) restore() {
	keys, err := e.persist.b.Keys()
	if err != nil {
		e.log.Error("cannot read the last values of cached secrets; starting without them", slog.String("error", err.Error()))
		return
	}
	now := e.now()
	var restored, expired, dropped int
	var drop []string
	for _, k := range keys {
		rec, err := e.persist.b.Get(k)
		var en *entry
		switch {
		case err != nil && !errors.Is(err, store.ErrCorrupt) && !errors.Is(err, store.ErrDecode):
			// Not the record's fault (the store failed): left for the next start.
			e.log.Error("cannot read a persisted value; not served", slog.String(attrKey, k), slog.String(attrReason, err.Error()))
			continue
		case err != nil:
			// The error names the record and the store's reason, never its content.
			e.log.Warn("dropping an unreadable persisted value", slog.String(attrKey, k), slog.String(attrReason, err.Error()))
		case rec.Source == "" || rec.Path == "" || valueKey(rec.ref()) != k:
			e.log.Warn("dropping a persisted value recorded under another reference's key", slog.String(attrKey, k))
		case e.cfg.Sources[rec.Source] == nil || e.notifies(rec.ref()):
			e.log.Info("dropping a persisted value of a source not served from the store", slog.String(attrRef, rec.ref().String()))
		default:
			en = &entry{secret: rec.secret(), fetchedAt: rec.ConfirmedAt, lastUsed: now, warm: true, unclaimed: true,
				subs: map[*Subscription]struct{}{}}
			if !e.servableLocked(rec.ref(), en, now) {
				expired++
				drop = append(drop, k)
				continue
			}
			size := rec.size()
			if e.savedCount >= e.cfg.MaxPersisted || e.savedBytes+size > e.cfg.MaxPersistedBytes {
				e.log.Warn("dropping a persisted value beyond the bound on persisted values", slog.String(attrRef, rec.ref().String()))
				en = nil
				break
			}
			e.savedCount++
			e.savedBytes += size
			en.saved = &saved{version: rec.Version, expiresAt: rec.ExpiresAt, renewAfter: rec.RenewAfter, confirmedAt: rec.ConfirmedAt, size: size}
			e.entries[rec.ref()] = en
			restored++
			continue
		}
		dropped++
		drop = append(drop, k)
	}
	if len(drop) > 0 {
		err := e.persist.b.Update(func(tx store.TxBucket[valueRecord]) error {
			for _, k := range drop {
				if err := tx.Delete(k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			e.log.Error("cannot delete persisted values that are not served", slog.Int("records", len(drop)), slog.String("error", err.Error()))
		}
	}
	if len(keys) > 0 {
		e.log.Info("last values of cached secrets restored", slog.Int("restored", restored),
			slog.Int("expired", expired), slog.Int("dropped", dropped))
	}
}
