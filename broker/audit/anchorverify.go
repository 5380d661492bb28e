package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// ProblemAnchor: an anchor that does not verify (bad signature, another key, unknown
// version) or that contradicts another anchor of the same node.
const ProblemAnchor ProblemKind = "anchor"

// AnchorAnnotation is the annotation of a Kubernetes Event that holds an anchor record.
const AnchorAnnotation = "keywarden.io/audit-anchor"

// MaxAnchorInput bounds what ReadAnchors reads.
const MaxAnchorInput = 64 << 20

// AnchorOptions select the anchors VerifyAnchored checks.
type AnchorOptions struct {
	// Node: only anchors of this node are checked. Empty: the anchors must all be of one node.
	Node string
	// KeyFingerprint pins the node's anchor key: the hex SHA-256 of its public keyset, as the
	// daemon logs it when it starts. Anchors signed by any other key are reported. Empty: the
	// anchors must all carry the same key, which is then trusted as found.
	KeyFingerprint string
}

// AnchorReport summarises an anchor check.
type AnchorReport struct {
	// Node is the node whose anchors were checked.
	Node string `json:"node"`
	// Key is the fingerprint of the key the anchors were checked against; Pinned says whether
	// it was given (AnchorOptions.KeyFingerprint) or taken from the anchors.
	Key    string `json:"key"`
	Pinned bool   `json:"pinned"`
	// Anchors is how many anchors of the node were read.
	Anchors int `json:"anchors"`
	// Matched: anchors whose entry is in the log with the anchored hash.
	Matched int `json:"matched"`
	// Retained: anchors of entries dropped by retention that a checkpoint entry accounts for
	// with the anchored hash.
	Retained int `json:"retained"`
	// Uncovered: anchors of entries dropped by retention that no kept checkpoint names, so
	// they cannot be compared.
	Uncovered int `json:"uncovered"`
	// Other: anchors of other nodes, ignored.
	Other int `json:"other"`
	// Latest is the valid anchor with the highest seq: entries after Latest.Seq are not covered
	// by any anchor.
	Latest Anchor `json:"latest"`
}

// ReadAnchors reads anchors from JSON lines (anchor records, or the daemon's JSON log, whose
// other records are skipped) or from one Kubernetes List of Events (`kubectl get events -o
// json`), taking the AnchorAnnotation of each item that has one.
func ReadAnchors(r io.Reader) ([]Anchor, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxAnchorInput+1))
	if err != nil {
		return nil, fmt.Errorf("read anchors: %w", err)
	}
	if len(data) > MaxAnchorInput {
		return nil, fmt.Errorf("read anchors: more than %d bytes", MaxAnchorInput)
	}
	var list struct {
		Kind  string `json:"kind"`
		Items []struct {
			Metadata struct {
				Name        string            `json:"name"`
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
		} `json:"items"`
	}
	if json.Unmarshal(data, &list) == nil && strings.HasSuffix(list.Kind, "List") {
		var out []Anchor
		for _, it := range list.Items {
			raw, ok := it.Metadata.Annotations[AnchorAnnotation]
			if !ok {
				continue
			}
			a, _, err := ParseAnchorLine([]byte(raw))
			if err != nil {
				return nil, fmt.Errorf("event %s: %w", it.Metadata.Name, err)
			}
			out = append(out, a)
		}
		return out, nil
	}
	var out []Anchor
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), MaxExportLine)
	for line := 1; sc.Scan(); line++ {
		a, ok, err := ParseAnchorLine(sc.Bytes())
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if ok {
			out = append(out, a)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read anchors: %w", err)
	}
	return out, nil
}

// VerifyAnchored is Verify, and checks the log against published anchors: each anchored
// entry must still be there with the anchored hash. A rewrite of the log by a KEK holder,
// consistent from some entry to the end (which Verify cannot see), is found if an anchor of
// that entry or a later one was published before the rewrite.
func (l *Log) VerifyAnchored(anchors []Anchor, opt AnchorOptions) (Report, AnchorReport, error) {
	if err := l.Flush(); err != nil {
		return Report{}, AnchorReport{}, err
	}
	recs, err := newRecords(l.cfg.DB).List()
	if err != nil {
		return Report{}, AnchorReport{}, fmt.Errorf("read audit log: %w", err)
	}
	l.flushMu.Lock()
	mem := l.head
	l.flushMu.Unlock()
	c, items, rep := checkRecords(recs, &mem)
	arep, err := c.anchors(items, anchors, opt)
	if err != nil {
		return Report{}, AnchorReport{}, err
	}
	rep, err = c.result(rep)
	if err != nil {
		return Report{}, AnchorReport{}, err
	}
	return rep, arep, nil
}

// VerifyExportAnchored is VerifyExport with the anchor check of VerifyAnchored. Unlike a bare
// export, entries cut from the end up to the latest anchor are found.
func VerifyExportAnchored(r io.Reader, anchors []Anchor, opt AnchorOptions) (Report, AnchorReport, error) {
	c, items, rep, err := checkExport(r)
	if err != nil {
		return Report{}, AnchorReport{}, err
	}
	arep, err := c.anchors(items, anchors, opt)
	if err != nil {
		return Report{}, AnchorReport{}, err
	}
	rep, err = c.result(rep)
	if err != nil {
		return Report{}, AnchorReport{}, err
	}
	return rep, arep, nil
}

