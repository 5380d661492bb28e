package grant

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/keywarden/keywarden/broker/store"
)

// ErrGrantNotFound reports a delete of a grant the store does not hold.
var ErrGrantNotFound = errors.New("access grant not found")

// storeBucket holds one AccessGrant per grant name.
const storeBucket = "grants"

// StoreSourceConfig configures a StoreSource.
type StoreSourceConfig struct {
	// DB persists the grants (bucket "grants", sealed like every record). Required.
	DB *store.DB
	// OnChange is called with the new Set after every successful Apply or Delete; when it
	// returns an error (the broker refused the merged grants) the change is rolled back and
	// the error returned to the caller. Optional.
	OnChange func(*Set) error
}

// StoreSource is the admin API's grant source: grants applied with `keywarden grant apply`
// on a single machine, kept in the daemon's encrypted state store across restarts.
type StoreSource struct {
	db       store.Bucket[AccessGrant]
	onChange func(*Set) error
	mu       sync.Mutex // serialises Apply and Delete
	current  atomic.Pointer[Set]
}

// NewStoreSource loads the stored grants. A stored grant that no longer validates is an error:
// the operator must see it rather than have grants silently vanish.
func NewStoreSource(cfg StoreSourceConfig) (*StoreSource, error) {
	if cfg.DB == nil {
		return nil, fmt.Errorf("%w: db is required", ErrInvalidConfig)
	}
	s := &StoreSource{db: store.NewBucket[AccessGrant](cfg.DB, storeBucket), onChange: cfg.OnChange}
	recs, err := s.db.List()
	if err != nil {
		return nil, fmt.Errorf("load stored grants: %w", err)
	}
	grants := make([]AccessGrant, 0, len(recs))
	for _, r := range recs {
		if r.Err != nil {
			return nil, fmt.Errorf("stored grant %q: %w", r.Key, store.ErrCorrupt)
		}
		grants = append(grants, r.Value)
	}
	set, err := NewSet(grants)
	if err != nil {
		return nil, fmt.Errorf("stored grants: %w", err)
	}
	s.current.Store(set)
	return s, nil
}

// Current returns the stored grants.
func (s *StoreSource) Current() *Set { return s.current.Load() }

// Apply creates or replaces grants by name, all or none.
func (s *StoreSource) Apply(_ context.Context, grants []AccessGrant) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	byName := map[string]AccessGrant{}
	for _, g := range s.current.Load().Grants() {
		byName[g.Name] = g
	}
	for _, g := range grants {
		byName[g.Name] = g
	}
	next := make([]AccessGrant, 0, len(byName))
	for _, g := range byName {
		next = append(next, g)
	}
	set, err := NewSet(next)
	if err != nil {
		return err
	}
	return s.commit(set, func(tx store.TxBucket[AccessGrant]) error {
		for _, g := range grants {
			if err := tx.Put(g.Name, g); err != nil {
				return err
			}
		}
		return nil
	})
}

// Delete removes a grant.
func (s *StoreSource) Delete(_ context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var next []AccessGrant
	found := false
	for _, g := range s.current.Load().Grants() {
		if g.Name == name {
			found = true
			continue
		}
		next = append(next, g)
	}
	if !found {
		return fmt.Errorf("%w: %q is not in the daemon's grant store", ErrGrantNotFound, name)
	}
	set, err := NewSet(next)
	if err != nil {
		return err
	}
	return s.commit(set, func(tx store.TxBucket[AccessGrant]) error { return tx.Delete(name) })
}

// commit offers the new set to the broker first, then persists it; a refused set changes
// nothing, and a failed write restores the previous set in the broker.
func (s *StoreSource) commit(set *Set, write func(tx store.TxBucket[AccessGrant]) error) error {
	prev := s.current.Load()
	if s.onChange != nil {
		if err := s.onChange(set); err != nil {
			return err
		}
	}
	if err := s.db.Update(write); err != nil {
		if s.onChange != nil {
			_ = s.onChange(prev)
		}
		return fmt.Errorf("save grants: %w", err)
	}
	s.current.Store(set)
	return nil
}
