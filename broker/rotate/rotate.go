package rotate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/store"
)

// Config configures an Engine.
type Config struct {
	// Sources maps a source name (source.Ref.Source) to its implementation. Required, non-empty.
	Sources map[string]source.Source
	// Logger receives refresh events (references and versions, never values). Required.
	Logger *slog.Logger
	// Clock drives renewals, backoff and expiry. Defaults to the real clock.
	Clock clock.WithTicker
	// FetchTimeout bounds one backend call. Default 30s.
	FetchTimeout time.Duration
	// PollInterval is how often a cached static secret from a source that cannot notify
	// changes is fetched again. Default 30s.
	PollInterval time.Duration
	// IdleTTL is how long an entry without subscribers stays cached after its last use.
	// Default 10m.
	IdleTTL time.Duration
	// MinBackoff and MaxBackoff bound the jittered exponential backoff after failed refreshes.
	// Defaults 1s and 1m.
	MinBackoff, MaxBackoff time.Duration
	// TickInterval is how often the scheduler looks for due refreshes. Default 250ms.
	TickInterval time.Duration
	// Store, when set, keeps the last value of every cached secret (bucket ValuesBucket),
	// sealed like every record, so that after a restart with the source down they are served
	// until they expire. New loads the previous run's values. Values of sources that notify
	// changes (the embedded store) are not copied. Nil keeps values in memory only.
	Store *store.DB
	// MaxStale bounds how long a value without an expiry (a KV secret) is served after its
	// source last confirmed it, while refreshes fail: in memory and across restarts alike.
	// Values with an expiry are served until it, never after. Default DefaultMaxStale.
	MaxStale time.Duration
	// MaxPersisted and MaxPersistedBytes bound the values kept in Store: how many, and the
	// total size of their data. A value beyond them stays in memory only. Defaults
	// DefaultMaxPersisted and DefaultMaxPersistedBytes.
	MaxPersisted, MaxPersistedBytes int
	// UnclaimedTTL is how long a value restored from Store waits for its first consumer (a
	// Get or a Subscribe) before it is dropped, unrefreshed. It must be shorter than the
	// sources' own wait for restored state to be claimed (the Vault source revokes restored
	// leases nobody fetched after its OrphanGrace), so that the engine never serves a
	// credential its source revoked as an orphan. Default DefaultUnclaimedTTL.
	UnclaimedTTL time.Duration
}

// Engine caches secrets and keeps them fresh. Create it with New and run it with Run.
type Engine struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	entries map[source.Ref]*entry
	flights map[source.Ref]*flight
	// gen numbers fetches in the order they start. A result older than the one an entry
	// already holds is dropped, so a slow fetch can never put an older version back.
	gen uint64
	// refreshFailures counts transient refresh failures (Freshness).
	refreshFailures atomic.Uint64

	// persist writes the last values to Config.Store (nil without one); savedCount and
	// savedBytes (under mu) are what the store holds, against the bounds.
	persist    *persister
	savedCount int
	savedBytes int

	// Every backend call the engine makes is owned by it: life is the parent of their
	// contexts and fetches counts them, so that Close (and Run, when its ctx ends) cancels
	// them and waits. Without an owner a fetch could outlive shutdown and write the lease
	// store after it was closed. closed (under mu) stops new fetches once Close began; it is
	// set before fetches.Wait, so no fetches.Add can race with the Wait.
	life    context.Context
	stop    context.CancelFunc
	fetches sync.WaitGroup
	closed  bool
}