// anchors checks the anchors against items (in position order, already chained). The error
// is for anchors that cannot be checked at all (none of the node, several nodes unnamed);
// what the anchors reveal is added to c.
func (c *checker) anchors(items []item, anchors []Anchor, opt AnchorOptions) (AnchorReport, error) {
	rep := AnchorReport{Node: opt.Node, Key: strings.ToLower(opt.KeyFingerprint), Pinned: opt.KeyFingerprint != ""}
	if rep.Node == "" {
		var nodes []string
		for i := range anchors {
			if !slices.Contains(nodes, anchors[i].Node) {
				nodes = append(nodes, anchors[i].Node)
			}
		}
		if len(nodes) > 1 {
			return AnchorReport{}, fmt.Errorf("anchors of %d nodes (%s): name the node whose log this is", len(nodes), strings.Join(nodes, ", "))
		}
		if len(nodes) == 1 {
			rep.Node = nodes[0]
		}
	}
	var mine []Anchor
	for _, a := range anchors {
		if a.Node == rep.Node {
			mine = append(mine, a)
		} else {
			rep.Other++
		}
	}
	rep.Anchors = len(mine)
	if len(mine) == 0 {
		return AnchorReport{}, fmt.Errorf("%w: none of the %d anchors read is of node %q", ErrNoAnchors, len(anchors), rep.Node)
	}
	slices.SortStableFunc(mine, func(a, b Anchor) int { return a.Time.Compare(b.Time) })

	if !rep.Pinned {
		var keys []string
		for i := range mine {
			if fp := mine[i].KeyFingerprint(); !slices.Contains(keys, fp) {
				keys = append(keys, fp)
			}
		}
		rep.Key = keys[0]
		if len(keys) > 1 {
			c.add(0, ProblemAnchor, "the anchors of node %s carry %d different keys (%s): forged anchors, or anchors of an earlier installation; pin the node's key to tell which",
				rep.Node, len(keys), strings.Join(keys, ", "))
		}
	}
	var valid []Anchor
	for _, a := range mine {
		what := fmt.Sprintf("the anchor made at %s for entry %d", a.Time.Format(time.RFC3339), a.Seq)
		switch err := a.CheckSignature(); {
		case a.V != AnchorVersion:
			c.add(a.Seq, ProblemAnchor, "%s has format version %d; this verifier reads version %d", what, a.V, AnchorVersion)
		case err != nil:
			c.add(a.Seq, ProblemAnchor, "%s does not verify (%v): it was forged or altered", what, err)
		case rep.Pinned && a.KeyFingerprint() != rep.Key:
			c.add(a.Seq, ProblemAnchor, "%s is signed by key %s, not the pinned key: forged, or made by an earlier installation", what, a.KeyFingerprint())
		case !rep.Pinned && a.KeyFingerprint() != rep.Key:
			// Reported above, once for all keys.
		default:
			valid = append(valid, a)
		}
	}

	// Anchors are published in time order and the log only grows, so a later anchor naming an
	// earlier entry, or two anchors disagreeing on one entry, is a rewrite or a rollback that
	// was anchored again by someone holding the anchor key.
	hashAt := map[uint64]Anchor{}
	var top Anchor
	for _, a := range valid {
		if prev, ok := hashAt[a.Seq]; ok && prev.Hash != a.Hash {
			c.add(a.Seq, ProblemAnchor, "the anchors made at %s and %s disagree on entry %d: the log was rewritten and anchored again",
				prev.Time.Format(time.RFC3339), a.Time.Format(time.RFC3339), a.Seq)
		}
		if _, ok := hashAt[a.Seq]; !ok {
			hashAt[a.Seq] = a
		}
		if a.Seq < top.Seq {
			c.add(a.Seq, ProblemAnchor, "the anchor made at %s names entry %d, but the one made earlier at %s named entry %d: the log was rolled back",
				a.Time.Format(time.RFC3339), a.Seq, top.Time.Format(time.RFC3339), top.Seq)
		}
		if a.Seq >= top.Seq {
			top = a
		}
	}
	rep.Latest = top

	byPos := make(map[uint64]*item, len(items))
	dropped := map[uint64]string{}
	for i := range items {
		it := &items[i]
		byPos[it.pos] = it
		if !it.bad && it.e.Checkpoint != nil {
			dropped[it.e.Checkpoint.DroppedThrough] = it.e.Checkpoint.DroppedHash
		}
	}
	var first, last uint64
	if len(items) > 0 {
		first, last = items[0].pos, items[len(items)-1].pos
	}
	seqs := make([]uint64, 0, len(hashAt))
	for s := range hashAt {
		seqs = append(seqs, s)
	}
	slices.Sort(seqs)
	for _, seq := range seqs {
		a := hashAt[seq]
		when := a.Time.Format(time.RFC3339)
		it, ok := byPos[seq]
		switch {
		case seq == 0:
			if a.Hash == ZeroHash {
				rep.Matched++
			} else {
				c.add(0, ProblemAnchor, "the anchor made at %s names entry 0 with a hash other than the zero hash", when)
			}
		case ok && it.bad:
			// Reported by the chain check.
		case ok && it.e.Hash == a.Hash:
			rep.Matched++
		case ok:
			c.add(seq, ProblemModified, "the entry does not match the anchor made at %s: the log was rewritten after that anchor was published", when)
		case len(items) == 0 || seq > last:
			c.add(last+1, ProblemRemoved, "the anchor made at %s covers entry %d, but the log ends at entry %d: entries were removed from the end, or the log was rolled back",
				when, seq, last)
		case seq < first:
			h, named := dropped[seq]
			switch {
			case !named:
				rep.Uncovered++
			case h == a.Hash:
				rep.Retained++
			default:
				c.add(seq, ProblemCheckpoint, "the checkpoint's hash of dropped entry %d differs from the anchor made at %s: the log was rewritten after that anchor was published", seq, when)
			}
		default:
			// A gap: the chain check reported it.
		}
	}
	return rep, nil
}
