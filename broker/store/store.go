package store

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tink-crypto/tink-go/v2/tink"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"k8s.io/utils/clock"

	"github.com/keywarden/keywarden/crypto"
)

const (
	// SchemaVersion is the layout version this code writes and reads. It is
	// part of every record's associated data.
	SchemaVersion = 1

	// MetaBucket is reserved for the schema version and the wrapped DEK
	// keyset; Get/Put/Delete/List refuse it.
	MetaBucket = "keywarden.meta"

	// MaxBucketLen and MaxKeyLen bound bucket and key names, in bytes.
	MaxBucketLen = 64
	MaxKeyLen    = 512

	// DefaultLockTimeout is how long Open waits for another process's lock.
	DefaultLockTimeout = 5 * time.Second

	metaSchemaKey = "schemaVersion"
	metaKeysetKey = "dekKeyset"

	fileMode fs.FileMode = 0o600
	dirMode  fs.FileMode = 0o700
)

// Log attribute keys.
const (
	attrPath          = "path"
	attrQuarantinedTo = "quarantined_path"
	attrReason        = "reason"
	attrSchema        = "schema_version"
	attrCreated       = "created"
	attrKeyID         = "dek_primary_key_id"
)

// Config configures Open.
type Config struct {
	// Path is the bbolt file. Its parent directory is created (0700) if absent.
	Path string
	// KEK encrypts the DEK keyset kept in the file's meta bucket. Required.
	KEK tink.AEAD
	// LockTimeout is how long Open waits while another process holds the
	// file (default DefaultLockTimeout). Negative is invalid.
	LockTimeout time.Duration
	// Logger receives open and quarantine events. Required.
	Logger *slog.Logger
	// Clock timestamps quarantined files and times commits (default: the real clock).
	Clock clock.PassiveClock
	// OnCommit, when set, is called after every write transaction whose function succeeded,
	// with the time the transaction took (its function and the commit, fsync included) and
	// the commit's error (nil, or one of this package's errors). It lets the daemon export
	// commit latency without this package depending on a metrics library; it must be fast
	// and must not call methods of the DB.
	OnCommit func(d time.Duration, err error)
	// FailCommit, when set, is asked before every commit; an error it returns fails that write
	// transaction as a failed commit would (rolled back, nothing written, reported to OnCommit).
	// It is the fault injection of tests and fault campaigns; the daemon never sets it.
	FailCommit func() error
	// ResealBatch is how many records one transaction of Reseal examines (default
	// DefaultResealBatch). Negative is invalid.
	ResealBatch int
	// NoSync commits without fsync (bbolt's NoSync): a commit reaches the page cache, so it
	// survives the process being killed (kill -9, a crash) but a power loss or kernel crash
	// may lose the last commits, and an unflushed file may even be unreadable afterwards
	// (OpenOrQuarantine then starts it empty). Only for a store whose records can be rebuilt;
	// Sync flushes it on demand. Rotation and reseal commits of such a store are flushed too.
	NoSync bool
}

func (c *Config) validate() error {
	switch {
	case c.Path == "":
		return errors.New("path is required")
	case c.KEK == nil:
		return errors.New("kek is required")
	case c.Logger == nil:
		return errors.New("logger is required")
	case c.LockTimeout < 0:
		return fmt.Errorf("lock timeout must not be negative, got %s", c.LockTimeout)
	case c.ResealBatch < 0:
		return fmt.Errorf("reseal batch must not be negative, got %d", c.ResealBatch)
	}
	if c.ResealBatch == 0 {
		c.ResealBatch = DefaultResealBatch
	}
	if c.LockTimeout == 0 {
		c.LockTimeout = DefaultLockTimeout
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
	return nil
}

// Record is one decrypted key/value pair. Its Value is secret: String,
// GoString, Format and LogValue show only the key and the value's length.
type Record struct {
	Key   string
	Value []byte
}

// String implements fmt.Stringer without the value.
func (r Record) String() string {
	return fmt.Sprintf("store.Record{Key:%q, Value:[REDACTED %d bytes]}", r.Key, len(r.Value))
}

// GoString implements fmt.GoStringer without the value.
func (r Record) GoString() string { return r.String() }

// Format prints String for every verb, so %d or %x cannot dump the value.
func (r Record) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(r.String())) }

// LogValue implements slog.LogValuer without the value.
func (r Record) LogValue() slog.Value {
	return slog.GroupValue(slog.String("key", r.Key), slog.Int("value_len", len(r.Value)))
}