type entry struct {
	gen         uint64 // of the fetch whose answer the entry holds
	secret      *source.Secret
	fetchedAt   time.Time
	lastUsed    time.Time
	nextRefresh time.Time
	failures    int
	lastErr     string
	stale       bool // serving a value whose last refresh failed
	refreshing  bool
	subs        map[*Subscription]struct{}
	// warm is set for a value restored from the store until the source answers again;
	// unclaimed until its first consumer, which schedules its first refresh (through which
	// the source learns that its own restored state, a lease, is in use).
	warm, unclaimed bool
	// ranOut is set when the value was dropped at its expiry (or staleness bound) and no new
	// one came since: callers are told why they get nothing.
	ranOut time.Time
	// saved is what the store holds for the entry (nil: nothing); overBound is set while
	// the value is kept in memory only because of the bounds.
	saved     *saved
	overBound bool
}

type flight struct {
	// abandoned is set when every waiter left and the call was cancelled: a new caller
	// must start a fresh flight rather than join one that will answer "canceled".
	abandoned bool
	done      chan struct{}
	secret    *source.Secret
	err       error
	waiters   int
	cancel    context.CancelFunc
}

// Subscription tells its owner that a Ref's value changed or was purged. C is coalescing: one
// pending signal stands for any number of changes; the owner calls Get to read the new value.
type Subscription struct {
	ref source.Ref
	c   chan struct{}
	e   *Engine
}

// C receives a value after every change of the subscribed secret.
func (s *Subscription) C() <-chan struct{} { return s.c }

// Ref is the subscribed secret.
func (s *Subscription) Ref() source.Ref { return s.ref }

// Close ends the subscription. It is idempotent.
func (s *Subscription) Close() {
	s.e.mu.Lock()
	defer s.e.mu.Unlock()
	if en := s.e.entries[s.ref]; en != nil {
		delete(en.subs, s)
	}
}

// EntryStatus describes one cached secret without its value.
type EntryStatus struct {
	Ref         source.Ref
	Version     string
	FetchedAt   time.Time
	ExpiresAt   time.Time
	Subscribers int
	LastError   string
	Stale       bool
	// NextRefresh is when the value is refreshed next (zero while nothing is scheduled);
	// Failures counts the refreshes that failed since the last success.
	NextRefresh time.Time
	Failures    int
}

