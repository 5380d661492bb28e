package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/keywarden/keywarden/broker/store"
)

// ProblemKind classifies what Verify found.
type ProblemKind string

// Problem kinds.
const (
	// ProblemModified: an entry's content does not match its hash, does not parse, or does not
	// match the hash its successor (or the head record) chains to.
	ProblemModified ProblemKind = "modified"
	// ProblemRemoved: entries are missing (a gap, the start without a checkpoint, or the end).
	ProblemRemoved ProblemKind = "removed"
	// ProblemReordered: an entry is stored under another entry's position.
	ProblemReordered ProblemKind = "reordered"
	// ProblemInserted: an entry or record that the log did not write.
	ProblemInserted ProblemKind = "inserted"
	// ProblemCheckpoint: a checkpoint that does not account for the dropped entries.
	ProblemCheckpoint ProblemKind = "checkpoint"
)

// Problem is one finding of Verify.
type Problem struct {
	// Seq is the entry the problem is about; 0 for the head record or a foreign record.
	Seq uint64 `json:"seq"`
	// Kind classifies the problem.
	Kind ProblemKind `json:"kind"`
	// Detail says what was found.
	Detail string `json:"detail"`
}

func (p Problem) String() string {
	if p.Seq == 0 {
		return fmt.Sprintf("%s: %s", p.Kind, p.Detail)
	}
	return fmt.Sprintf("entry %d %s: %s", p.Seq, p.Kind, p.Detail)
}

// maxProblems bounds a VerifyError: the first problems are the ones that matter.
const maxProblems = 20

// VerifyError lists what Verify found, ordered by entry. It matches ErrTampered.
type VerifyError struct {
	Problems []Problem
	// More is how many further problems were not listed.
	More int
}

// Error names the first problem and counts the rest.
func (e *VerifyError) Error() string {
	var b strings.Builder
	b.WriteString("audit log verification failed: ")
	b.WriteString(e.Problems[0].String())
	if n := len(e.Problems) - 1 + e.More; n > 0 {
		fmt.Fprintf(&b, " (and %d more problems)", n)
	}
	return b.String()
}

// Is makes a VerifyError match ErrTampered.
func (e *VerifyError) Is(target error) bool { return target == ErrTampered }

// Report summarises a log that verified.
type Report struct {
	// Entries is how many entries were checked.
	Entries int `json:"entries"`
	// First and Last are the sequence numbers of the oldest and newest entries.
	First uint64 `json:"first"`
	Last  uint64 `json:"last"`
	// Head is the last entry's seq and hash; record it elsewhere to anchor the log.
	Head Head `json:"head"`
	// Checkpoints is how many checkpoint entries the kept part holds.
	Checkpoints int `json:"checkpoints"`
	// DroppedThrough is the last entry removed by retention (0: none).
	DroppedThrough uint64 `json:"droppedThrough"`
}

// item is one entry record as read: its position (from the store key or the line number of
// an export) and its decoded content.
type item struct {
	pos       uint64
	e         Entry
	bad       bool
	misplaced bool
}

type checker struct {
	probs []Problem
}

func (c *checker) add(seq uint64, kind ProblemKind, format string, args ...any) {
	c.probs = append(c.probs, Problem{Seq: seq, Kind: kind, Detail: fmt.Sprintf(format, args...)})
}

func (c *checker) result(r Report) (Report, error) {
	if len(c.probs) == 0 {
		return r, nil
	}
	slices.SortStableFunc(c.probs, func(a, b Problem) int {
		switch {
		case a.Seq < b.Seq:
			return -1
		case a.Seq > b.Seq:
			return 1
		}
		return 0
	})
	ve := &VerifyError{Problems: c.probs}
	if len(ve.Problems) > maxProblems {
		ve.More = len(ve.Problems) - maxProblems
		ve.Problems = ve.Problems[:maxProblems]
	}
	return Report{}, ve
}

// verifyRecords checks the records of the audit bucket; mem is the head this process last
// wrote (nil when none is known).
func verifyRecords(recs []store.Item[json.RawMessage], mem *Head) (Report, error) {
	c, _, rep := checkRecords(recs, mem)
	return c.result(rep)
}