// DB is an open store. It is safe for concurrent use.
type DB struct {
	path string
	// noSync is Config.NoSync; reopen opens the file again with it.
	noSync bool
	// bdb is the open bbolt handle. Transactions hold handleMu for reading; reopen replaces
	// bdb holding it for writing.
	bdb         *bolt.DB
	handleMu    sync.RWMutex
	lockTimeout time.Duration
	// broken is set when a commit failed after fn succeeded (a write or fsync error, or
	// FailCommit) or bbolt lost its mapping of the file. After a failed fsync the page cache
	// may hold pages the disk never got, and Linux reports a writeback error to one fsync
	// only, so the handle is not trusted again: the next transaction first closes it, drops
	// the file's cached pages and opens the file anew (reopen), like PostgreSQL treats a
	// failed fsync.
	broken   atomic.Bool
	log      *slog.Logger
	clock    clock.PassiveClock
	onCommit func(time.Duration, error)
	// failCommit is Config.FailCommit.
	failCommit func() error

	kr atomic.Pointer[crypto.Keyring]
	// rotateMu serialises every change of kr (RotateDEK, RewrapKeyset, the prune at the end
	// of Reseal), so none is lost and the prune's check sees the keyring it prunes.
	rotateMu sync.Mutex
	// resealMu lets one Reseal walk at a time.
	resealMu sync.Mutex
	// resealBatchSize is Config.ResealBatch.
	resealBatchSize int

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// String names the store without any of its contents or keys.
func (db *DB) String() string { return "store.DB(" + db.path + ")" }

// GoString implements fmt.GoStringer like String.
func (db *DB) GoString() string { return db.String() }

// Format prints String for every verb.
func (db *DB) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(db.String())) }

// LogValue implements slog.LogValuer.
func (db *DB) LogValue() slog.Value { return slog.StringValue(db.String()) }

// Open opens or creates the store at cfg.Path.
//
// Errors: ErrLocked (another process holds the file past LockTimeout),
// ErrUnreadable (not a usable bbolt file), ErrSchemaTooNew, ErrCorrupt (the
// KEK does not open the stored keyset, or the metadata is damaged),
// ErrKEKUnavailable (the KEK could not be reached; the file is not judged).
func Open(cfg Config) (*DB, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), dirMode); err != nil {
		return nil, fmt.Errorf("open store: create directory: %w", err)
	}
	bdb, err := openBolt(cfg.Path, cfg.LockTimeout, cfg.NoSync)
	if err != nil {
		return nil, err
	}
	db := &DB{path: cfg.Path, noSync: cfg.NoSync, bdb: bdb, lockTimeout: cfg.LockTimeout, log: cfg.Logger, clock: cfg.Clock, onCommit: cfg.OnCommit, failCommit: cfg.FailCommit, resealBatchSize: cfg.ResealBatch}
	created, err := db.loadMeta(cfg.KEK)
	if err != nil {
		_ = bdb.Close()
		return nil, err
	}
	cfg.Logger.Info("store opened", attrPath, cfg.Path, attrSchema, SchemaVersion,
		attrCreated, created, attrKeyID, db.kr.Load().PrimaryKeyID())
	return db, nil
}

// openBolt opens the bbolt file and maps bbolt's errors (and panics: bbolt
// can panic on damaged pages) to ours.
func openBolt(path string, timeout time.Duration, noSync bool) (bdb *bolt.DB, err error) {
	var file *os.File
	opts := &bolt.Options{
		Timeout: timeout,
		NoSync:  noSync,
		OpenFile: func(name string, flag int, mode os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, mode)
			file = f
			return f, err
		},
	}
	// A damaged file can make bbolt touch mmapped pages past the end of the
	// file (SIGBUS) or panic on a bad page; SetPanicOnFault turns the fault
	// into a panic so both are recovered here instead of killing the daemon.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			// bbolt did not return, so it cannot close the file or unmap it;
			// doing both here releases the flock (a mapping alone keeps it), so
			// a later Open of this path in this process is not locked out.
			if file != nil {
				unmapFile(file)
				_ = file.Close()
			}
			bdb, err = nil, fmt.Errorf("open store %s: bbolt failed reading the file: %w", path, ErrUnreadable)
		}
	}()
	if err := precheckFile(path); err != nil {
		return nil, fmt.Errorf("open store %s: %v: %w", path, err, ErrUnreadable)
	}
	bdb, err = bolt.Open(path, fileMode, opts)
	if err != nil {
		var pathErr *fs.PathError
		switch {
		case errors.Is(err, berrors.ErrTimeout):
			return nil, fmt.Errorf("open store %s: another keywarden process is using this data directory (file lock not released within %s): %w",
				path, timeout, ErrLocked)
		case errors.As(err, &pathErr):
			// Permission denied, no such directory, I/O error: not the
			// file's content, so never a reason to quarantine it.
			return nil, fmt.Errorf("open store %s: %s: %w", path, pathErr.Op, pathErr.Err)
		default:
			return nil, fmt.Errorf("open store %s: not a readable bbolt file (%v): %w", path, err, ErrUnreadable)
		}
	}
	// bbolt applies the mode only when it creates the file.
	if err := file.Chmod(fileMode); err != nil {
		_ = bdb.Close()
		return nil, fmt.Errorf("open store %s: chmod: %w", path, err)
	}
	return bdb, nil
}