// New returns an Engine.
func New(cfg Config) (*Engine, error) {
	if len(cfg.Sources) == 0 {
		return nil, errors.New("rotate: at least one source is required")
	}
	if cfg.Logger == nil {
		return nil, errors.New("rotate: logger is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.FetchTimeout, 30*time.Second)
	def(&cfg.PollInterval, 30*time.Second)
	def(&cfg.IdleTTL, 10*time.Minute)
	def(&cfg.MinBackoff, time.Second)
	def(&cfg.MaxBackoff, time.Minute)
	def(&cfg.TickInterval, 250*time.Millisecond)
	def(&cfg.MaxStale, DefaultMaxStale)
	def(&cfg.UnclaimedTTL, DefaultUnclaimedTTL)
	if cfg.MaxPersisted <= 0 {
		cfg.MaxPersisted = DefaultMaxPersisted
	}
	if cfg.MaxPersistedBytes <= 0 {
		cfg.MaxPersistedBytes = DefaultMaxPersistedBytes
	}
	life, stop := context.WithCancel(context.Background())
	e := &Engine{
		cfg:     cfg,
		log:     cfg.Logger,
		entries: map[source.Ref]*entry{},
		flights: map[source.Ref]*flight{},
		life:    life,
		stop:    stop,
	}
	if cfg.Store != nil {
		e.persist = newPersister(cfg.Store, cfg.Logger)
		e.restore()
	}
	return e, nil
}

// Close cancels every backend call under way and waits for them to return; later Get and
// Refresh calls fail with ErrClosed. It is idempotent. Run calls it when its ctx is done.
func (e *Engine) Close() {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	e.stop()
	e.fetches.Wait()
	if e.persist != nil {
		e.persist.flush() // what the last fetches stored, before the daemon closes the store
	}
}

func (e *Engine) now() time.Time { return e.cfg.Clock.Now() }

// Get returns the cached value of ref, fetching it first when it is missing or expired.
// Concurrent callers for the same ref share one fetch. The returned secret is a copy.
func (e *Engine) Get(ctx context.Context, ref source.Ref) (*source.Secret, error) {
	if _, ok := e.cfg.Sources[ref.Source]; !ok {
		return nil, fmt.Errorf("%w: %q", source.ErrUnknownSource, ref.Source)
	}
	e.mu.Lock()
	now := e.now()
	en := e.entries[ref]
	if en != nil {
		e.claimLocked(en, now)
	}
	if en != nil && e.servableLocked(ref, en, now) {
		en.lastUsed = now
		s := en.secret.Clone()
		e.mu.Unlock()
		return s, nil
	}
	var ranOut time.Time
	if en != nil {
		en.lastUsed = now
		ranOut = en.ranOut
		if en.secret != nil {
			ranOut = e.servedUntil(ref, en)
		}
	}
	if e.closed {
		e.mu.Unlock()
		return nil, ErrClosed
	}
	f := e.flights[ref]
	if f == nil || f.abandoned {
		f = e.startFlightLocked(ref)
	}
	f.waiters++
	e.mu.Unlock()

	select {
	case <-f.done:
		if f.err != nil {
			return nil, ranOutError(ranOut, f.err)
		}
		return f.secret.Clone(), nil
	case <-ctx.Done():
		e.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
			f.abandoned = true
			f.cancel()
		}
		e.mu.Unlock()
		return nil, ranOutError(ranOut, ctx.Err())
	}
}

// ranOutError says that the cached value ran out at ranOut (when set) and err is why no new
// one came: a transient error or a caller's deadline, not a cancellation or an authoritative
// answer, which are returned as they are.
func ranOutError(ranOut time.Time, err error) error {
	if ranOut.IsZero() || errors.Is(err, context.Canceled) || source.IsAuthoritative(err) {
		return err
	}
	return fmt.Errorf("%w (at %s): %w", ErrExpired, ranOut.UTC().Format(time.RFC3339), err)
}

// startFlightLocked starts the one backend call for ref. Its context is detached from the
// first caller's: it is cancelled when every waiter has gone, by the fetch timeout, or by
// Close. The engine must not be closed.
func (e *Engine) startFlightLocked(ref source.Ref) *flight {
	ctx, cancel := context.WithTimeout(e.life, e.cfg.FetchTimeout)
	f := &flight{done: make(chan struct{}), cancel: cancel}
	e.flights[ref] = f
	e.gen++
	gen := e.gen
	e.fetches.Add(1)
	go func() {
		defer e.fetches.Done()
		defer cancel()
		s, err := e.fetch(ctx, e.cfg.Sources[ref.Source], ref)
		e.mu.Lock()
		if e.flights[ref] == f { // an abandoned flight may have been replaced already
			delete(e.flights, ref)
		}
		if err == nil {
			e.storeLocked(ref, s, gen)
		} else if source.IsAuthoritative(err) {
			// Authoritative answers purge whatever was cached, so a deleted secret is
			// not served from memory.
			e.purgeLocked(ref, err, gen)
		}
		f.secret, f.err = s, err
		e.mu.Unlock()
		close(f.done)
	}()
	return f
}

// fetch asks src for ref. A value already past its expiry when it arrives (a 0 s lease, or
// one that ran out while the answer was on its way) is an Unavailable error: it is never
// stored, handed to a waiter or written to a volume.
func (e *Engine) fetch(ctx context.Context, src source.Source, ref source.Ref) (*source.Secret, error) {
	s, err := src.Fetch(ctx, ref.Path)
	if err == nil && expired(s, e.now()) {
		return nil, fmt.Errorf("%w: the source answered with a value that expired at %s",
			source.ErrUnavailable, s.ExpiresAt.UTC().Format(time.RFC3339Nano))
	}
	return s, err
}

func expired(s *source.Secret, now time.Time) bool {
	return !s.ExpiresAt.IsZero() && !now.Before(s.ExpiresAt)
}

// storeLocked records a fresh value and signals subscribers when its version changed.
func (e *Engine) storeLocked(ref source.Ref, s *source.Secret, gen uint64) {
	now := e.now()
	en := e.entries[ref]
	if en == nil {
		en = &entry{subs: map[*Subscription]struct{}{}}
		e.entries[ref] = en
	}
	if gen < en.gen {
		return // a newer fetch already answered
	}
	en.gen = gen
	changed := en.secret == nil || en.secret.Version != s.Version
	en.secret = s.Clone()
	en.fetchedAt, en.lastUsed = now, now
	en.failures, en.lastErr, en.stale, en.warm, en.ranOut = 0, "", false, false, time.Time{}
	en.nextRefresh = e.nextRefresh(ref, s, now)
	e.saveLocked(ref, en, now)
	if changed {
		e.signalLocked(en)
	}
}

func (e *Engine) nextRefresh(ref source.Ref, s *source.Secret, now time.Time) time.Time {
	if !s.RenewAfter.IsZero() {
		return s.RenewAfter
	}
	if _, notifies := e.cfg.Sources[ref.Source].(source.Notifier); notifies {
		return time.Time{} // refreshed on change notifications only
	}
	// Jitter spreads polls of many secrets over the interval.
	return now.Add(jitter(e.cfg.PollInterval))
}

func jitter(d time.Duration) time.Duration {
	return d - d/10 + time.Duration(rand.Int64N(int64(d/5)+1))
}

// purgeLocked drops a cached value after an authoritative answer and signals subscribers so
// that they re-read (and get the error).
func (e *Engine) purgeLocked(ref source.Ref, cause error, gen uint64) {
	en := e.entries[ref]
	if en == nil || gen < en.gen {
		return
	}
	en.gen = gen
	hadValue := en.secret != nil
	en.secret = nil
	en.ranOut = time.Time{}
	e.unsaveLocked(ref, en)
	en.lastErr = source.Reason(cause)
	if hadValue {
		e.log.Warn("cached secret purged", slog.String("ref", ref.String()), slog.String("reason", en.lastErr))
	}
	e.signalLocked(en)
	if len(en.subs) == 0 {
		delete(e.entries, ref)
	}
}

func (e *Engine) signalLocked(en *entry) {
	for s := range en.subs {
		select {
		case s.c <- struct{}{}:
		default: // a signal is already pending
		}
	}
}

// Subscribe returns a Subscription for ref. Call Close when done.
func (e *Engine) Subscribe(ref source.Ref) *Subscription {
	e.mu.Lock()
	defer e.mu.Unlock()
	en := e.entries[ref]
	if en == nil {
		en = &entry{subs: map[*Subscription]struct{}{}, lastUsed: e.now()}
		e.entries[ref] = en
	}
	e.claimLocked(en, e.now())
	s := &Subscription{ref: ref, c: make(chan struct{}, 1), e: e}
	en.subs[s] = struct{}{}
	return s
}

// Refresh fetches ref again now, whatever its schedule, and signals subscribers on change.
func (e *Engine) Refresh(ctx context.Context, ref source.Ref) error {
	src, ok := e.cfg.Sources[ref.Source]
	if !ok {
		return fmt.Errorf("%w: %q", source.ErrUnknownSource, ref.Source)
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.FetchTimeout)
	defer cancel()
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	e.fetches.Add(1)
	defer e.fetches.Done()
	e.gen++
	gen := e.gen
	e.mu.Unlock()
	// Close cancels this call too, whoever the caller is.
	defer context.AfterFunc(e.life, cancel)()
	s, err := e.fetch(ctx, src, ref)
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case err == nil:
		e.storeLocked(ref, s, gen)
	case source.IsAuthoritative(err):
		e.purgeLocked(ref, err, gen)
	default:
		// Transient: keep serving the cached value until it expires, retry with backoff.
		if !errors.Is(err, context.Canceled) {
			e.refreshFailures.Add(1)
		}
		if en := e.entries[ref]; en != nil {
			en.failures++
			en.lastErr = source.Reason(err)
			en.stale = en.secret != nil
			en.nextRefresh = e.now().Add(e.backoff(en.failures))
		}
	}
	return err
}

