package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"
	"github.com/keywarden/keywarden/internal/testlog"
)

var anchorTime = time.Date(2030, 1, 2, 4, 0, 0, 0, time.UTC)

func signingKey(tb testing.TB) *crypto.SigningKey {
	tb.Helper()
	k, err := crypto.LoadOrCreateSigningKey(filepath.Join(tb.TempDir(), "anchor-key.json"))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// anchorOf signs the stored entry seq (its hash) as node-1's anchor at anchorTime+seq minutes.
func anchorOf(tb testing.TB, db *store.DB, k AnchorSigner, seq uint64) Anchor {
	tb.Helper()
	a, err := NewAnchor(k, "node-1", Head{Seq: seq, Hash: rawEntry(tb, db, seq).Hash}, anchorTime.Add(time.Duration(seq)*time.Minute))
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// reopen is the log as a fresh process sees it: no memory of the head it wrote last.
func reopen(tb testing.TB, db *store.DB) *Log {
	tb.Helper()
	l, _ := newLog(tb, db)
	return l
}

func firstProblem(t *testing.T, err error) Problem {
	t.Helper()
	var ve *VerifyError
	if !errors.As(err, &ve) || !errors.Is(err, ErrTampered) {
		t.Fatalf("err = %v, want a VerifyError", err)
	}
	return ve.Problems[0]
}

func TestLog_VerifyAnchored_findsARewriteByAKEKHolder(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db)
	record(t, l, 8)
	k := signingKey(t)
	anchors := []Anchor{anchorOf(t, db, k, 5), anchorOf(t, db, k, 8)}
	opt := AnchorOptions{KeyFingerprint: k.Fingerprint()}
	_, arep, err := reopen(t, db).VerifyAnchored(anchors, opt)
	if err != nil {
		t.Fatalf("untouched log: %v", err)
	}
	if arep.Matched != 2 || arep.Latest.Seq != 8 || !arep.Pinned || arep.Node != "node-1" {
		t.Errorf("report %+v, want 2 matched, latest 8, pinned, node-1", arep)
	}

	// Someone with the KEK (and so the store) changes entry 3 and recomputes every later hash
	// and the head record: the chain alone is consistent again.
	e := rawEntry(t, db, 3)
	e.Event.Outcome = OutcomeDeny
	putEntry(t, db, 3, e)
	rechain(t, db, 3)
	if _, err := verifyStored(t, db); err != nil {
		t.Fatalf("the consistently rewritten chain should pass plain verification (that is the gap anchors close): %v", err)
	}
	_, _, err = reopen(t, db).VerifyAnchored(anchors, opt)
	if p := firstProblem(t, err); p.Seq != 5 || p.Kind != ProblemModified || !strings.Contains(p.Detail, "rewritten after that anchor was published") {
		t.Errorf("first problem %v, want entry 5 modified against its anchor", p)
	}

	// The same through an export, as an operator checks it off the node.
	var buf bytes.Buffer
	if _, err := reopen(t, db).Export(&buf, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyExport(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatalf("export of the rewritten log: %v", err)
	}
	_, _, err = VerifyExportAnchored(bytes.NewReader(buf.Bytes()), anchors, opt)
	if p := firstProblem(t, err); p.Seq != 5 || p.Kind != ProblemModified {
		t.Errorf("export: first problem %v, want entry 5 modified", p)
	}
}

func TestLog_VerifyAnchored_entriesAfterTheLastAnchorAreNotCovered(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db)
	record(t, l, 8)
	k := signingKey(t)
	anchors := []Anchor{anchorOf(t, db, k, 5)}
	e := rawEntry(t, db, 7)
	e.Event.Secret = "other"
	putEntry(t, db, 7, e)
	rechain(t, db, 7)
	_, arep, err := reopen(t, db).VerifyAnchored(anchors, AnchorOptions{})
	if err != nil {
		t.Fatalf("a rewrite after the last anchored entry cannot be seen, want no error: %v", err)
	}
	if arep.Latest.Seq != 5 || arep.Pinned || arep.Key != k.Fingerprint() {
		t.Errorf("report %+v: want latest 5, the key taken from the anchors", arep)
	}
}

func TestVerifyExportAnchored_findsEntriesCutFromTheEnd(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db)
	record(t, l, 8)
	k := signingKey(t)
	anchors := []Anchor{anchorOf(t, db, k, 8)}
	var buf bytes.Buffer
	if _, err := l.Export(&buf, 0); err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(buf.String(), "\n")
	cut := strings.Join(lines[:6], "")
	if _, err := VerifyExport(strings.NewReader(cut)); err != nil {
		t.Fatalf("a cut export verifies on its own: %v", err)
	}
	_, _, err := VerifyExportAnchored(strings.NewReader(cut), anchors, AnchorOptions{})
	if p := firstProblem(t, err); p.Seq != 7 || p.Kind != ProblemRemoved {
		t.Errorf("first problem %v, want entry 7 removed", p)
	}
}