// loadMeta reads (or, for a new file, writes) the schema version and the
// wrapped DEK keyset.
func (db *DB) loadMeta(kek tink.AEAD) (created bool, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("open store %s: bbolt failed reading the file: %w", db.path, ErrUnreadable)
		}
	}()
	err = db.bdb.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket([]byte(MetaBucket))
		if meta == nil {
			if k, _ := tx.Cursor().First(); k != nil {
				return fmt.Errorf("open store %s: data buckets but no keyset: %w", db.path, ErrCorrupt)
			}
			kr, wrapped, err := crypto.NewKeyring(kek)
			if errors.Is(err, crypto.ErrKEKUnavailable) {
				return fmt.Errorf("open store %s: new keyring: %w (%w)", db.path, ErrKEKUnavailable, err)
			}
			if err != nil {
				return fmt.Errorf("open store %s: new keyring: %w", db.path, err)
			}
			meta, err := tx.CreateBucket([]byte(MetaBucket))
			if err != nil {
				return fmt.Errorf("open store %s: create meta bucket: %v", db.path, err)
			}
			if err := meta.Put([]byte(metaSchemaKey), []byte(strconv.Itoa(SchemaVersion))); err != nil {
				return fmt.Errorf("open store %s: write schema version: %v", db.path, err)
			}
			if err := meta.Put([]byte(metaKeysetKey), wrapped); err != nil {
				return fmt.Errorf("open store %s: write keyset: %v", db.path, err)
			}
			db.kr.Store(kr)
			created = true
			return nil
		}

		raw := meta.Get([]byte(metaSchemaKey))
		v, err := strconv.Atoi(string(raw))
		if err != nil || v < 1 {
			return fmt.Errorf("open store %s: bad schema version %q: %w", db.path, raw, ErrCorrupt)
		}
		if v > SchemaVersion {
			return fmt.Errorf("open store %s: schema version %d is newer than this keywarden supports (%d); upgrade keywarden or move the file away: %w",
				db.path, v, SchemaVersion, ErrSchemaTooNew)
		}
		wrapped := meta.Get([]byte(metaKeysetKey))
		if wrapped == nil {
			return fmt.Errorf("open store %s: no keyset in meta bucket: %w", db.path, ErrCorrupt)
		}
		// OpenKeyring copies what it keeps; wrapped is only valid inside tx.
		kr, err := crypto.OpenKeyring(kek, wrapped)
		if errors.Is(err, crypto.ErrKEKUnavailable) {
			return fmt.Errorf("open store %s: cannot unwrap the keyset: %w (%w)", db.path, ErrKEKUnavailable, err)
		}
		if err != nil {
			return fmt.Errorf("open store %s: the KEK does not match this store (or its keyset is damaged): %w", db.path, ErrCorrupt)
		}
		db.kr.Store(kr)
		return nil
	})
	if err != nil {
		if isOurs(err) {
			return false, err
		}
		return false, fmt.Errorf("open store %s: %v: %w", db.path, err, ErrUnreadable)
	}
	return created, nil
}