func (e *Engine) backoff(failures int) time.Duration {
	d := e.cfg.MinBackoff
	for i := 1; i < failures && d < e.cfg.MaxBackoff; i++ {
		d *= 2
	}
	return jitter(min(d, e.cfg.MaxBackoff))
}

// Run listens for source change notifications and refreshes due entries until ctx is done.
// It then closes the engine: it returns only after every backend call has returned.
func (e *Engine) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer e.Close()
	if e.persist != nil {
		wg.Go(func() { e.persistLoop(ctx) })
	}
	for name, src := range e.cfg.Sources {
		n, ok := src.(source.Notifier)
		if !ok {
			continue
		}
		changes := n.Changes(ctx)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for path := range changes {
				ref := source.Ref{Source: name, Path: path}
				if e.cached(ref) {
					_ = e.Refresh(source.Background(ctx), ref)
				}
			}
		}()
	}
	t := e.cfg.Clock.NewTicker(e.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			for _, ref := range e.due() {
				wg.Add(1)
				go func() {
					defer wg.Done()
					// Scheduled refreshes yield to fetches that a caller waits for.
					_ = e.Refresh(source.Background(ctx), ref)
					e.mu.Lock()
					if en := e.entries[ref]; en != nil {
						en.refreshing = false
					}
					e.mu.Unlock()
				}()
			}
		}
	}
}