// checkRecords is verifyRecords up to the result; the items are in position order.
func checkRecords(recs []store.Item[json.RawMessage], mem *Head) (*checker, []item, Report) {
	c := &checker{}
	var (
		items   []item
		head    *Head
		badHead bool
	)
	for _, r := range recs {
		if r.Key == headKey {
			var h Head
			if err := json.Unmarshal(r.Value, &h); err != nil {
				badHead = true
				continue
			}
			head = &h
			continue
		}
		seq, ok := parseEntryKey(r.Key)
		if !ok {
			c.add(0, ProblemInserted, "unexpected record %s in the audit bucket", shortQuote(r.Key))
			continue
		}
		it := item{pos: seq}
		if err := decodeEntry(r.Value, &it.e); err != nil {
			it.bad = true
		}
		items = append(items, it)
	}
	rep := c.chain(items)
	switch {
	case badHead:
		c.add(0, ProblemModified, "the head record does not parse")
	case head == nil && len(items) > 0:
		c.add(items[len(items)-1].pos, ProblemRemoved, "the head record is missing, so entries may have been removed from the end")
	case head != nil:
		c.head(items, *head, "the head record")
		if mem != nil && mem.Seq > 0 && (mem.Seq != head.Seq || mem.Hash != head.Hash) {
			c.head(items, *mem, "the running daemon's last write")
		}
	}
	if head != nil {
		rep.Head = *head
	}
	return c, items, rep
}

// head compares the last item with a recorded head.
func (c *checker) head(items []item, h Head, what string) {
	if len(items) == 0 {
		if h.Seq > 0 {
			c.add(1, ProblemRemoved, "the log is empty but %s is entry %d: entries were removed", what, h.Seq)
		}
		return
	}
	last := items[len(items)-1]
	switch {
	case h.Seq > last.pos:
		c.add(last.pos+1, ProblemRemoved, "entries %d..%d were removed from the end (%s is entry %d)", last.pos+1, h.Seq, what, h.Seq)
	case h.Seq < last.pos:
		c.add(h.Seq+1, ProblemInserted, "entries %d..%d were added after %s (entry %d)", h.Seq+1, last.pos, what, h.Seq)
	case !last.bad && h.Hash != last.e.Hash:
		c.add(last.pos, ProblemModified, "the last entry was replaced: its hash differs from %s", what)
	}
}

// chain checks every item and the links between them; items are in position order.
func (c *checker) chain(items []item) Report {
	rep := Report{Entries: len(items)}
	if len(items) == 0 {
		return rep
	}
	rep.First, rep.Last = items[0].pos, items[len(items)-1].pos
	rep.Head = Head{Seq: items[len(items)-1].e.Seq, Hash: items[len(items)-1].e.Hash}
	var lastCP *item
	for i := range items {
		it := &items[i]
		e := &it.e
		switch {
		case it.bad:
			c.add(it.pos, ProblemModified, "the entry does not parse")
			continue
		case e.Seq != it.pos:
			c.add(it.pos, ProblemReordered, "position %d holds entry %d: entries were moved or reordered", it.pos, e.Seq)
			it.misplaced = true
		case (e.Event == nil) == (e.Checkpoint == nil):
			c.add(it.pos, ProblemModified, "an entry holds exactly one of event and checkpoint")
		case ComputeHash(e) != e.Hash:
			c.add(it.pos, ProblemModified, "its content does not match its hash")
		}
		if e.Checkpoint != nil {
			rep.Checkpoints++
			lastCP = it
			if e.Checkpoint.DroppedThrough >= e.Seq {
				c.add(it.pos, ProblemCheckpoint, "a checkpoint cannot account for entries after itself (claims entries through %d)", e.Checkpoint.DroppedThrough)
			}
		}
		if i == 0 {
			continue
		}
		p := &items[i-1]
		switch {
		case it.pos != p.pos+1:
			c.add(p.pos+1, ProblemRemoved, "entries %d..%d are missing", p.pos+1, it.pos-1)
		case it.misplaced && e.Seq+1 == it.pos && i >= 2 && !items[i-2].bad && e.Prev == items[i-2].e.Hash && !p.misplaced:
			// Everything from here moved up by one to make room for p.
			c.add(p.pos, ProblemInserted, "entry %d was inserted: the original entry %d now sits at position %d", p.pos, e.Seq, it.pos)
		case p.bad, p.misplaced, it.misplaced:
			// Already reported; its links say nothing more.
		case e.Prev != p.e.Hash:
			if i >= 2 && !items[i-2].bad && e.Prev == items[i-2].e.Hash {
				c.add(p.pos, ProblemInserted, "entry %d was inserted: entry %d chains to entry %d", p.pos, it.pos, items[i-2].pos)
			} else {
				c.add(p.pos, ProblemModified, "entry %d was modified or replaced: entry %d chains to a different hash", p.pos, it.pos)
			}
		}
	}
	first := &items[0]
	switch {
	case first.bad:
	case first.pos == 1:
		if first.e.Prev != ZeroHash {
			c.add(1, ProblemModified, "the first entry must chain to the zero hash")
		}
	case lastCP == nil:
		c.add(1, ProblemRemoved, "entries 1..%d are missing and no checkpoint accounts for them", first.pos-1)
	default:
		cp := lastCP.e.Checkpoint
		rep.DroppedThrough = cp.DroppedThrough
		switch {
		case cp.DroppedThrough+1 < first.pos:
			c.add(cp.DroppedThrough+1, ProblemRemoved, "entries %d..%d were removed from the start: the latest checkpoint (entry %d) accounts only for entries through %d",
				cp.DroppedThrough+1, first.pos-1, lastCP.pos, cp.DroppedThrough)
		case cp.DroppedThrough+1 > first.pos:
			c.add(lastCP.pos, ProblemCheckpoint, "the checkpoint claims entries through %d were dropped, but entry %d is present", cp.DroppedThrough, first.pos)
		case cp.DroppedHash != first.e.Prev:
			c.add(lastCP.pos, ProblemCheckpoint, "the checkpoint's hash of the last dropped entry does not match what entry %d chains to: a forged checkpoint or a replaced entry", first.pos)
		}
	}
	return rep
}