// isOurs reports whether err already carries one of this package's sentinels.
func isOurs(err error) bool {
	for _, s := range []error{ErrNotFound, ErrCorrupt, ErrLocked, ErrUnreadable, ErrSchemaTooNew, ErrInvalidKey, ErrClosed, ErrKEKUnavailable} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// OpenOrQuarantine is Open for rebuildable caches: when the file is unreadable
// (ErrUnreadable) or its keyset does not open (ErrCorrupt), the file is renamed
// to "<path>.corrupt-<UTC timestamp>" (kept, never deleted), the rename is
// logged at Warn, and a fresh store is opened. It returns the quarantined
// path, or "" when nothing was quarantined. ErrLocked, ErrSchemaTooNew,
// ErrKEKUnavailable (an outage is not damage: quarantining would lose the
// records) and every other error are returned as is.
func OpenOrQuarantine(cfg Config) (db *DB, quarantined string, err error) {
	db, err = Open(cfg)
	if err == nil || errors.Is(err, ErrKEKUnavailable) || !(errors.Is(err, ErrUnreadable) || errors.Is(err, ErrCorrupt)) {
		return db, "", err
	}
	reason := err
	_ = cfg.validate() // already passed inside Open; applies the defaults here
	quarantined, err = quarantine(cfg.Path, cfg.Clock.Now())
	if err != nil {
		return nil, "", fmt.Errorf("quarantine store: %w (after: %w)", err, reason)
	}
	cfg.Logger.Warn("store quarantined, starting empty", attrPath, cfg.Path,
		attrQuarantinedTo, quarantined, attrReason, reason.Error())
	db, err = Open(cfg)
	if err != nil {
		return nil, quarantined, err
	}
	return db, quarantined, nil
}

func quarantine(path string, now time.Time) (string, error) {
	base := path + ".corrupt-" + now.UTC().Format("20060102T150405Z")
	target := base
	for i := 1; ; i++ {
		if _, err := os.Lstat(target); errors.Is(err, fs.ErrNotExist) {
			break
		} else if err != nil {
			return "", err
		}
		target = fmt.Sprintf("%s-%d", base, i)
	}
	if err := os.Rename(path, target); err != nil {
		return "", err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return target, nil // renamed; durability of the rename is best effort
	}
	defer d.Close()
	_ = d.Sync()
	return target, nil
}

// NoSync reports whether commits skip fsync (Config.NoSync).
func (db *DB) NoSync() bool { return db.noSync }

// Sync flushes the file to disk (fdatasync). Commits of a store opened without NoSync are
// already durable; a NoSync store calls it where a commit must not be lost to a power cut
// (before the only other copy of its records is deleted, after a key rotation).
func (db *DB) Sync() error {
	release, err := db.handle()
	if err != nil {
		return err
	}
	defer release()
	if err := db.bdb.Sync(); err != nil {
		db.broken.Store(true) // the same distrust as after a failed commit's fsync
		return fmt.Errorf("store %s: sync: %v", db.path, err)
	}
	return nil
}

// Path returns the bbolt file path.
func (db *DB) Path() string { return db.path }

// Close closes the file and releases its lock. It is idempotent.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		db.closed.Store(true)
		db.handleMu.Lock()
		defer db.handleMu.Unlock()
		if db.bdb == nil { // a reopen failed: nothing is open
			return
		}
		if err := db.bdb.Close(); err != nil {
			db.closeErr = fmt.Errorf("close store: %v", err)
		}
	})
	return db.closeErr
}

// Update runs fn in one bbolt write transaction: all of fn's Puts and Deletes
// commit together, or none do if fn returns an error. fn must not call
// methods of db, and tx must not be used after fn returns.
func (db *DB) Update(fn func(tx *Tx) error) error {
	return db.run(true, fn)
}

// View runs fn in a read-only transaction that sees one consistent snapshot.
// The same rules as for Update apply.
func (db *DB) View(fn func(tx *Tx) error) error {
	return db.run(false, fn)
}

// handle returns with the bbolt handle held for use (reopened first after a failed commit),
// until release is called; ErrClosed when the store is closed, also while this call waited.
func (db *DB) handle() (release func(), err error) {
	if db.closed.Load() {
		return nil, ErrClosed
	}
	if db.broken.Load() {
		if err := db.reopen(); err != nil {
			return nil, err
		}
	}
	db.handleMu.RLock()
	if db.bdb == nil {
		db.handleMu.RUnlock()
		return nil, ErrClosed // closed while this call waited for the handle
	}
	return db.handleMu.RUnlock, nil
}

