package keyrot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/tink-crypto/tink-go/v2/tink"
	"k8s.io/utils/clock"

	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"
)

var (
	// ErrBusy is returned by Start while a rotation is running.
	ErrBusy = errors.New("a key rotation is already running")
	// ErrNothingToRotate is returned by Start when it is asked to rotate neither key.
	ErrNothingToRotate = errors.New("nothing to rotate: ask for the DEK, the KEK or both")
)

// Log attribute keys.
const (
	attrStore = "store"
	attrDEK   = "dek"
	attrKEK   = "kek"
	attrError = "error"
	attrTook  = "took"
)

// Store is one store as the rotation drives it.
type Store interface {
	RotateDEK() error
	Reseal(ctx context.Context) error
	RewrapKeyset(kek tink.AEAD) error
	KeyStatus() (store.KeyStatus, error)
}

var _ Store = (*store.DB)(nil)

// KEK is the key-encryption key as the rotation drives it.
type KEK interface {
	// Rotate makes a new key current and returns the AEAD that encrypts under it and still
	// decrypts under the keys before it.
	Rotate() (tink.AEAD, error)
	// Current returns the AEAD of the KEK as it is now (to finish an interrupted rotation).
	Current() (tink.AEAD, error)
	// Retire drops every key but the current one. It is called only once every store's
	// keyset is wrapped under the current key.
	Retire() (tink.AEAD, error)
	// Unfinished reports whether keys an earlier rotation should have retired remain.
	Unfinished() (bool, error)
}

var _ KEK = crypto.LocalKEKFile{}

// Rewrap is the KEK of a Vault Transit key. Vault owns the key's versions: an operator
// rotates it (`vault write -f transit/keys/<name>/rotate`, a capability the daemon's policy
// does not need); Rotate then only re-encrypts every keyset under the latest version, and
// Retire does nothing (raising min_decryption_version in Vault is the operator's step once
// every node has re-wrapped).
type Rewrap struct {
	// AEAD is the Transit KEK. Required.
	AEAD tink.AEAD
}

var _ KEK = Rewrap{}

// Rotate implements KEK.
func (r Rewrap) Rotate() (tink.AEAD, error) { return r.AEAD, nil }

// Current implements KEK.
func (r Rewrap) Current() (tink.AEAD, error) { return r.AEAD, nil }

// Retire implements KEK.
func (r Rewrap) Retire() (tink.AEAD, error) { return r.AEAD, nil }

// Unfinished implements KEK.
func (Rewrap) Unfinished() (bool, error) { return false, nil }

// kekKeys is implemented by a KEK that can list its keys (the local keyset file).
type kekKeys interface {
	Keys() (primary uint32, all []uint32, err error)
}

// NamedStore is a store and the name status reports it under.
type NamedStore struct {
	Name  string
	Store Store
}

// Config configures New.
type Config struct {
	// Stores are rotated in this order. At least one is required.
	Stores []NamedStore
	// KEK wraps every store's keyset. Required.
	KEK KEK
	// Provider names the KEK in status ("local", "transit").
	Provider string
	// Logger receives one record per rotation step. Required.
	Logger *slog.Logger
	// Clock timestamps rotations (default: the real clock).
	Clock clock.PassiveClock
}

// Kinds says which keys a rotation rotates.
type Kinds struct {
	DEK, KEK bool
}

func (k Kinds) String() string {
	switch {
	case k.DEK && k.KEK:
		return "dek+kek"
	case k.DEK:
		return "dek"
	case k.KEK:
		return "kek"
	}
	return "none"
}

// Status is what Manager.Status reports.
type Status struct {
	// Running is set while a rotation (or the resumption of one) runs.
	Running bool
	// Kinds is what the last rotation rotated; Resumed is set when it finished one that an
	// earlier run of the daemon had left unfinished.
	Kinds   Kinds
	Resumed bool
	// Started and Finished time the last rotation (zero when none ran; Finished zero while
	// running).
	Started, Finished time.Time
	// LastError is why the last rotation stopped, "" when it finished. What it did is kept:
	// the next rotation, or the next start of the daemon, continues it.
	LastError string
	// Provider is Config.Provider; KEKKeys the number of keys in the local KEK file (0 when
	// the KEK cannot list them).
	Provider string
	KEKKeys  int
	// Stores has one entry per store, in Config order.
	Stores []StoreStatus
}

// StoreStatus is one store's keys.
type StoreStatus struct {
	Name string
	store.KeyStatus
	// Err is set when the store's status could not be read.
	Err string
}

// Manager runs key rotations, one at a time, from its Run goroutine.
type Manager struct {
	cfg  Config
	reqs chan Kinds

	mu sync.Mutex
	st Status
}

