package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"

	"github.com/keywarden/keywarden/broker/store"
)

// Bucket is the store bucket the Log owns: one record per entry ("e" + 20-digit seq) and the
// head record.
const Bucket = "audit"

const headKey = "head"

// newRecords is the audit bucket as raw JSON records: the head and the entries are two record
// types under keys with no common prefix, and verification must see (and report) records that
// do not decode, so this package decodes them itself.
func newRecords(db *store.DB) store.Bucket[json.RawMessage] {
	return store.NewBucket[json.RawMessage](db, Bucket)
}

// Defaults of Config.
const (
	DefaultFlushInterval = 100 * time.Millisecond
	DefaultMaxBatch      = 512
	DefaultMaxPending    = 16384
	DefaultMaxEntries    = 100000
)

// Config configures a Log.
type Config struct {
	// DB holds the entries (bucket Bucket), sealed like every record. Required.
	DB *store.DB
	// Logger receives operational events (flush failures, dropped events). Required.
	Logger *slog.Logger
	// Clock stamps events that carry no time and drives the flush ticker. Defaults to the
	// real clock.
	Clock clock.WithTicker
	// FlushInterval is the longest an event waits before it is written. Default 100ms.
	FlushInterval time.Duration
	// MaxBatch flushes at once when this many events are waiting. Default 512.
	MaxBatch int
	// MaxPending bounds the events waiting to be written (a store that keeps failing must not
	// grow memory without bound). Beyond it events are dropped, counted, and the count is
	// itself audited once the store accepts writes again. Default 16384.
	MaxPending int
	// MaxEntries bounds the log. When a batch takes it past the bound, the oldest entries are
	// dropped down to 90% of it and a checkpoint entry is appended. Default 100000.
	MaxEntries int
}

// Log is the append-only, hash-chained audit log. It implements Recorder: Record only queues
// the event; Run writes queued events in batches (one store transaction per batch). Create it
// with Open, run Run, and Close it after Run has returned.
type Log struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex // guards pending, dropped, closed
	pending []Event
	dropped uint64
	closed  bool
	kick    chan struct{}

	flushMu sync.Mutex // serialises writes; guards head and first
	head    Head
	first   uint64 // seq of the oldest stored entry; 0 when empty

	subsMu sync.Mutex
	subs   map[*Subscription]struct{}

	written  atomic.Uint64
	flushes  atomic.Uint64
	failures atomic.Uint64
}

var _ Recorder = (*Log)(nil)