// decodeEntry decodes strictly: an entry with fields the Log never writes was not written by it.
func decodeEntry(raw []byte, e *Entry) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(e); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data")
	}
	return nil
}

// MaxExportLine bounds one line of an export read by VerifyExport.
const MaxExportLine = 64 << 10

// VerifyExport checks a JSON-lines export (as written by Export): every entry's hash, the
// chain, the sequence and the checkpoint. An export carries no head record, so entries cut
// from its end are found only by comparing Report.Head with a head recorded elsewhere (for
// example the one `keywarden audit export` prints).
func VerifyExport(r io.Reader) (Report, error) {
	c, _, rep, err := checkExport(r)
	if err != nil {
		return Report{}, err
	}
	return c.result(rep)
}

// checkExport reads and checks an export; the items are in line order, positions fixed up.
func checkExport(r io.Reader) (*checker, []item, Report, error) {
	c := &checker{}
	var items []item
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), MaxExportLine)
	line := 0
	var prevPos uint64
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		it := item{}
		if err := decodeEntry(b, &it.e); err != nil {
			it.bad = true
			it.pos = prevPos + 1
			c.add(0, ProblemModified, "line %d does not parse as an entry", line)
		} else {
			it.pos = it.e.Seq
			// Lines are positions: a line whose seq goes backwards was moved.
			if len(items) > 0 && it.pos <= prevPos {
				c.add(it.pos, ProblemReordered, "line %d holds entry %d after entry %d", line, it.pos, prevPos)
			}
		}
		prevPos = it.pos
		items = append(items, it)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, Report{}, fmt.Errorf("read export: %w", err)
	}
	// Items out of order are reported above; chain them in line order.
	fixed := make([]item, len(items))
	copy(fixed, items)
	for i := 1; i < len(fixed); i++ {
		if fixed[i].pos <= fixed[i-1].pos {
			fixed[i].pos = fixed[i-1].pos + 1
		}
	}
	rep := c.chain(fixed)
	return c, fixed, rep, nil
}

// Export writes the stored entries with Seq ≥ from as JSON lines, in order.
func (l *Log) Export(w io.Writer, from uint64) (int, error) {
	entries, err := l.Entries(from, 0)
	if err != nil {
		return 0, err
	}
	return WriteJSONLines(w, entries)
}

// WriteJSONLines writes entries one JSON object per line.
func WriteJSONLines(w io.Writer, entries []Entry) (int, error) {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	for i := range entries {
		if err := enc.Encode(&entries[i]); err != nil {
			return i, err
		}
	}
	return len(entries), bw.Flush()
}

func shortQuote(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("%q...", s[:40])
	}
	return fmt.Sprintf("%q", s)
}