func TestLog_VerifyAnchored_reportsForgedAnchors(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db)
	record(t, l, 8)
	k, other := signingKey(t), signingKey(t)
	good := anchorOf(t, db, k, 6)
	pin := AnchorOptions{KeyFingerprint: k.Fingerprint()}
	for _, tc := range []struct {
		name    string
		anchors func() []Anchor
		opt     AnchorOptions
		want    string
	}{
		{"hash altered after signing", func() []Anchor {
			a := anchorOf(t, db, k, 7)
			a.Hash = rawEntry(t, db, 6).Hash
			return []Anchor{good, a}
		}, pin, "does not verify"},
		{"signature flipped", func() []Anchor {
			a := anchorOf(t, db, k, 7)
			a.Sig[len(a.Sig)-1] ^= 1
			return []Anchor{good, a}
		}, pin, "does not verify"},
		{"key swapped for another, signature kept", func() []Anchor {
			a := anchorOf(t, db, k, 7)
			a.Key = other.PublicKeyset()
			return []Anchor{good, a}
		}, pin, "does not verify"},
		{"signed by another key, pinned", func() []Anchor { return []Anchor{good, anchorOf(t, db, other, 7)} }, pin, "not the pinned key"},
		{"signed by another key, not pinned", func() []Anchor { return []Anchor{good, anchorOf(t, db, other, 7)} }, AnchorOptions{}, "2 different keys"},
		{"only other keys, pinned", func() []Anchor { return []Anchor{anchorOf(t, db, other, 7)} }, pin, "not the pinned key"},
		{"unknown version", func() []Anchor {
			a := good
			a.V = 2
			return []Anchor{a}
		}, pin, "format version 2"},
		{"two signed anchors disagree on an entry", func() []Anchor {
			// What someone holding the anchor key too does after a rewrite: anchor it again.
			// The first anchor cannot be taken back.
			a, err := NewAnchor(k, "node-1", Head{Seq: 6, Hash: strings.Repeat("ab", 32)}, anchorTime.Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			return []Anchor{good, a}
		}, pin, "disagree on entry 6"},
		{"rolled back and anchored again", func() []Anchor {
			a, err := NewAnchor(k, "node-1", Head{Seq: 4, Hash: rawEntry(t, db, 4).Hash}, anchorTime.Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			return []Anchor{good, a}
		}, pin, "rolled back"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := reopen(t, db).VerifyAnchored(tc.anchors(), tc.opt)
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("err = %v, want a VerifyError", err)
			}
			var found bool
			for _, p := range ve.Problems {
				found = found || p.Kind == ProblemAnchor && strings.Contains(p.Detail, tc.want)
			}
			if !found {
				t.Errorf("problems %v, want an anchor problem saying %q", ve.Problems, tc.want)
			}
		})
	}
}

