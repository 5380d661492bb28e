package local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"k8s.io/utils/clock"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/store"
)

// bucket holds one record per secret name.
const bucket = "local-secrets"

// Limits on what the admin API may write, so one request cannot exhaust memory or the store.
const (
	MaxNameLen   = 253
	MaxKeys      = 64
	MaxKeyLen    = 253
	MaxValueSize = 64 << 10
)

// ErrInvalidSecret means a Put was refused because of its name, keys or size.
var ErrInvalidSecret = errors.New("invalid secret")

// Config configures a Store.
type Config struct {
	// DB is the encrypted store that holds the secrets (bucket "local-secrets"). Required.
	DB *store.DB
	// Logger receives change events (names and versions only). Required.
	Logger *slog.Logger
	// Clock stamps updates. Defaults to the real clock.
	Clock clock.PassiveClock
}

// Store is the embedded secret source.
type Store struct {
	db    store.Bucket[record]
	log   *slog.Logger
	clock clock.PassiveClock
	mu    sync.Mutex // serialises read-modify-write of versions and the subscriber list
	subs  map[*subscriber]struct{}
}

// subscriber collects changed names until its reader takes them: a slow reader delays
// notifications but never loses one, and many changes of one name coalesce into one.
type subscriber struct {
	mu      sync.Mutex
	pending map[string]struct{}
	wake    chan struct{}
}

func (s *subscriber) add(name string) {
	s.mu.Lock()
	s.pending[name] = struct{}{}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscriber) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.pending))
	for n := range s.pending {
		out = append(out, n)
	}
	clear(s.pending)
	return out
}

var (
	_ source.Source   = (*Store)(nil)
	_ source.Notifier = (*Store)(nil)
)

// record is the stored form. Data is []byte so encoding/json stores it as base64; the whole
// record is sealed by the store before it reaches disk.
type record struct {
	Version   uint64            `json:"version"`
	UpdatedAt time.Time         `json:"updatedAt"`
	Data      map[string][]byte `json:"data"`
	// Deleted marks a tombstone: the name keeps its version counter after a delete, so a
	// later Put never reuses a version a watcher has already seen.
	Deleted bool `json:"deleted,omitempty"`
}