// New validates cfg.
func New(cfg Config) (*Manager, error) {
	switch {
	case len(cfg.Stores) == 0:
		return nil, errors.New("keyrot: at least one store is required")
	case cfg.KEK == nil:
		return nil, errors.New("keyrot: kek is required")
	case cfg.Logger == nil:
		return nil, errors.New("keyrot: logger is required")
	}
	for i, s := range cfg.Stores {
		if s.Name == "" || s.Store == nil {
			return nil, fmt.Errorf("keyrot: store %d needs a name and a store", i)
		}
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Manager{cfg: cfg, reqs: make(chan Kinds, 1), st: Status{Provider: cfg.Provider}}, nil
}

// Start asks Run to rotate the keys named by k and returns at once: ErrNothingToRotate when k
// names none, ErrBusy while a rotation runs or waits to.
func (m *Manager) Start(k Kinds) error {
	if !k.DEK && !k.KEK {
		return ErrNothingToRotate
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.st.Running {
		return ErrBusy
	}
	select {
	case m.reqs <- k:
	default:
		return ErrBusy
	}
	m.begin(k, false)
	return nil
}

// begin marks a rotation as running; m.mu is held.
func (m *Manager) begin(k Kinds, resumed bool) {
	m.st.Running, m.st.Kinds, m.st.Resumed = true, k, resumed
	m.st.Started, m.st.Finished, m.st.LastError = m.cfg.Clock.Now(), time.Time{}, ""
}

// Run first finishes a rotation an earlier run left unfinished (a KEK file with old keys, a
// store with a pending re-seal or old DEK keys), then runs the rotations Start asks for until
// ctx ends. A rotation that fails is reported by Status and continued by the next one.
func (m *Manager) Run(ctx context.Context) error {
	if k := m.unfinished(); k.DEK || k.KEK {
		m.mu.Lock()
		m.begin(k, true)
		m.mu.Unlock()
		m.run(ctx, k, false)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case k := <-m.reqs:
			m.mu.Lock()
			m.begin(k, false) // again: a resumption may have run since Start
			m.mu.Unlock()
			m.run(ctx, k, true)
		}
	}
}

// unfinished says what an earlier run left to finish.
func (m *Manager) unfinished() Kinds {
	var k Kinds
	if u, err := m.cfg.KEK.Unfinished(); err != nil {
		m.cfg.Logger.Warn("cannot tell whether a KEK rotation is unfinished", slog.Any(attrError, err))
	} else {
		k.KEK = u
	}
	for _, s := range m.cfg.Stores {
		ks, err := s.Store.KeyStatus()
		if err != nil {
			m.cfg.Logger.Warn("cannot read the store's key status", slog.String(attrStore, s.Name), slog.Any(attrError, err))
			continue
		}
		if ks.ResealPending || len(ks.KeyIDs) > 1 {
			k.DEK = true
		}
	}
	return k
}

func (m *Manager) run(ctx context.Context, k Kinds, fresh bool) {
	start := m.cfg.Clock.Now()
	m.cfg.Logger.Info("key rotation started", slog.Bool(attrDEK, k.DEK), slog.Bool(attrKEK, k.KEK), slog.Bool("resumed", !fresh))
	err := m.rotate(ctx, k, fresh)
	m.mu.Lock()
	m.st.Running, m.st.Finished = false, m.cfg.Clock.Now()
	if err != nil {
		m.st.LastError = err.Error()
	}
	m.mu.Unlock()
	if err != nil {
		m.cfg.Logger.Error("key rotation stopped; the next rotation or start continues it", slog.Any(attrError, err))
		return
	}
	m.cfg.Logger.Info("key rotation finished", slog.Bool(attrDEK, k.DEK), slog.Bool(attrKEK, k.KEK), slog.Duration(attrTook, m.cfg.Clock.Since(start)))
}

// rotate runs the steps. Each is safe to stop at and to repeat:
//
//   - KEK: the KEK gets a new primary key (old keys kept), every store's keyset is re-wrapped
//     under it, and only then are the old keys retired;
//   - DEK: every store gets a new primary DEK key (persisted before use), then every store
//     re-seals its records and prunes its old keys (broker/store's Reseal).
//
// fresh is false when finishing an earlier rotation: no new key is made.
func (m *Manager) rotate(ctx context.Context, k Kinds, fresh bool) error {
	if k.KEK {
		var kek tink.AEAD
		var err error
		if fresh {
			kek, err = m.cfg.KEK.Rotate()
		} else {
			kek, err = m.cfg.KEK.Current()
		}
		if err != nil {
			return fmt.Errorf("rotate kek: %w", err)
		}
		for _, s := range m.cfg.Stores {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("rotate kek: %w", err)
			}
			if err := s.Store.RewrapKeyset(kek); err != nil {
				return fmt.Errorf("rotate kek: store %s: %w", s.Name, err)
			}
		}
		if _, err := m.cfg.KEK.Retire(); err != nil {
			return fmt.Errorf("rotate kek: %w", err)
		}
	}
	if k.DEK {
		if fresh {
			for _, s := range m.cfg.Stores {
				if err := s.Store.RotateDEK(); err != nil {
					return fmt.Errorf("rotate dek: store %s: %w", s.Name, err)
				}
			}
		}
		for _, s := range m.cfg.Stores {
			if err := s.Store.Reseal(ctx); err != nil {
				return fmt.Errorf("rotate dek: store %s: %w", s.Name, err)
			}
		}
	}
	return nil
}

// Status reports the last rotation and every store's keys (reading each store's record key
// ids: a scan without decryption).
func (m *Manager) Status() Status {
	m.mu.Lock()
	st := m.st
	m.mu.Unlock()
	if kk, ok := m.cfg.KEK.(kekKeys); ok {
		if _, all, err := kk.Keys(); err == nil {
			st.KEKKeys = len(all)
		}
	}
	st.Stores = nil
	for _, s := range m.cfg.Stores {
		ks, err := s.Store.KeyStatus()
		ss := StoreStatus{Name: s.Name, KeyStatus: ks}
		if err != nil {
			ss.Err = err.Error()
		}
		st.Stores = append(st.Stores, ss)
	}
	return st
}