func TestLog_VerifyAnchored_anchorsOfEntriesDroppedByRetention(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db, func(c *Config) { c.MaxEntries = 10; c.MaxBatch = 4 })
	record(t, l, 3)
	k := signingKey(t)
	early := anchorOf(t, db, k, 2)
	record(t, l, 20)
	_, cpSeq := firstAndCheckpoint(t, db)
	cp := rawEntry(t, db, cpSeq).Checkpoint
	atCut, err := NewAnchor(k, "node-1", Head{Seq: cp.DroppedThrough, Hash: cp.DroppedHash}, anchorTime.Add(time.Duration(cp.DroppedThrough)*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	latest := anchorOf(t, db, k, l.Head().Seq)
	_, arep, err := reopen(t, db).VerifyAnchored([]Anchor{early, atCut, latest}, AnchorOptions{KeyFingerprint: k.Fingerprint()})
	if err != nil {
		t.Fatalf("anchors older than retention must not fail verification: %v", err)
	}
	if arep.Uncovered != 1 || arep.Retained != 1 || arep.Matched != 1 {
		t.Errorf("report %+v: want 1 uncovered (entry 2, dropped), 1 retained (the checkpoint's entry), 1 matched", arep)
	}

	// A checkpoint rewritten to another hash (and the chain after it) contradicts the anchor
	// of the entry it names.
	e := rawEntry(t, db, cpSeq)
	e.Checkpoint.DroppedHash = strings.Repeat("cd", 32)
	putEntry(t, db, cpSeq, e)
	first, _ := firstAndCheckpoint(t, db)
	f := rawEntry(t, db, first)
	f.Prev = e.Checkpoint.DroppedHash
	putEntry(t, db, first, f)
	rechain(t, db, first)
	_, _, err = reopen(t, db).VerifyAnchored([]Anchor{atCut}, AnchorOptions{KeyFingerprint: k.Fingerprint()})
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("err = %v, want a VerifyError", err)
	}
	var found bool
	for _, p := range ve.Problems {
		found = found || p.Kind == ProblemCheckpoint && p.Seq == cp.DroppedThrough && strings.Contains(p.Detail, "differs from the anchor")
	}
	if !found {
		t.Errorf("problems %v, want the checkpoint contradicting the anchor of entry %d", ve.Problems, cp.DroppedThrough)
	}
}

func TestLog_VerifyAnchored_anchorsThatCannotBeChecked(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db)
	record(t, l, 3)
	k := signingKey(t)
	a := anchorOf(t, db, k, 3)
	b := a
	b.Node = "node-2"
	if _, _, err := l.VerifyAnchored(nil, AnchorOptions{}); !errors.Is(err, ErrNoAnchors) {
		t.Errorf("no anchors: %v, want ErrNoAnchors", err)
	}
	if _, _, err := l.VerifyAnchored([]Anchor{a}, AnchorOptions{Node: "node-2"}); !errors.Is(err, ErrNoAnchors) {
		t.Errorf("anchors of another node: %v, want ErrNoAnchors", err)
	}
	if _, _, err := l.VerifyAnchored([]Anchor{a, b}, AnchorOptions{}); err == nil || !strings.Contains(err.Error(), "name the node") {
		t.Errorf("anchors of two nodes, none named: %v", err)
	}
	_, arep, err := l.VerifyAnchored([]Anchor{a, b}, AnchorOptions{Node: "node-1"})
	if err != nil || arep.Other != 1 || arep.Matched != 1 {
		t.Errorf("node named: %+v, %v; want 1 matched, 1 other", arep, err)
	}
}

func TestReadAnchors_recordsLogLinesAndEventLists(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db)
	record(t, l, 3)
	k := signingKey(t)
	a1, a2 := anchorOf(t, db, k, 1), anchorOf(t, db, k, 2)

	var logs bytes.Buffer
	lg := slog.New(slog.NewJSONHandler(&logs, nil))
	lg.Info("something else", slog.String("anchor", "not an anchor record"))
	_ = LogSink{Logger: lg}.PublishAnchor(context.Background(), a1)
	_ = LogSink{Logger: lg}.PublishAnchor(context.Background(), a2)
	logs.WriteString("plain text line\n")
	var text bytes.Buffer
	tl := slog.New(slog.NewTextHandler(&text, nil))
	tl.Info("starting", slog.String("anchor", "not this one"))
	_ = LogSink{Logger: tl.With(slog.String("component", "audit-anchor"))}.PublishAnchor(context.Background(), a1)
	_ = LogSink{Logger: tl}.PublishAnchor(context.Background(), a2)

	list, _ := json.Marshal(map[string]any{"kind": "EventList", "items": []any{
		map[string]any{"metadata": map[string]any{"name": "a", "annotations": map[string]string{AnchorAnnotation: string(a1.Marshal())}}},
		map[string]any{"metadata": map[string]any{"name": "unrelated"}},
		map[string]any{"metadata": map[string]any{"name": "b", "annotations": map[string]string{AnchorAnnotation: string(a2.Marshal())}}},
	}})
	records := string(a1.Marshal()) + "\n\n" + string(a2.Marshal()) + "\n"
	for name, in := range map[string]string{"records": records, "daemon log": logs.String(), "daemon text log": text.String(), "event list": string(list)} {
		got, err := ReadAnchors(strings.NewReader(in))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if len(got) != 2 || got[0].Seq != 1 || got[1].Seq != 2 || got[1].CheckSignature() != nil {
			t.Errorf("%s: read %+v, want the two anchors, verifying", name, got)
		}
	}
	if _, err := ReadAnchors(strings.NewReader(`{"v":1,"seq":"x"}`)); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("a broken anchor record: %v, want an error naming line 1", err)
	}
	if _, err := ReadAnchors(strings.NewReader(`{"msg":"audit anchor","anchor":"{\"v\":1,\"extra\":true}"}`)); err == nil {
		t.Error("an anchor with an unknown field was accepted")
	}
}

