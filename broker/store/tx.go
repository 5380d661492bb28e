package store

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"

	"github.com/keywarden/keywarden/crypto"
)

// Tx is a transaction passed to DB.Update and DB.View. Values are sealed and
// opened exactly as by the DB methods. A Tx is not safe for concurrent use and
// is invalid once the function it was passed to returns.
type Tx struct {
	btx      *bolt.Tx
	kr       *crypto.Keyring
	writable bool
	done     bool
}

var errTxDone = errors.New("transaction used after its function returned")

func validName(bucket, key string, checkKey bool) error {
	switch {
	case bucket == "":
		return fmt.Errorf("empty bucket name: %w", ErrInvalidKey)
	case len(bucket) > MaxBucketLen:
		return fmt.Errorf("bucket name longer than %d bytes: %w", MaxBucketLen, ErrInvalidKey)
	case bytes.IndexByte([]byte(bucket), 0) >= 0:
		return fmt.Errorf("bucket name contains NUL: %w", ErrInvalidKey)
	case bytes.IndexByte([]byte(bucket), '/') >= 0:
		// '/' separates bucket from key in the associated data.
		return fmt.Errorf("bucket name %q contains '/': %w", bucket, ErrInvalidKey)
	case bucket == MetaBucket:
		return fmt.Errorf("bucket name %q is reserved: %w", bucket, ErrInvalidKey)
	}
	if !checkKey {
		return nil
	}
	switch {
	case key == "":
		return fmt.Errorf("empty key in bucket %q: %w", bucket, ErrInvalidKey)
	case len(key) > MaxKeyLen:
		return fmt.Errorf("key in bucket %q longer than %d bytes: %w", bucket, MaxKeyLen, ErrInvalidKey)
	case bytes.IndexByte([]byte(key), 0) >= 0:
		return fmt.Errorf("key in bucket %q contains NUL: %w", bucket, ErrInvalidKey)
	}
	return nil
}

// associatedData binds a ciphertext to its schema, bucket and key.
func associatedData(bucket, key string) []byte {
	ad := make([]byte, 0, 24+len(bucket)+len(key))
	ad = append(ad, "keywarden/store/v"...)
	ad = strconv.AppendInt(ad, SchemaVersion, 10)
	ad = append(ad, '/')
	ad = append(ad, bucket...)
	ad = append(ad, '/')
	ad = append(ad, key...)
	return ad
}

// Get returns the decrypted value of bucket/key.
func (tx *Tx) Get(bucket, key string) ([]byte, error) {
	if tx.done {
		return nil, errTxDone
	}
	if err := validName(bucket, key, true); err != nil {
		return nil, fmt.Errorf("get: %w", err)
	}
	b := tx.btx.Bucket([]byte(bucket))
	if b == nil {
		return nil, fmt.Errorf("get %s/%s: %w", bucket, key, ErrNotFound)
	}
	ct := b.Get([]byte(key))
	if ct == nil {
		return nil, fmt.Errorf("get %s/%s: %w", bucket, key, ErrNotFound)
	}
	return tx.open(bucket, key, ct)
}

// open decrypts ct, which points into bbolt's mmap; the plaintext Tink returns
// is a fresh allocation, so nothing returned aliases the file.
func (tx *Tx) open(bucket, key string, ct []byte) ([]byte, error) {
	pt, err := tx.kr.Open(ct, associatedData(bucket, key))
	if err != nil {
		return nil, fmt.Errorf("record %s/%s does not authenticate: %w", bucket, key, ErrCorrupt)
	}
	if pt == nil {
		pt = []byte{}
	}
	return pt, nil
}

// Put seals value and stores it under bucket/key, creating the bucket.
func (tx *Tx) Put(bucket, key string, value []byte) error {
	if tx.done {
		return errTxDone
	}
	if err := validName(bucket, key, true); err != nil {
		return fmt.Errorf("put: %w", err)
	}
	if !tx.writable {
		return fmt.Errorf("put %s/%s: read-only transaction", bucket, key)
	}
	ct, err := tx.kr.Seal(value, associatedData(bucket, key))
	if err != nil {
		return fmt.Errorf("put %s/%s: %w", bucket, key, err)
	}
	b, err := tx.btx.CreateBucketIfNotExists([]byte(bucket))
	if err != nil {
		return fmt.Errorf("put %s/%s: create bucket: %v", bucket, key, err)
	}
	// bbolt keeps references to key and value until commit: both are fresh.
	if err := b.Put([]byte(key), ct); err != nil {
		return fmt.Errorf("put %s/%s: %v", bucket, key, err)
	}
	return nil
}

// Delete removes bucket/key. A missing bucket or key is not an error.
func (tx *Tx) Delete(bucket, key string) error {
	if tx.done {
		return errTxDone
	}
	if err := validName(bucket, key, true); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	if !tx.writable {
		return fmt.Errorf("delete %s/%s: read-only transaction", bucket, key)
	}
	b := tx.btx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	if err := b.Delete([]byte(key)); err != nil {
		return fmt.Errorf("delete %s/%s: %v", bucket, key, err)
	}
	return nil
}

// List returns every record of bucket, sorted by key.
func (tx *Tx) List(bucket string) ([]Record, error) {
	if tx.done {
		return nil, errTxDone
	}
	if err := validName(bucket, "", false); err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	b := tx.btx.Bucket([]byte(bucket))
	if b == nil {
		return nil, nil
	}
	var out []Record
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v == nil {
			continue // nested bucket: this package never creates one
		}
		key := string(k) // copies out of the mmap
		pt, err := tx.open(bucket, key, v)
		if err != nil {
			return nil, fmt.Errorf("list: %w", err)
		}
		out = append(out, Record{Key: key, Value: pt})
	}
	return out, nil
}

// Keys returns the keys of bucket, sorted, without opening any value: a caller that must
// survive one damaged record (a cache it rebuilds) Gets each key and skips the one that fails,
// where List fails as a whole.
func (tx *Tx) Keys(bucket string) ([]string, error) {
	if tx.done {
		return nil, errTxDone
	}
	if err := validName(bucket, "", false); err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	b := tx.btx.Bucket([]byte(bucket))
	if b == nil {
		return nil, nil
	}
	var out []string
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v != nil {
			out = append(out, string(k)) // copies out of the mmap
		}
	}
	return out, nil
}
