package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tink-crypto/tink-go/v2/tink"
	bolt "go.etcd.io/bbolt"

	"github.com/keywarden/keywarden/crypto"
)

// DefaultResealBatch is how many records one re-seal transaction examines by default.
const DefaultResealBatch = 256

// metaRotationKey holds the progress of an unfinished DEK rotation (rotationState, JSON) in
// the meta bucket. It is written in the same transaction as the new keyset, updated in the
// transaction of every re-seal batch, and deleted in the transaction that prunes the old
// keys: the file always says truthfully how far the rotation got.
const metaRotationKey = "dekRotation"

// Log attribute keys of rotations.
const (
	attrResealed = "resealed"
	attrKeys     = "keys"
	attrWrapped  = "wrapped_by"
)

// rotationState is the progress of a re-seal. Records up to and including Bucket/Key (in
// bbolt's byte order) have been examined in committed transactions.
type rotationState struct {
	Bucket   string    `json:"bucket,omitempty"`
	Key      string    `json:"key,omitempty"`
	Resealed int64     `json:"resealed"`
	Started  time.Time `json:"started"`
}

// KeyStatus describes a store's DEK keyset and how far a rotation has got.
type KeyStatus struct {
	// PrimaryKeyID is the DEK key new records are sealed under.
	PrimaryKeyID uint32
	// KeyIDs are every DEK key in the keyset, the primary included.
	KeyIDs []uint32
	// WrappedBy names the KEK key the stored keyset is wrapped under (crypto.WrappingKeyOf).
	WrappedBy string
	// Records is the number of records in every bucket.
	Records int
	// Stale is the number of records sealed under a key other than the primary.
	Stale int
	// ResealPending is set while a DEK rotation has not finished: Reseal resumes it.
	ResealPending bool
	// Resealed counts the records re-sealed so far by the pending rotation.
	Resealed int64
	// Started is when the pending rotation began (zero when none is pending).
	Started time.Time
}

