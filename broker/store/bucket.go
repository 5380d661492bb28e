package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Bucket is one bucket of a DB whose records are values of type T: encoded as JSON (the one
// codec of every bucket), then sealed like every record. A Bucket may be narrowed to the keys
// under a prefix, so one bucket can hold records of several types (one Bucket per prefix).
// Consumers hold a Bucket rather than the DB; the zero Bucket has no DB, and every method
// reports ErrClosed.
type Bucket[T any] struct {
	db     *DB
	name   string
	prefix string
}

// NewBucket returns the bucket name of db holding values of type T. The name is checked at
// the first use.
func NewBucket[T any](db *DB, name string) Bucket[T] { return Bucket[T]{db: db, name: name} }

// Prefix returns the bucket narrowed to the keys under p: its methods take and return keys
// without p, and List skips every other key.
func (b Bucket[T]) Prefix(p string) Bucket[T] { b.prefix += p; return b }

// Item is one record of a List: its key and value, or Err when the record authenticated but
// does not decode as T (the caller decides: drop it with a log line, or report it).
type Item[T any] struct {
	Key   string
	Value T
	Err   error
}

// ErrDecode is matched by the error of a record that does not decode as the bucket's type.
var ErrDecode = errors.New("record does not decode")

// Get returns the value under key: an error matching ErrNotFound when absent, ErrCorrupt when
// it does not authenticate, ErrDecode when it does not decode.
func (b Bucket[T]) Get(key string) (v T, err error) {
	err = b.View(func(tx TxBucket[T]) error {
		v, err = tx.Get(key)
		return err
	})
	return v, err
}

// Put stores v under key in its own durable transaction.
func (b Bucket[T]) Put(key string, v T) error {
	return b.Update(func(tx TxBucket[T]) error { return tx.Put(key, v) })
}

// Delete removes key; a missing key is not an error.
func (b Bucket[T]) Delete(key string) error {
	return b.Update(func(tx TxBucket[T]) error { return tx.Delete(key) })
}

// List returns the bucket's records sorted by key. A record that does not authenticate fails
// the whole call with ErrCorrupt; one that does not decode is an Item with Err set.
func (b Bucket[T]) List() (items []Item[T], err error) {
	err = b.View(func(tx TxBucket[T]) error {
		items, err = tx.List()
		return err
	})
	return items, err
}

// Keys returns the bucket's keys sorted, without opening their values (see Tx.Keys).
func (b Bucket[T]) Keys() (keys []string, err error) {
	err = b.View(func(tx TxBucket[T]) error {
		keys, err = tx.Keys()
		return err
	})
	return keys, err
}

// Update runs fn in one durable read-write transaction over the bucket.
func (b Bucket[T]) Update(fn func(tx TxBucket[T]) error) error {
	if b.db == nil {
		return ErrClosed
	}
	return b.db.Update(func(tx *Tx) error { return fn(b.in(tx)) })
}

// View runs fn in a read-only transaction over the bucket.
func (b Bucket[T]) View(fn func(tx TxBucket[T]) error) error {
	if b.db == nil {
		return ErrClosed
	}
	return b.db.View(func(tx *Tx) error { return fn(b.in(tx)) })
}

// in is the bucket inside tx.
func (b Bucket[T]) in(tx *Tx) TxBucket[T] { return TxBucket[T]{tx: tx, name: b.name, prefix: b.prefix} }

// TxBucket is a Bucket inside one transaction.
type TxBucket[T any] struct {
	tx     *Tx
	name   string
	prefix string
}

// Get is Bucket.Get inside the transaction.
func (b TxBucket[T]) Get(key string) (T, error) {
	var v T
	raw, err := b.tx.Get(b.name, b.prefix+key)
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, decodeError(b.name, b.prefix+key, err)
	}
	return v, nil
}

// Put is Bucket.Put inside the transaction. A json.RawMessage value is stored as it is, once
// checked to be valid JSON: marshalling it would only copy it again, compacted (the audit log
// writes every entry this way, and the copy was a third of its cost).
func (b TxBucket[T]) Put(key string, v T) error {
	if raw, ok := any(v).(json.RawMessage); ok {
		if !json.Valid(raw) {
			return fmt.Errorf("put %s/%s: encode: not valid JSON", b.name, b.prefix+key)
		}
		return b.tx.Put(b.name, b.prefix+key, raw)
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("put %s/%s: encode: %w", b.name, b.prefix+key, err)
	}
	return b.tx.Put(b.name, b.prefix+key, raw)
}

// Delete is Bucket.Delete inside the transaction.
func (b TxBucket[T]) Delete(key string) error { return b.tx.Delete(b.name, b.prefix+key) }

// Keys is Bucket.Keys inside the transaction.
func (b TxBucket[T]) Keys() ([]string, error) {
	keys, err := b.tx.Keys(b.name)
	if err != nil {
		return nil, err
	}
	out := keys[:0]
	for _, k := range keys {
		if k, ok := strings.CutPrefix(k, b.prefix); ok {
			out = append(out, k)
		}
	}
	return out, nil
}

// List is Bucket.List inside the transaction.
func (b TxBucket[T]) List() ([]Item[T], error) {
	recs, err := b.tx.List(b.name)
	if err != nil {
		return nil, err
	}
	items := make([]Item[T], 0, len(recs))
	for _, r := range recs {
		key, ok := strings.CutPrefix(r.Key, b.prefix)
		if !ok {
			continue
		}
		it := Item[T]{Key: key}
		if err := json.Unmarshal(r.Value, &it.Value); err != nil {
			it.Err = decodeError(b.name, r.Key, err)
		}
		items = append(items, it)
	}
	return items, nil
}

// decodeError names the record, never its content (a decode error may quote it).
func decodeError(bucket, key string, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	detail := "malformed"
	switch {
	case errors.As(err, &se):
		detail = fmt.Sprintf("not JSON at offset %d", se.Offset)
	case errors.As(err, &te):
		detail = fmt.Sprintf("field %q has the wrong type", te.Field)
	}
	return fmt.Errorf("record %s/%s: %w (%s)", bucket, key, ErrDecode, detail)
}