// persistLoop writes queued values as they come, and retries failed writes every tick.
func (e *Engine) persistLoop(ctx context.Context) {
	t := e.cfg.Clock.NewTicker(e.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return // Close flushes what is left
		case <-e.persist.kick:
		case <-t.C():
		}
		e.persist.flush()
	}
}

func (e *Engine) cached(ref source.Ref) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.entries[ref]
	return ok
}

// due returns the entries whose refresh time has passed, and evicts idle and expired ones.
func (e *Engine) due() []source.Ref {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	var out []source.Ref
	for ref, en := range e.entries {
		ranOut := en.secret != nil && !e.servableLocked(ref, en, now)
		if len(en.subs) == 0 && (now.Sub(en.lastUsed) > e.cfg.IdleTTL || (en.unclaimed && now.Sub(en.lastUsed) > e.cfg.UnclaimedTTL)) {
			e.unsaveLocked(ref, en)
			delete(e.entries, ref)
			continue
		}
		if ranOut {
			// Never serve past expiry: drop the value (here and in the store), subscribers
			// re-read and fetch. The entry stays until it is idle, so that callers are told
			// the value ran out.
			en.ranOut = e.servedUntil(ref, en)
			en.lastErr = "expired"
			if en.secret.ExpiresAt.IsZero() {
				en.lastErr = "unconfirmed for longer than the staleness bound"
			}
			en.secret = nil
			e.unsaveLocked(ref, en)
			e.signalLocked(en)
		}
		if en.refreshing || en.nextRefresh.IsZero() || now.Before(en.nextRefresh) {
			continue
		}
		en.refreshing = true
		out = append(out, ref)
	}
	return out
}

// Status describes every cached entry, sorted by reference.
func (e *Engine) Status() []EntryStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]EntryStatus, 0, len(e.entries))
	for ref, en := range e.entries {
		st := EntryStatus{Ref: ref, FetchedAt: en.fetchedAt, Subscribers: len(en.subs), LastError: en.lastErr, Stale: en.stale,
			NextRefresh: en.nextRefresh, Failures: en.failures}
		if en.secret != nil {
			st.Version, st.ExpiresAt = en.secret.Version, en.secret.ExpiresAt
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ref.String() < out[j].Ref.String() })
	return out
}