// recordingSink is an AnchorSink that keeps what it gets and fails while fail is set.
type recordingSink struct {
	mu   sync.Mutex
	got  []Anchor
	fail bool
}

func (s *recordingSink) Name() string { return "recording" }

func (s *recordingSink) PublishAnchor(_ context.Context, a Anchor) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return fmt.Errorf("apiserver unavailable")
	}
	s.got = append(s.got, a)
	return nil
}

func (s *recordingSink) anchors() []Anchor {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Anchor(nil), s.got...)
}

func (s *recordingSink) setFail(v bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = v
}

func TestAnchorer_Run_publishesAtStartEveryIntervalAndSurvivesFailures(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db)
	record(t, l, 2)
	k := signingKey(t)
	clk := clocktesting.NewFakeClock(anchorTime)
	sink := &recordingSink{}
	logs := &testlog.Buffer{}
	an, err := NewAnchorer(AnchorerConfig{Log: l, Signer: k, Node: "node-1", Sinks: []AnchorSink{sink}, Interval: time.Minute, Clock: clk,
		Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- an.Run(ctx) }()
	waitAnchors := func(n int) []Anchor {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for len(sink.anchors()) < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d anchors published, want %d", len(sink.anchors()), n)
			}
			time.Sleep(2 * time.Millisecond)
		}
		return sink.anchors()
	}
	got := waitAnchors(1)
	if got[0].Seq != 2 || got[0].Node != "node-1" || got[0].CheckSignature() != nil || got[0].KeyFingerprint() != k.Fingerprint() {
		t.Fatalf("first anchor %+v", got[0])
	}
	record(t, l, 3)
	for !clk.HasWaiters() {
		time.Sleep(time.Millisecond)
	}
	clk.Step(time.Minute)
	if got := waitAnchors(2); got[1].Seq != 5 {
		t.Errorf("second anchor at seq %d, want 5", got[1].Seq)
	}

	sink.setFail(true)
	if err := an.Publish(ctx); err == nil {
		t.Error("Publish with a failing sink returned nil")
	}
	if st := an.Stats(); st.Failures != 1 || st.Published != 2 || st.Last.Seq != 5 {
		t.Errorf("stats %+v, want 1 failure, 2 published, last anchor 5", st)
	}
	if !strings.Contains(logs.String(), `"msg":"audit anchor not published","sink":"recording"`) {
		t.Errorf("the failure was not logged:\n%s", logs)
	}
	sink.setFail(false)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// At shutdown the daemon anchors the final head after the last flush.
	if err := an.Publish(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := sink.anchors(); len(got) != 3 {
		t.Errorf("%d anchors, want 3", len(got))
	}
	// What was published verifies the log.
	if _, arep, err := l.VerifyAnchored(sink.anchors(), AnchorOptions{KeyFingerprint: k.Fingerprint()}); err != nil || arep.Matched != 2 {
		t.Errorf("VerifyAnchored with the published anchors: %+v, %v", arep, err)
	}
}

