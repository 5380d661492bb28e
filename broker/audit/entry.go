package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ZeroHash is the Prev of the first entry ever written: 64 hex zeros.
var ZeroHash = strings.Repeat("0", 64)

// Entry is one record of the hash-chained Log. Exactly one of Event and Checkpoint is set.
type Entry struct {
	// Seq numbers entries from 1 without gaps.
	Seq uint64 `json:"seq"`
	// Time is when the event happened (UTC).
	Time time.Time `json:"time"`
	// Event is the audited fact.
	Event *Event `json:"event,omitempty"`
	// Checkpoint records a retention cut: the entries before it were dropped.
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
	// Prev is the hex SHA-256 of the previous entry (ZeroHash for entry 1).
	Prev string `json:"prev"`
	// Hash is the hex SHA-256 of this entry's canonical form (every field above).
	Hash string `json:"hash"`
}

// Checkpoint is written when retention drops the oldest entries. It is itself a chained entry,
// so it cannot be altered without breaking the chain, and it lets Verify check that the first
// remaining entry follows exactly the last dropped one.
type Checkpoint struct {
	// DroppedThrough is the Seq of the last dropped entry.
	DroppedThrough uint64 `json:"droppedThrough"`
	// DroppedHash is the Hash of the last dropped entry: the Prev of entry DroppedThrough+1.
	DroppedHash string `json:"droppedHash"`
	// Dropped is how many entries this cut removed.
	Dropped uint64 `json:"dropped"`
}

// canonical is the hashed form: every field but Hash, in a fixed order, time in UTC.
type canonical struct {
	Seq        uint64      `json:"seq"`
	Time       string      `json:"time"`
	Event      *Event      `json:"event,omitempty"`
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
	Prev       string      `json:"prev"`
}

// ComputeHash returns the hex SHA-256 of e's canonical form, ignoring e.Hash.
func ComputeHash(e *Entry) string {
	b, err := json.Marshal(canonical{
		Seq: e.Seq, Time: e.Time.UTC().Format(time.RFC3339Nano),
		Event: e.Event, Checkpoint: e.Checkpoint, Prev: e.Prev,
	})
	if err != nil {
		// Only strings, integers and a time: cannot fail.
		panic(fmt.Sprintf("audit: encode entry: %v", err))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// seal sets Time to UTC without a monotonic reading and fills Hash.
func (e *Entry) seal() {
	e.Time = e.Time.UTC().Round(0)
	e.Hash = ComputeHash(e)
}

// entryKey is the store key of entry seq: zero-padded so that key order is sequence order.
func entryKey(seq uint64) string { return fmt.Sprintf("e%020d", seq) }

// parseEntryKey returns the seq of an entry key.
func parseEntryKey(k string) (uint64, bool) {
	if len(k) != 21 || k[0] != 'e' {
		return 0, false
	}
	n, err := strconv.ParseUint(k[1:], 10, 64)
	if err != nil || n == 0 {
		return 0, false
	}
	return n, true
}

// Head is the last entry's sequence number and hash. The Log stores it with every batch so
// that Verify notices entries removed from the end; operators can also record it elsewhere.
type Head struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// String renders the head as SEQ:HASH.
func (h Head) String() string { return fmt.Sprintf("%d:%s", h.Seq, h.Hash) }