// RotateDEK adds a new primary key to the DEK keyset and persists the wrapped keyset, with a
// pending re-seal starting from the first record, before any record is sealed with it: a
// crash can never leave records under a key the file does not hold. Older records stay
// readable until Reseal has rewritten them and pruned the older keys.
func (db *DB) RotateDEK() error {
	db.rotateMu.Lock()
	defer db.rotateMu.Unlock()
	nk, wrapped, err := db.kr.Load().Rotated()
	if err != nil {
		return fmt.Errorf("rotate dek: %w", err)
	}
	state, err := json.Marshal(rotationState{Started: db.clock.Now().UTC()})
	if err != nil {
		return fmt.Errorf("rotate dek: encode state: %v", err)
	}
	err = db.Update(func(tx *Tx) error {
		meta := tx.btx.Bucket([]byte(MetaBucket))
		if meta == nil {
			return fmt.Errorf("rotate dek: no meta bucket: %w", ErrCorrupt)
		}
		if err := meta.Put([]byte(metaKeysetKey), wrapped); err != nil {
			return fmt.Errorf("rotate dek: %v", err)
		}
		// Restart the walk: records already re-sealed by an earlier, unfinished rotation
		// are under a key that is no longer the primary.
		if err := meta.Put([]byte(metaRotationKey), state); err != nil {
			return fmt.Errorf("rotate dek: %v", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := db.flushKeys(); err != nil {
		return fmt.Errorf("rotate dek: %w", err)
	}
	// Swapped only after commit; a writer that began before still seals with
	// the previous primary, which the new keyset also holds (Reseal catches it).
	db.kr.Store(nk)
	db.log.Info("store dek rotated", attrPath, db.path, attrKeyID, nk.PrimaryKeyID())
	return nil
}

// Reseal re-encrypts, under the current primary key, every record sealed under an older key,
// then deletes the older keys from the keyset. It walks the buckets in transactions of at
// most Config.ResealBatch records each, recording in every batch's transaction how far it
// got, so it resumes there after a crash or an error. Writers are never blocked for more
// than one batch.
//
// The older keys are pruned only in a transaction that first checks, under bbolt's writer
// lock, that no record in the file is sealed under any of them; if one is (written by a
// transaction that began before the last RotateDEK switched keys), the walk starts again. So
// no crash, failed commit or concurrent writer can leave a record under a key the file no
// longer holds. Reseal also prunes a keyset with older keys and no pending rotation.
//
// It returns ctx's error when ctx ends between batches, and ErrCorrupt naming the record when
// a record under an older key does not authenticate (delete or restore it, then run Reseal
// again): such a record is never silently dropped.
func (db *DB) Reseal(ctx context.Context) error {
	db.resealMu.Lock()
	defer db.resealMu.Unlock()
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("reseal %s: %w", db.path, err)
		}
		done, err := db.resealBatch()
		if err != nil {
			return err
		}
		if !done {
			continue
		}
		finished, err := db.finishReseal()
		if err != nil || finished {
			return err
		}
	}
}

// loadRotation reads the pending rotation; ok is false when none is pending.
func loadRotation(meta *bolt.Bucket) (st rotationState, ok bool, err error) {
	raw := meta.Get([]byte(metaRotationKey))
	if raw == nil {
		return rotationState{}, false, nil
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return rotationState{}, false, fmt.Errorf("bad rotation state in meta bucket: %w", ErrCorrupt)
	}
	return st, true, nil
}

func putRotation(meta *bolt.Bucket, st rotationState) error {
	raw, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode rotation state: %v", err)
	}
	if err := meta.Put([]byte(metaRotationKey), raw); err != nil {
		return fmt.Errorf("write rotation state: %v", err)
	}
	return nil
}

type resealItem struct {
	bucket, key []byte
	ct          []byte
}

// resealBatch re-seals the next batch of records in one transaction; done is true when the
// walk has reached the end of the file.
func (db *DB) resealBatch() (done bool, err error) {
	err = db.Update(func(tx *Tx) error {
		meta := tx.btx.Bucket([]byte(MetaBucket))
		if meta == nil {
			return fmt.Errorf("reseal %s: no meta bucket: %w", db.path, ErrCorrupt)
		}
		st, ok, err := loadRotation(meta)
		if err != nil {
			return fmt.Errorf("reseal %s: %w", db.path, err)
		}
		if !ok {
			st = rotationState{Started: db.clock.Now().UTC()}
		}
		var items []resealItem
		examined := 0
		lastBucket, lastKey := st.Bucket, st.Key
		done = true
		root := tx.btx.Cursor()
		var name []byte
		if st.Bucket == "" {
			name, _ = root.First()
		} else {
			name, _ = root.Seek([]byte(st.Bucket))
		}
	walk:
		for ; name != nil; name, _ = root.Next() {
			if string(name) == MetaBucket {
				continue
			}
			b := tx.btx.Bucket(name)
			if b == nil {
				continue
			}
			c := b.Cursor()
			var k, v []byte
			if string(name) == st.Bucket && st.Key != "" {
				if k, v = c.Seek([]byte(st.Key)); k != nil && string(k) == st.Key {
					k, v = c.Next()
				}
			} else {
				k, v = c.First()
			}
			for ; k != nil; k, v = c.Next() {
				if examined == db.resealBatchSize {
					done = false
					break walk
				}
				examined++
				lastBucket, lastKey = string(name), string(k)
				if v == nil || !tx.kr.NeedsReseal(v) {
					continue
				}
				pt, err := tx.open(string(name), string(k), v)
				if err != nil {
					return fmt.Errorf("reseal %s: %w; delete or restore that record, then rotate again", db.path, err)
				}
				ct, err := tx.kr.Seal(pt, associatedData(string(name), string(k)))
				if err != nil {
					return fmt.Errorf("reseal %s: %s/%s: %w", db.path, name, k, err)
				}
				items = append(items, resealItem{bucket: bytes.Clone(name), key: bytes.Clone(k), ct: ct})
			}
		}
		// Written after the walk: bbolt cursors must not see the buckets change under them.
		for _, it := range items {
			if err := tx.btx.Bucket(it.bucket).Put(it.key, it.ct); err != nil {
				return fmt.Errorf("reseal %s: %s/%s: %v", db.path, it.bucket, it.key, err)
			}
		}
		st.Bucket, st.Key = lastBucket, lastKey
		st.Resealed += int64(len(items))
		return putRotation(meta, st)
	})
	return done, err
}

// finishReseal prunes the older keys if no record is sealed under them; otherwise it sends
// the walk back to the start. The check and the prune are one write transaction, and
// rotateMu keeps RotateDEK and RewrapKeyset from switching keyrings in between.
func (db *DB) finishReseal() (finished bool, err error) {
	db.rotateMu.Lock()
	defer db.rotateMu.Unlock()
	kr := db.kr.Load()
	var nk *crypto.Keyring
	var resealed int64
	err = db.Update(func(tx *Tx) error {
		meta := tx.btx.Bucket([]byte(MetaBucket))
		if meta == nil {
			return fmt.Errorf("reseal %s: no meta bucket: %w", db.path, ErrCorrupt)
		}
		st, _, err := loadRotation(meta)
		if err != nil {
			return fmt.Errorf("reseal %s: %w", db.path, err)
		}
		resealed = st.Resealed
		if n := countStale(tx.btx, kr); n > 0 {
			st.Bucket, st.Key = "", ""
			return putRotation(meta, st)
		}
		if len(kr.KeyIDs()) > 1 {
			var wrapped []byte
			nk, wrapped, err = kr.Pruned()
			if err != nil {
				return fmt.Errorf("reseal %s: %w", db.path, err)
			}
			if err := meta.Put([]byte(metaKeysetKey), wrapped); err != nil {
				return fmt.Errorf("reseal %s: write keyset: %v", db.path, err)
			}
		}
		if err := meta.Delete([]byte(metaRotationKey)); err != nil {
			return fmt.Errorf("reseal %s: clear rotation state: %v", db.path, err)
		}
		finished = true
		return nil
	})
	if err != nil {
		return false, err
	}
	if finished {
		if err := db.flushKeys(); err != nil {
			return false, fmt.Errorf("reseal %s: %w", db.path, err)
		}
	}
	if nk != nil {
		db.kr.Store(nk)
	}
	if finished {
		db.log.Info("store dek rotation finished", attrPath, db.path, attrKeyID, kr.PrimaryKeyID(), attrResealed, resealed)
	}
	return finished, nil
}

// countStale counts the records of every bucket not sealed under kr's primary key. It reads
// only the key id prefix of each value.
func countStale(btx *bolt.Tx, kr *crypto.Keyring) (stale int) {
	_ = btx.ForEach(func(name []byte, b *bolt.Bucket) error {
		if string(name) == MetaBucket {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			if v != nil && kr.NeedsReseal(v) {
				stale++
			}
			return nil
		})
	})
	return stale
}