func TestNewAnchorer_badConfig(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db)
	k := signingKey(t)
	ok := AnchorerConfig{Log: l, Signer: k, Node: "n", Sinks: []AnchorSink{&recordingSink{}}, Logger: discard()}
	for name, mutate := range map[string]func(*AnchorerConfig){
		"no log":            func(c *AnchorerConfig) { c.Log = nil },
		"no signer":         func(c *AnchorerConfig) { c.Signer = nil },
		"no node":           func(c *AnchorerConfig) { c.Node = "" },
		"no sink":           func(c *AnchorerConfig) { c.Sinks = nil },
		"no logger":         func(c *AnchorerConfig) { c.Logger = nil },
		"negative interval": func(c *AnchorerConfig) { c.Interval = -time.Second },
	} {
		c := ok
		mutate(&c)
		if _, err := NewAnchorer(c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
	if _, err := NewAnchorer(ok); err != nil {
		t.Errorf("good config: %v", err)
	}
}

// eventRecorder is an EventCreator that keeps what it is asked to create.
type eventRecorder struct {
	got []*eventsv1.Event
	err error
}

func (r *eventRecorder) Create(_ context.Context, ev *eventsv1.Event, _ metav1.CreateOptions) (*eventsv1.Event, error) {
	if r.err != nil {
		return nil, r.err
	}
	r.got = append(r.got, ev)
	return ev, nil
}

func TestEventSink_PublishAnchor_createsAnEventCarryingTheRecord(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db)
	record(t, l, 2)
	// A node name longer than reportingInstance may be.
	a, err := NewAnchor(signingKey(t), strings.Repeat("n", 200), l.Head(), anchorTime)
	if err != nil {
		t.Fatal(err)
	}
	rec := &eventRecorder{}
	s := &EventSink{Events: rec, Namespace: "keywarden"}
	if err := s.PublishAnchor(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	ev := rec.got[0]
	switch {
	case ev.Namespace != "keywarden" || ev.Regarding.Namespace != "keywarden":
		t.Errorf("event namespace %q regarding %+v: both must be the sink's namespace", ev.Namespace, ev.Regarding)
	case ev.Reason != AnchorEventReason || ev.Action != AnchorEventAction || ev.ReportingController != AnchorEventController || ev.Type != "Normal":
		t.Errorf("event fields %+v", ev)
	case len(ev.ReportingInstance) > 128 || ev.EventTime.IsZero() || len(ev.Note) > 1024:
		t.Errorf("event breaks the apiserver's limits: instance %d chars, note %d chars", len(ev.ReportingInstance), len(ev.Note))
	case ev.Labels[AnchorEventLabel] != "true":
		t.Errorf("labels %v", ev.Labels)
	}
	back, ok, err := ParseAnchorLine([]byte(ev.Annotations[AnchorAnnotation]))
	if !ok || err != nil || back.CheckSignature() != nil || back.Seq != 2 {
		t.Errorf("the annotation does not hold the signed anchor: %+v, %v, %v", back, ok, err)
	}
	rec.err = fmt.Errorf("forbidden")
	if err := s.PublishAnchor(context.Background(), a); err == nil {
		t.Error("a refused create returned nil")
	}
}

// FuzzReadAnchors: anchors come from files and Events anyone with create on events can write.
// Reading never panics, and whatever reads as an anchor survives a round trip.
func FuzzReadAnchors(f *testing.F) {
	k, err := crypto.LoadOrCreateSigningKey(filepath.Join(f.TempDir(), "k.json"))
	if err != nil {
		f.Fatal(err)
	}
	a, err := NewAnchor(k, "node-1", Head{Seq: 3, Hash: ZeroHash}, anchorTime)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(a.Marshal()))
	f.Add(`{"msg":"audit anchor","anchor":` + jsonQuote(string(a.Marshal())) + `}`)
	f.Add(`time=x level=INFO msg="audit anchor" anchor=` + jsonQuote(string(a.Marshal())))
	f.Add(`{"kind":"EventList","items":[{"metadata":{"annotations":{"keywarden.io/audit-anchor":"{\"v\":1}"}}}]}`)
	f.Add(`{"v":1,"seq":-1}`)
	f.Fuzz(func(t *testing.T, in string) {
		anchors, err := ReadAnchors(strings.NewReader(in))
		if err != nil {
			return
		}
		for _, a := range anchors {
			back, ok, err := ParseAnchorLine(a.Marshal())
			if !ok || err != nil || back.Seq != a.Seq || back.Hash != a.Hash || !bytes.Equal(back.Sig, a.Sig) {
				t.Fatalf("anchor %+v does not survive a round trip: %+v %v %v", a, back, ok, err)
			}
			_ = a.CheckSignature()
		}
	})
}

func jsonQuote(s string) string { b, _ := json.Marshal(s); return string(b) }