// New returns a Store.
func New(cfg Config) (*Store, error) {
	if cfg.DB == nil {
		return nil, errors.New("local source: db is required")
	}
	if cfg.Logger == nil {
		return nil, errors.New("local source: logger is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Store{db: store.NewBucket[record](cfg.DB, bucket), log: cfg.Logger, clock: cfg.Clock, subs: map[*subscriber]struct{}{}}, nil
}

// Fetch implements source.Source.
func (s *Store) Fetch(_ context.Context, path string) (*source.Secret, error) {
	rec, err := s.get(path)
	if err != nil {
		return nil, err
	}
	if rec.Deleted {
		return nil, fmt.Errorf("%w: %s", source.ErrNotFound, path)
	}
	out := &source.Secret{Data: make(map[string]source.Value, len(rec.Data)), Version: strconv.FormatUint(rec.Version, 10)}
	for k, v := range rec.Data {
		out.Data[k] = source.Value(v)
	}
	return out, nil
}

func (s *Store) get(name string) (*record, error) {
	rec, err := s.db.Get(name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("%w: %s", source.ErrNotFound, name)
	case errors.Is(err, store.ErrDecode):
		return nil, fmt.Errorf("decode local secret %q: %w", name, store.ErrCorrupt)
	case err != nil:
		return nil, fmt.Errorf("read local secret: %w", err)
	}
	return &rec, nil
}

// ValidatePut checks a secret before it is written: the name and keys must be printable and
// bounded, the values bounded. Messages say what to change and never echo values.
func ValidatePut(name string, data map[string][]byte) error {
	if err := validName(name, MaxNameLen); err != nil {
		return fmt.Errorf("%w: name: %v", ErrInvalidSecret, err)
	}
	if len(data) == 0 {
		return fmt.Errorf("%w: at least one key=value is required", ErrInvalidSecret)
	}
	if len(data) > MaxKeys {
		return fmt.Errorf("%w: %d keys, at most %d allowed", ErrInvalidSecret, len(data), MaxKeys)
	}
	for k, v := range data {
		if err := validName(k, MaxKeyLen); err != nil {
			return fmt.Errorf("%w: key: %v", ErrInvalidSecret, err)
		}
		if len(v) > MaxValueSize {
			return fmt.Errorf("%w: value of key %q is %d bytes, at most %d allowed", ErrInvalidSecret, k, len(v), MaxValueSize)
		}
	}
	return nil
}

func validName(s string, maxLen int) error {
	switch {
	case s == "":
		return errors.New("must not be empty")
	case len(s) > maxLen:
		return fmt.Errorf("is %d bytes, at most %d allowed", len(s), maxLen)
	case !utf8.ValidString(s):
		return errors.New("must be valid UTF-8")
	}
	for _, r := range s {
		ok := r == '-' || r == '_' || r == '.' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
		if !ok {
			return fmt.Errorf("%q: only letters, digits, '-', '_' and '.' are allowed", s)
		}
	}
	if s == "." || s == ".." {
		return fmt.Errorf("%q is not allowed", s)
	}
	return nil
}

// Put writes a new version of a secret, replacing all its keys, and returns the new version.
func (s *Store) Put(_ context.Context, name string, data map[string][]byte) (string, error) {
	if err := ValidatePut(name, data); err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	version, err := s.nextVersion(name)
	if err != nil {
		return "", err
	}
	if err := s.db.Put(name, record{Version: version, UpdatedAt: s.clock.Now().UTC(), Data: maps.Clone(data)}); err != nil {
		return "", fmt.Errorf("write local secret: %w", err)
	}
	v := strconv.FormatUint(version, 10)
	s.log.Info("local secret written", slog.String("secret", name), slog.String("version", v))
	s.notifyLocked(name)
	return v, nil
}

// nextVersion is one more than the name's last version, tombstones included.
func (s *Store) nextVersion(name string) (uint64, error) {
	switch old, err := s.get(name); {
	case err == nil:
		return old.Version + 1, nil
	case errors.Is(err, source.ErrNotFound):
		return 1, nil
	default:
		return 0, err
	}
}

// PutIfAbsent writes the secret only when no secret of that name exists; it reports whether it
// wrote. Dev mode seeds its demo secret with it so a restart keeps the user's changes.
func (s *Store) PutIfAbsent(ctx context.Context, name string, data map[string][]byte) (bool, error) {
	if rec, err := s.get(name); err == nil && !rec.Deleted {
		return false, nil
	} else if err != nil && !errors.Is(err, source.ErrNotFound) {
		return false, err
	}
	_, err := s.Put(ctx, name, data)
	return err == nil, err
}

// Delete removes a secret. Deleting a missing secret is not an error.
func (s *Store) Delete(_ context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, err := s.get(name)
	if errors.Is(err, source.ErrNotFound) || err == nil && rec.Deleted {
		return nil
	}
	if err != nil {
		return err
	}
	if err := s.db.Put(name, record{Version: rec.Version + 1, UpdatedAt: s.clock.Now().UTC(), Deleted: true}); err != nil {
		return fmt.Errorf("delete local secret: %w", err)
	}
	s.notifyLocked(name)
	return nil
}

// Names lists the stored secret names, sorted.
func (s *Store) Names() ([]string, error) {
	recs, err := s.db.List()
	if err != nil {
		return nil, fmt.Errorf("list local secrets: %w", err)
	}
	out := make([]string, 0, len(recs))
	for _, r := range recs {
		if r.Err != nil {
			return nil, fmt.Errorf("decode local secret %q: %w", r.Key, store.ErrCorrupt)
		}
		if !r.Value.Deleted {
			out = append(out, r.Key)
		}
	}
	return out, nil
}

// Changes implements source.Notifier. Notifications are never dropped: each subscriber keeps a
// set of changed names until its reader takes them.
func (s *Store) Changes(ctx context.Context) <-chan string {
	sub := &subscriber{pending: map[string]struct{}{}, wake: make(chan struct{}, 1)}
	s.mu.Lock()
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	out := make(chan string)
	go func() {
		defer close(out)
		defer func() {
			s.mu.Lock()
			delete(s.subs, sub)
			s.mu.Unlock()
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case <-sub.wake:
			}
			for _, name := range sub.take() {
				select {
				case out <- name:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

func (s *Store) notifyLocked(name string) {
	for sub := range s.subs {
		sub.add(name)
	}
}