// Open loads the head of the log in cfg.DB. A stored log that does not parse is not an error
// here (Verify reports it); new entries continue after the stored head.
func Open(cfg Config) (*Log, error) {
	switch {
	case cfg.DB == nil:
		return nil, fmt.Errorf("%w: db is required", ErrInvalidConfig)
	case cfg.Logger == nil:
		return nil, fmt.Errorf("%w: logger is required", ErrInvalidConfig)
	case cfg.FlushInterval < 0, cfg.MaxBatch < 0, cfg.MaxPending < 0, cfg.MaxEntries < 0:
		return nil, fmt.Errorf("%w: negative limit", ErrInvalidConfig)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.MaxPending == 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	if cfg.MaxEntries < 10 {
		return nil, fmt.Errorf("%w: maxEntries must be at least 10", ErrInvalidConfig)
	}
	l := &Log{cfg: cfg, log: cfg.Logger, kick: make(chan struct{}, 1), subs: map[*Subscription]struct{}{}}
	recs, err := newRecords(cfg.DB).List()
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	for _, r := range recs {
		if r.Key == headKey {
			if err := json.Unmarshal(r.Value, &l.head); err != nil {
				return nil, fmt.Errorf("open audit log: head record: %w", ErrTampered)
			}
			continue
		}
		if seq, ok := parseEntryKey(r.Key); ok && l.first == 0 {
			l.first = seq
		}
	}
	if l.head.Hash == "" {
		l.head.Hash = ZeroHash
	}
	return l, nil
}

// Record implements Recorder. It never blocks on the store.
func (l *Log) Record(_ context.Context, ev Event) {
	if ev.Time.IsZero() {
		ev.Time = l.cfg.Clock.Now()
	}
	l.mu.Lock()
	switch {
	case l.closed:
		l.mu.Unlock()
		// Late events (a request finishing during shutdown) still leave a trace.
		NewSlogRecorder(l.log).Record(context.Background(), ev)
		return
	case len(l.pending) >= l.cfg.MaxPending:
		l.dropped++
		l.mu.Unlock()
		return
	}
	l.pending = append(l.pending, ev)
	n := len(l.pending)
	l.mu.Unlock()
	if n >= l.cfg.MaxBatch {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
}

// Run writes queued events every FlushInterval (or sooner when a batch fills) until ctx is
// done, then writes what is left and returns.
func (l *Log) Run(ctx context.Context) error {
	t := l.cfg.Clock.NewTicker(l.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return l.Flush()
		case <-t.C():
		case <-l.kick:
		}
		if err := l.Flush(); err != nil {
			l.failures.Add(1)
			l.log.Error("audit flush failed; events stay queued", slog.Any("error", err))
		}
	}
}

// Close writes queued events and makes later Records go to the operational log only. It is
// idempotent.
func (l *Log) Close() error {
	l.mu.Lock()
	already := l.closed
	l.closed = true
	l.mu.Unlock()
	if already {
		return nil
	}
	err := l.Flush()
	l.subsMu.Lock()
	for s := range l.subs {
		s.end(nil)
	}
	l.subsMu.Unlock()
	return err
}

// Flush writes every queued event now, in one transaction per MaxBatch events.
func (l *Log) Flush() error {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	for {
		l.mu.Lock()
		n := min(len(l.pending), l.cfg.MaxBatch)
		batch := l.pending[:n:n]
		dropped := l.dropped
		l.mu.Unlock()
		if n == 0 && dropped == 0 {
			return nil
		}
		if dropped > 0 {
			batch = append(batch, Event{Time: l.cfg.Clock.Now(), Kind: KindAudit, Outcome: OutcomeError,
				Reason: fmt.Sprintf("%d audit events dropped: the queue was full", dropped)})
		}
		entries, err := l.append(batch)
		if err != nil {
			return err
		}
		l.mu.Lock()
		l.pending = l.pending[n:]
		l.dropped -= dropped
		if len(l.pending) == 0 {
			l.pending = nil // let the backing array go
		}
		l.mu.Unlock()
		if dropped > 0 {
			l.log.Error("audit events were dropped because the queue was full", slog.Uint64("dropped", dropped))
		}
		l.written.Add(uint64(len(entries)))
		l.flushes.Add(1)
		l.publish(entries)
	}
}

// append writes events as entries, and a checkpoint when retention cuts, in one transaction.
// The in-memory head moves only after the commit.
func (l *Log) append(events []Event) ([]Entry, error) {
	head, first := l.head, l.first
	entries := make([]Entry, 0, len(events)+1)
	for i := range events {
		ev := events[i]
		e := Entry{Seq: head.Seq + 1, Time: ev.Time, Event: &ev, Prev: head.Hash}
		e.Event.Time = time.Time{}
		e.seal()
		entries = append(entries, e)
		head = Head{Seq: e.Seq, Hash: e.Hash}
	}
	if first == 0 && len(entries) > 0 {
		first = entries[0].Seq
	}
	var dropFrom, dropThrough uint64
	if count := head.Seq - first + 1; first != 0 && count > uint64(l.cfg.MaxEntries) {
		keep := uint64(l.cfg.MaxEntries) * 9 / 10
		dropFrom, dropThrough = first, head.Seq-keep
	}
	err := newRecords(l.cfg.DB).Update(func(tx store.TxBucket[json.RawMessage]) error {
		if dropThrough > 0 {
			// The checkpoint carries the hash of the last dropped entry, which is the Prev of
			// the first kept one: read it from the store, or from this batch.
			var nextPrev string
			if k := dropThrough + 1; k >= entries[0].Seq {
				nextPrev = entries[k-entries[0].Seq].Prev
			} else {
				raw, err := tx.Get(entryKey(k))
				if err != nil {
					return fmt.Errorf("retention: read entry %d: %w", k, err)
				}
				var next Entry
				if err := json.Unmarshal(raw, &next); err != nil {
					return fmt.Errorf("retention: entry %d: %w", k, ErrTampered)
				}
				nextPrev = next.Prev
			}
			for s := dropFrom; s <= dropThrough && s < entries[0].Seq; s++ {
				if err := tx.Delete(entryKey(s)); err != nil {
					return err
				}
			}
			cp := Entry{Seq: head.Seq + 1, Time: l.cfg.Clock.Now(), Prev: head.Hash,
				Checkpoint: &Checkpoint{DroppedThrough: dropThrough, DroppedHash: nextPrev, Dropped: dropThrough - dropFrom + 1}}
			cp.seal()
			entries = append(entries, cp)
			head = Head{Seq: cp.Seq, Hash: cp.Hash}
		}
		for i := range entries {
			e := &entries[i]
			if dropThrough > 0 && e.Seq <= dropThrough {
				continue // written and dropped in the same batch
			}
			raw, err := json.Marshal(e)
			if err != nil {
				return err
			}
			if err := tx.Put(entryKey(e.Seq), raw); err != nil {
				return err
			}
		}
		raw, err := json.Marshal(head)
		if err != nil {
			return err
		}
		return tx.Put(headKey, raw)
	})
	if err != nil {
		return nil, fmt.Errorf("append audit entries: %w", err)
	}
	l.head = head
	l.first = first
	if dropThrough > 0 {
		l.first = dropThrough + 1
	}
	return entries, nil
}

// Head returns the last written entry's sequence number and hash.
func (l *Log) Head() Head {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	return l.head
}

// Stats are counters for Status.
type Stats struct {
	Head    Head
	First   uint64
	Pending int
	Dropped uint64
	Written uint64
	// Flushes counts batches written (one store transaction each); Failures counts flushes
	// by Run that failed (the events stay queued and are retried).
	Flushes  uint64
	Failures uint64
}

// Stats returns the log's counters.
func (l *Log) Stats() Stats {
	l.flushMu.Lock()
	st := Stats{Head: l.head, First: l.first, Written: l.written.Load(), Flushes: l.flushes.Load(), Failures: l.failures.Load()}
	l.flushMu.Unlock()
	l.mu.Lock()
	st.Pending, st.Dropped = len(l.pending), l.dropped
	l.mu.Unlock()
	return st
}

// Entries returns the stored entries with Seq ≥ from, at most limit of them (0: all), in
// order. It does not verify them.
func (l *Log) Entries(from uint64, limit int) ([]Entry, error) {
	recs, err := newRecords(l.cfg.DB).List()
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	var out []Entry
	for _, r := range recs {
		seq, ok := parseEntryKey(r.Key)
		if !ok || seq < from {
			continue
		}
		var e Entry
		if err := json.Unmarshal(r.Value, &e); err != nil {
			return nil, fmt.Errorf("audit entry %d does not parse: %w", seq, ErrTampered)
		}
		out = append(out, e)
		if limit > 0 && len(out) == limit {
			break
		}
	}
	return out, nil
}

// Last returns the last n stored entries in order.
func (l *Log) Last(n int) ([]Entry, error) {
	h := l.Head()
	from := uint64(1)
	if n > 0 && h.Seq > uint64(n) {
		from = h.Seq - uint64(n) + 1
	}
	return l.Entries(from, 0)
}

// Verify checks the stored log: every entry's hash, the chain, the sequence, the checkpoint
// that explains dropped entries, and the head record (also against the head this process
// wrote last). It flushes queued events first. The error is a *VerifyError naming each
// problem's entry.
func (l *Log) Verify() (Report, error) {
	if err := l.Flush(); err != nil {
		return Report{}, err
	}
	recs, err := newRecords(l.cfg.DB).List()
	if err != nil {
		return Report{}, fmt.Errorf("read audit log: %w", err)
	}
	l.flushMu.Lock()
	mem := l.head
	l.flushMu.Unlock()
	return verifyRecords(recs, &mem)
}

// Subscription receives entries as they are written.
type Subscription struct {
	l    *Log
	c    chan Entry
	done chan struct{}
	once sync.Once
	err  error
}

// C receives entries in order. It is closed when the subscription ends.
func (s *Subscription) C() <-chan Entry { return s.c }

// Done is closed when the subscription ends; Err says why.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err is ErrLagging when the subscriber could not keep up, nil when the log closed.
func (s *Subscription) Err() error {
	<-s.done
	return s.err
}

// Close ends the subscription. It is idempotent.
func (s *Subscription) Close() {
	s.l.subsMu.Lock()
	defer s.l.subsMu.Unlock()
	s.end(nil)
}

// end must be called with subsMu held.
func (s *Subscription) end(err error) {
	s.once.Do(func() {
		s.err = err
		delete(s.l.subs, s)
		close(s.c) // every send happens under subsMu, like this close
		close(s.done)
	})
}

// Subscribe returns a Subscription for entries written from now on. buffer bounds how far the
// subscriber may fall behind before it is ended with ErrLagging.
func (l *Log) Subscribe(buffer int) *Subscription {
	if buffer <= 0 {
		buffer = 1024
	}
	s := &Subscription{l: l, c: make(chan Entry, buffer), done: make(chan struct{})}
	l.subsMu.Lock()
	defer l.subsMu.Unlock()
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		s.end(nil)
		return s
	}
	l.subs[s] = struct{}{}
	return s
}

func (l *Log) publish(entries []Entry) {
	l.subsMu.Lock()
	defer l.subsMu.Unlock()
	for s := range l.subs {
	send:
		for _, e := range entries {
			select {
			case s.c <- e:
			default:
				s.end(ErrLagging)
				break send
			}
		}
	}
}
