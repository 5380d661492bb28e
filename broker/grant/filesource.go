package grant

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"
)

// DefaultFileInterval is how often a FileSource polls its file when no interval is set.
const DefaultFileInterval = 2 * time.Second

// Log attribute keys of this package.
const (
	logKeyPath   = "path"
	logKeyError  = "error"
	logKeyGrants = "grants"
)

// FileSourceConfig configures a FileSource.
type FileSourceConfig struct {
	// Path of the grants file (YAML, several documents separated by "---"). Required. It may
	// be a symlink, as in a mounted ConfigMap: it is re-resolved on every poll.
	Path string
	// Interval between polls; DefaultFileInterval when zero.
	Interval time.Duration
	// Logger receives reload failures and successes. Required.
	Logger *slog.Logger
	// Clock drives the poll ticker; the real clock when nil.
	Clock clock.Clock
	// OnChange, when set, is called from Run with each new good Set (not for the initial
	// load). It must not block for long: polling waits for it.
	OnChange func(*Set)
}

// FileSource serves grants from a file and reloads it when its content changes. Change is
// detected by content hash rather than mtime, so ConfigMap-style atomic symlink swaps
// ("..data" → a new timestamped directory) and same-second edits are both picked up.
type FileSource struct {
	cfg     FileSourceConfig
	current atomic.Pointer[Set]

	// Touched only by the goroutine running Run (and NewFileSource before it starts).
	goodHash       [sha256.Size]byte
	lastBad        string // the last failure logged, so a bad file is logged once, not every poll
	emptyOnPurpose bool   // the file last loaded is the explicit empty list "[]"
}

// errEmptyFile is lastBad while an empty file is kept out.
const errEmptyFile = "empty"

// NewFileSource validates cfg, applies defaults and loads the file once. A missing or bad file
// at start is an error: the daemon refuses to start rather than run with no grants.
func NewFileSource(cfg FileSourceConfig) (*FileSource, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("%w: path is required", ErrInvalidConfig)
	}
	if cfg.Logger == nil {
		return nil, fmt.Errorf("%w: logger is required", ErrInvalidConfig)
	}
	if cfg.Interval < 0 {
		return nil, fmt.Errorf("%w: interval must not be negative", ErrInvalidConfig)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultFileInterval
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	f := &FileSource{cfg: cfg}
	set, hash, err := f.load()
	if err != nil {
		return nil, fmt.Errorf("load grants file %s: %w", cfg.Path, err)
	}
	f.current.Store(set)
	f.goodHash = hash
	return f, nil
}

// Current is the last good Set. It is never nil.
func (f *FileSource) Current() *Set { return f.current.Load() }

// Run polls the file until ctx is done, then returns nil. A file that cannot be read or does
// not validate is logged with the reason, once per distinct failure, and the last good Set
// stays in force; a good change replaces the Set and calls OnChange. Call Run once.
func (f *FileSource) Run(ctx context.Context) error {
	// A timer re-armed after each poll, rather than a ticker: a slow poll (or OnChange) never
	// queues a burst of polls behind it.
	t := f.cfg.Clock.NewTimer(f.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			f.poll()
			t.Reset(f.cfg.Interval)
		}
	}
}

func (f *FileSource) poll() {
	set, hash, err := f.load()
	if err != nil {
		if msg := err.Error(); msg != f.lastBad {
			f.lastBad = msg
			f.cfg.Logger.Warn("grants file rejected; keeping the last good grants",
				slog.String(logKeyPath, f.cfg.Path), slog.String(logKeyError, msg))
		}
		return
	}
	if hash == f.goodHash {
		f.lastBad = ""
		return
	}
	if set.Len() == 0 && f.current.Load().Len() > 0 && !f.emptyOnPurpose {
		if f.lastBad != errEmptyFile {
			f.lastBad = errEmptyFile
			f.cfg.Logger.Warn("grants file is empty; keeping the last good grants",
				slog.String(logKeyPath, f.cfg.Path), slog.Int(logKeyGrants, f.current.Load().Len()),
				slog.String("fix", `write "[]" to remove every grant on purpose`))
		}
		return
	}
	f.lastBad = ""
	f.goodHash = hash
	f.current.Store(set)
	f.cfg.Logger.Info("grants file reloaded",
		slog.String(logKeyPath, f.cfg.Path), slog.Int(logKeyGrants, set.Len()))
	if f.cfg.OnChange != nil {
		f.cfg.OnChange(set)
	}
}

// load reads, parses and validates the file. An unchanged good file is not re-parsed.
func (f *FileSource) load() (*Set, [sha256.Size]byte, error) {
	var zero [sha256.Size]byte
	data, err := readLimited(f.cfg.Path, MaxDocumentSize)
	if err != nil {
		return nil, zero, err
	}
	hash := sha256.Sum256(data)
	if cur := f.current.Load(); cur != nil && hash == f.goodHash {
		return cur, hash, nil
	}
	grants, err := Parse(data)
	if err != nil {
		return nil, zero, err
	}
	set, err := NewSet(grants)
	if err != nil {
		return nil, zero, err
	}
	f.emptyOnPurpose = len(grants) == 0 && ExplicitlyEmpty(data)
	return set, hash, nil
}

func readLimited(path string, limit int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrGrantsFile, unwrapPathError(err))
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrGrantsFile, unwrapPathError(err))
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrGrantsFile, limit)
	}
	return data, nil
}

// unwrapPathError drops the path from an *fs.PathError: callers already name the file.
func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