func (db *DB) run(writable bool, fn func(tx *Tx) error) (err error) {
	release, err := db.handle()
	if err != nil {
		return err
	}
	defer release()
	// A page pointer into the mmap beyond the end of a damaged file faults
	// (SIGBUS). Only such memory faults become ErrCorrupt (bbolt has rolled
	// the transaction back by then); any other panic, including one from
	// fn, propagates.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if _, fault := r.(interface{ Addr() uintptr }); !fault {
				panic(r)
			}
			err = fmt.Errorf("store %s: memory fault reading the file: %w", db.path, ErrCorrupt)
		}
	}()
	var fnErr error
	body := func(btx *bolt.Tx) error {
		tx := &Tx{btx: btx, kr: db.kr.Load(), writable: writable}
		defer func() { tx.done = true }()
		if fnErr = fn(tx); fnErr != nil {
			return fnErr
		}
		if writable && db.failCommit != nil {
			return db.failCommit() // not fn's error: reported as a failed commit
		}
		return nil
	}
	if writable {
		start := db.clock.Now()
		err = db.bdb.Update(body)
		if err != nil && fnErr == nil {
			db.broken.Store(true)
		}
		if db.onCommit != nil && fnErr == nil {
			var cerr error
			if err != nil {
				cerr = mapBoltErr(err)
			}
			db.onCommit(db.clock.Since(start), cerr)
		}
	} else {
		err = db.bdb.View(body)
	}
	if errors.Is(err, berrors.ErrInvalidMapping) {
		db.broken.Store(true)
	}
	switch {
	case err == nil:
		return nil
	case fnErr != nil:
		return fnErr // fn's own error, unchanged so callers can match it
	default:
		return mapBoltErr(err)
	}
}

// reopen replaces a broken handle (see DB.broken): it waits for the transactions still on
// it, closes it, drops the file's pages from the page cache so what is read next is what the
// disk holds, and opens the file again. Until it succeeds every call fails with its error.
func (db *DB) reopen() error {
	db.handleMu.Lock()
	defer db.handleMu.Unlock()
	if !db.broken.Load() {
		return nil // another call reopened it
	}
	if db.closed.Load() {
		return ErrClosed
	}
	if db.bdb != nil {
		if err := db.bdb.Close(); err != nil {
			db.log.Warn("store close after a failed commit", attrPath, db.path, "err", err)
		}
		db.bdb = nil
	}
	// bbolt would create a missing file: an empty store in place of the real one.
	if _, err := os.Stat(db.path); err != nil {
		return fmt.Errorf("store %s: reopen after a failed commit: %w", db.path, err)
	}
	dropPageCache(db.path)
	bdb, err := openBolt(db.path, db.lockTimeout, db.noSync)
	if err != nil {
		return fmt.Errorf("store %s: reopen after a failed commit: %w", db.path, err)
	}
	db.bdb = bdb
	db.broken.Store(false)
	db.log.Warn("store reopened after a failed commit", attrPath, db.path)
	return nil
}

// mapBoltErr hides bbolt's error values behind ours.
func mapBoltErr(err error) error {
	switch {
	case errors.Is(err, berrors.ErrDatabaseNotOpen):
		return ErrClosed
	default:
		return fmt.Errorf("store transaction: %v", err)
	}
}

// Get returns the decrypted value of bucket/key: ErrNotFound if absent,
// ErrCorrupt if it does not authenticate.
func (db *DB) Get(bucket, key string) (value []byte, err error) {
	err = db.View(func(tx *Tx) error {
		value, err = tx.Get(bucket, key)
		return err
	})
	return value, err
}

// Put seals value and stores it under bucket/key (creating the bucket) in its
// own durable transaction.
func (db *DB) Put(bucket, key string, value []byte) error {
	return db.Update(func(tx *Tx) error { return tx.Put(bucket, key, value) })
}

// Delete removes bucket/key; deleting a missing key is not an error.
func (db *DB) Delete(bucket, key string) error {
	return db.Update(func(tx *Tx) error { return tx.Delete(bucket, key) })
}

// List returns every record of bucket sorted by key. A missing bucket is an
// empty list; any record that does not authenticate fails the whole call with
// ErrCorrupt.
func (db *DB) List(bucket string) (records []Record, err error) {
	err = db.View(func(tx *Tx) error {
		records, err = tx.List(bucket)
		return err
	})
	return records, err
}

// Check runs bbolt's consistency check over the whole file. Problems are
// reported as ErrCorrupt.
func (db *DB) Check() (err error) {
	if db.closed.Load() {
		return ErrClosed
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("check store %s: bbolt failed walking the file: %w", db.path, ErrCorrupt)
		}
	}()
	release, err := db.handle()
	if err != nil {
		return err
	}
	defer release()
	var problems []error
	err = db.bdb.View(func(tx *bolt.Tx) error {
		for e := range tx.Check() {
			problems = append(problems, e)
		}
		return nil
	})
	if err != nil {
		return mapBoltErr(err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("check store %s: %d problems, first: %v: %w", db.path, len(problems), problems[0], ErrCorrupt)
	}
	return nil
}