// RewrapKeyset encrypts the DEK keyset with kek and persists it; from then on the store is
// opened with kek. Passing the current KEK again re-encrypts under its current primary key
// (for Vault Transit: the latest key version). Records are not touched.
func (db *DB) RewrapKeyset(kek tink.AEAD) error {
	db.rotateMu.Lock()
	defer db.rotateMu.Unlock()
	nk, wrapped, err := db.kr.Load().Rewrapped(kek)
	if err != nil {
		return fmt.Errorf("rewrap keyset %s: %w", db.path, kekErr(err))
	}
	err = db.Update(func(tx *Tx) error {
		meta := tx.btx.Bucket([]byte(MetaBucket))
		if meta == nil {
			return fmt.Errorf("rewrap keyset: no meta bucket: %w", ErrCorrupt)
		}
		if err := meta.Put([]byte(metaKeysetKey), wrapped); err != nil {
			return fmt.Errorf("rewrap keyset: %v", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := db.flushKeys(); err != nil {
		return fmt.Errorf("rewrap keyset: %w", err)
	}
	db.kr.Store(nk)
	db.log.Info("store keyset re-wrapped", attrPath, db.path, attrWrapped, crypto.WrappingKeyOf(wrapped))
	return nil
}

// kekErr adds ErrKEKUnavailable to an error caused by the KEK not answering.
func kekErr(err error) error {
	if errors.Is(err, crypto.ErrKEKUnavailable) {
		return fmt.Errorf("%w (%w)", ErrKEKUnavailable, err)
	}
	return err
}

// KeyStatus reports the keyset and the progress of a pending rotation. It reads every
// record's key id (not its value) in one read transaction.
func (db *DB) KeyStatus() (ks KeyStatus, err error) {
	err = db.View(func(tx *Tx) error {
		meta := tx.btx.Bucket([]byte(MetaBucket))
		if meta == nil {
			return fmt.Errorf("key status %s: no meta bucket: %w", db.path, ErrCorrupt)
		}
		ks.PrimaryKeyID, ks.KeyIDs = tx.kr.PrimaryKeyID(), tx.kr.KeyIDs()
		ks.WrappedBy = crypto.WrappingKeyOf(meta.Get([]byte(metaKeysetKey)))
		st, ok, err := loadRotation(meta)
		if err != nil {
			return fmt.Errorf("key status %s: %w", db.path, err)
		}
		ks.ResealPending, ks.Resealed, ks.Started = ok, st.Resealed, st.Started
		return tx.btx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if string(name) == MetaBucket {
				return nil
			}
			return b.ForEach(func(_, v []byte) error {
				if v == nil {
					return nil
				}
				ks.Records++
				if tx.kr.NeedsReseal(v) {
					ks.Stale++
				}
				return nil
			})
		})
	})
	return ks, err
}

// flushKeys makes a NoSync store's last commit durable when it changed the keyset: the KEK
// rotation retires the old KEK once every store reports its keyset re-wrapped, and a keyset a
// power cut took back to the old wrapping would then open under no KEK at all.
func (db *DB) flushKeys() error {
	if !db.noSync {
		return nil
	}
	return db.Sync()
}
