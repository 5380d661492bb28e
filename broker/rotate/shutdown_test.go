package rotate

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/keywarden/keywarden/broker/source"
)

// closableStore plays the daemon's bbolt store: after close, every write is a bug (bbolt
// would fail or, worse, the record would be lost silently).
type closableStore struct {
	mu          sync.Mutex
	closed      bool
	writes      int
	afterClosed int
}

func (s *closableStore) put() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	if s.closed {
		s.afterClosed++
	}
}

func (s *closableStore) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
}

func (s *closableStore) counts() (writes, afterClosed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes, s.afterClosed
}

// persistingSource behaves like the Vault source with leased secrets: a fetch blocks in the
// backend until released or cancelled, and records what it got in the store either way (a
// lease issued just before the cancellation must still be tracked).
type persistingSource struct {
	store    *closableStore
	started  atomic.Int64
	finished atomic.Int64
	release  chan struct{}
}

func (p *persistingSource) Fetch(ctx context.Context, _ string) (*source.Secret, error) {
	p.started.Add(1)
	defer p.finished.Add(1)
	var err error
	select {
	case <-p.release:
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.store.put()
	if err != nil {
		return nil, err
	}
	return &source.Secret{Version: "1", Data: map[string]source.Value{"k": source.Value("v")}}, nil
}

func TestEngine_Run_waitsForInFlightFetches(t *testing.T) {
	st := &closableStore{}
	src := &persistingSource{store: st, release: make(chan struct{})}
	e := newEngine(t, src, clocktesting.NewFakeClock(time.Now()))
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- e.Run(ctx) }()

	got := make(chan error, 1)
	go func() { _, err := e.Get(context.Background(), ref); got <- err }()
	waitFor(t, func() bool { return src.started.Load() == 1 })

	cancel()
	if err := <-runDone; err != nil {
		t.Fatal(err)
	}
	if src.finished.Load() != 1 {
		t.Error("Run returned while a fetch it started was still in flight")
	}
	// The daemon closes its stores once Run has returned.
	st.close()
	close(src.release)
	<-got
	if writes, after := st.counts(); after != 0 {
		t.Fatalf("%d of %d store writes happened after Run returned and the store was closed", after, writes)
	}
}

func TestEngine_Close_refusesNewFetches(t *testing.T) {
	st := &closableStore{}
	src := &persistingSource{store: st, release: make(chan struct{})}
	close(src.release)
	e := newEngine(t, src, clocktesting.NewFakeClock(time.Now()))
	e.Close()
	e.Close() // idempotent
	if _, err := e.Get(context.Background(), ref); !errors.Is(err, ErrClosed) || !errors.Is(err, source.ErrUnavailable) {
		t.Fatalf("Get after Close: %v, want ErrClosed (a transient source error)", err)
	}
	if err := e.Refresh(context.Background(), ref); !errors.Is(err, ErrClosed) {
		t.Fatalf("Refresh after Close: %v, want ErrClosed", err)
	}
	if n := src.started.Load(); n != 0 {
		t.Fatalf("%d fetches started after Close", n)
	}
}
