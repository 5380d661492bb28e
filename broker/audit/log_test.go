package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/store"
)

func TestLog_Record_writesChainedEntriesInOrder(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db)
	record(t, l, 5)
	entries, err := l.Entries(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 5 {
		t.Fatalf("got %d entries, want 5", len(entries))
	}
	prev := ZeroHash
	for i, e := range entries {
		if e.Seq != uint64(i+1) || e.Prev != prev || e.Hash != ComputeHash(&e) || e.Event.Secret != event(i).Secret {
			t.Fatalf("entry %d: %+v", i, e)
		}
		if !e.Time.Equal(event(i).Time) {
			t.Errorf("entry %d time %v, want the event's %v", i, e.Time, event(i).Time)
		}
		prev = e.Hash
	}
	if h := l.Head(); h.Seq != 5 || h.Hash != prev {
		t.Errorf("head %v", h)
	}
	rep, err := l.Verify()
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.Entries != 5 || rep.First != 1 || rep.Last != 5 || rep.Head.Seq != 5 {
		t.Errorf("report %+v", rep)
	}
}

func TestLog_Open_continuesAfterRestart(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db)
	record(t, l, 3)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, _ := newLog(t, db)
	record(t, l2, 2)
	if _, err := l2.Verify(); err != nil {
		t.Fatalf("Verify after restart: %v", err)
	}
	if h := l2.Head(); h.Seq != 5 {
		t.Errorf("head %v, want seq 5", h)
	}
}

func TestLog_Run_flushesOnIntervalAndOnStop(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db, func(c *Config) { c.FlushInterval = 10 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	l.Record(ctx, event(1))
	deadline := time.Now().Add(10 * time.Second)
	for l.Head().Seq != 1 {
		if time.Now().After(deadline) {
			t.Fatal("event not flushed by the interval")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Events recorded right before the stop are written by Run on its way out.
	for i := range 10 {
		l.Record(ctx, event(i))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if h := l.Head(); h.Seq != 11 {
		t.Errorf("head %v after stop, want 11", h)
	}
}

func TestLog_Flush_oneTransactionPerBatch(t *testing.T) {
	f := newFailingDB(t)
	l, _ := newLog(t, f.DB, func(c *Config) { c.MaxBatch = 100 })
	for i := range 250 {
		l.Record(context.Background(), event(i))
	}
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := f.updates(); got != 3 {
		t.Errorf("%d transactions for 250 events in batches of 100, want 3", got)
	}
}

func TestLog_Record_storeFailureKeepsEventsAndAuditsDrops(t *testing.T) {
	f := newFailingDB(t)
	l, logs := newLog(t, f.DB, func(c *Config) { c.MaxPending = 10 })
	f.set(true)
	for i := range 15 {
		l.Record(context.Background(), event(i)) // must not block
	}
	if err := l.Flush(); err == nil {
		t.Fatal("flush succeeded on a failing store")
	}
	if st := l.Stats(); st.Pending != 10 || st.Dropped != 5 {
		t.Fatalf("stats %+v, want 10 pending and 5 dropped", st)
	}
	f.set(false)
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	entries, err := l.Entries(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 11 {
		t.Fatalf("%d entries, want the 10 kept events and one drop notice", len(entries))
	}
	last := entries[10].Event
	if last.Kind != KindAudit || !strings.Contains(last.Reason, "5 audit events dropped") {
		t.Errorf("drop notice %+v", last)
	}
	if !strings.Contains(logs.String(), `"dropped":5`) {
		t.Errorf("drops not logged: %s", logs)
	}
	if _, err := l.Verify(); err != nil {
		t.Fatal(err)
	}
}

func TestLog_Retention_boundsSizeAndStaysVerifiable(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db, func(c *Config) { c.MaxEntries = 20; c.MaxBatch = 7 })
	for round := range 6 {
		record(t, l, 9)
		rep, err := l.Verify()
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if rep.Entries > 20 {
			t.Fatalf("round %d: %d entries kept, bound is 20", round, rep.Entries)
		}
	}
	rep, err := l.Verify()
	if err != nil {
		t.Fatal(err)
	}
	if rep.DroppedThrough == 0 || rep.First != rep.DroppedThrough+1 || rep.Checkpoints == 0 {
		t.Errorf("report %+v: want a checkpoint accounting for the dropped entries", rep)
	}
	// A batch larger than the bound drops part of itself.
	record(t, l, 50)
	if _, err := l.Verify(); err != nil {
		t.Fatalf("after an oversized batch: %v", err)
	}
}

// tamper is one way to alter the stored log, and the entry and kind Verify must name.
type tamper struct {
	name     string
	retained bool // start from a log that retention has cut
	do       func(t *testing.T, db *store.DB)
	wantSeq  uint64
	wantKind ProblemKind
	// onlyLive: a holder of the store key rewrote the chain from the tampered entry to the
	// end; only the head the running daemon remembers (or one recorded elsewhere) tells.
	onlyLive bool
}

func TestLog_Verify_detectsEveryTamper(t *testing.T) {
	rehash := func(e *Entry) { e.Hash = ComputeHash(e) }
	tests := []tamper{
		{name: "modified event, hash kept", do: func(t *testing.T, db *store.DB) {
			e := rawEntry(t, db, 4)
			e.Event.Outcome = OutcomeDeny
			putEntry(t, db, 4, e)
		}, wantSeq: 4, wantKind: ProblemModified},
		{name: "modified event, hash recomputed", do: func(t *testing.T, db *store.DB) {
			e := rawEntry(t, db, 4)
			e.Event.Namespace = "other"
			rehash(&e)
			putEntry(t, db, 4, e)
		}, wantSeq: 4, wantKind: ProblemModified},
		{name: "modified time", do: func(t *testing.T, db *store.DB) {
			e := rawEntry(t, db, 2)
			e.Time = e.Time.Add(time.Hour)
			putEntry(t, db, 2, e)
		}, wantSeq: 2, wantKind: ProblemModified},
		{name: "extra field", do: func(t *testing.T, db *store.DB) {
			raw, _ := db.Get(Bucket, entryKey(3))
			raw = append(bytes.TrimSuffix(raw, []byte("}")), []byte(`,"note":"x"}`)...)
			if err := db.Put(Bucket, entryKey(3), raw); err != nil {
				t.Fatal(err)
			}
		}, wantSeq: 3, wantKind: ProblemModified},
		{name: "removed from the middle", do: func(t *testing.T, db *store.DB) {
			_ = db.Delete(Bucket, entryKey(5))
		}, wantSeq: 5, wantKind: ProblemRemoved},
		{name: "removed from the start", do: func(t *testing.T, db *store.DB) {
			_ = db.Delete(Bucket, entryKey(1))
			_ = db.Delete(Bucket, entryKey(2))
		}, wantSeq: 1, wantKind: ProblemRemoved},
		{name: "removed from the end", do: func(t *testing.T, db *store.DB) {
			_ = db.Delete(Bucket, entryKey(8))
		}, wantSeq: 8, wantKind: ProblemRemoved},
		{name: "removed from the end with the head record", do: func(t *testing.T, db *store.DB) {
			_ = db.Delete(Bucket, entryKey(8))
			_ = db.Delete(Bucket, headKey)
		}, wantSeq: 7, wantKind: ProblemRemoved},
		{name: "removed from the end, head rewritten", do: func(t *testing.T, db *store.DB) {
			e := rawEntry(t, db, 7)
			_ = db.Delete(Bucket, entryKey(8))
			raw, _ := json.Marshal(Head{Seq: 7, Hash: e.Hash})
			_ = db.Put(Bucket, headKey, raw)
		}, wantSeq: 8, wantKind: ProblemRemoved}, // caught by the running daemon's head
		{name: "reordered", do: func(t *testing.T, db *store.DB) {
			a, b := rawEntry(t, db, 3), rawEntry(t, db, 4)
			putEntry(t, db, 3, b)
			putEntry(t, db, 4, a)
		}, wantSeq: 3, wantKind: ProblemReordered},
		{name: "reordered with seq and hashes rewritten", do: func(t *testing.T, db *store.DB) {
			a, b := rawEntry(t, db, 3), rawEntry(t, db, 4)
			a.Seq, b.Seq = 4, 3
			b.Prev = rawEntry(t, db, 2).Hash
			rehash(&b)
			a.Prev = b.Hash
			rehash(&a)
			putEntry(t, db, 3, b)
			putEntry(t, db, 4, a)
		}, wantSeq: 4, wantKind: ProblemModified},
		{name: "inserted in the middle", do: func(t *testing.T, db *store.DB) {
			// Shift entries 5..8 up by one and chain a forged entry 5 to entry 4.
			for s := uint64(8); s >= 5; s-- {
				putEntry(t, db, s+1, rawEntry(t, db, s))
			}
			ev := event(99)
			forged := Entry{Seq: 5, Time: ev.Time, Event: &ev, Prev: rawEntry(t, db, 4).Hash}
			forged.Event.Time = time.Time{}
			rehash(&forged)
			putEntry(t, db, 5, forged)
		}, wantSeq: 5, wantKind: ProblemInserted},
		{name: "appended after the head", do: func(t *testing.T, db *store.DB) {
			ev := event(99)
			forged := Entry{Seq: 9, Time: ev.Time, Event: &ev, Prev: rawEntry(t, db, 8).Hash}
			forged.Event.Time = time.Time{}
			rehash(&forged)
			putEntry(t, db, 9, forged)
		}, wantSeq: 9, wantKind: ProblemInserted},
		{name: "foreign record", do: func(t *testing.T, db *store.DB) {
			_ = db.Put(Bucket, "zzz", []byte("{}"))
		}, wantSeq: 0, wantKind: ProblemInserted},
		{name: "garbage entry", do: func(t *testing.T, db *store.DB) {
			_ = db.Put(Bucket, entryKey(6), []byte("not json"))
		}, wantSeq: 6, wantKind: ProblemModified},
		{name: "checkpoint forged to hide removed entries", retained: true, do: func(t *testing.T, db *store.DB) {
			first, cpSeq := firstAndCheckpoint(t, db)
			_ = db.Delete(Bucket, entryKey(first))
			cp := rawEntry(t, db, cpSeq)
			cp.Checkpoint.DroppedThrough = first
			cp.Checkpoint.DroppedHash = rawEntry(t, db, first+1).Prev
			putEntry(t, db, cpSeq, cp)
		}, wantKind: ProblemModified},
		{name: "checkpoint forged and rehashed", retained: true, do: func(t *testing.T, db *store.DB) {
			first, cpSeq := firstAndCheckpoint(t, db)
			_ = db.Delete(Bucket, entryKey(first))
			cp := rawEntry(t, db, cpSeq)
			cp.Checkpoint.DroppedThrough = first
			cp.Checkpoint.DroppedHash = rawEntry(t, db, first+1).Prev
			rehash(&cp)
			putEntry(t, db, cpSeq, cp)
		}, wantKind: ProblemModified},
		{name: "entries removed beyond the checkpoint", retained: true, do: func(t *testing.T, db *store.DB) {
			first, _ := firstAndCheckpoint(t, db)
			_ = db.Delete(Bucket, entryKey(first))
		}, wantKind: ProblemRemoved},
		{name: "checkpoint forged, chain after it rewritten", retained: true, do: func(t *testing.T, db *store.DB) {
			_, cpSeq := firstAndCheckpoint(t, db)
			cp := rawEntry(t, db, cpSeq)
			cp.Checkpoint.DroppedHash = ZeroHash
			putEntry(t, db, cpSeq, cp)
			rechain(t, db, cpSeq)
		}, wantKind: ProblemCheckpoint},
		{name: "checkpoint claims entries still present, chain rewritten", retained: true, do: func(t *testing.T, db *store.DB) {
			first, cpSeq := firstAndCheckpoint(t, db)
			cp := rawEntry(t, db, cpSeq)
			cp.Checkpoint.DroppedThrough = first
			putEntry(t, db, cpSeq, cp)
			rechain(t, db, cpSeq)
		}, wantKind: ProblemCheckpoint},
		{name: "modified, whole chain and head rewritten", do: func(t *testing.T, db *store.DB) {
			e := rawEntry(t, db, 3)
			e.Event.Outcome = OutcomeDeny
			putEntry(t, db, 3, e)
			rechain(t, db, 3)
		}, wantSeq: 8, wantKind: ProblemModified, onlyLive: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openDB(t)
			l, _ := newLog(t, db, func(c *Config) { c.MaxEntries = 10; c.MaxBatch = 4 })
			if tt.retained {
				record(t, l, 23)
			} else {
				record(t, l, 8)
			}
			if _, err := l.Verify(); err != nil {
				t.Fatalf("untouched log: %v", err)
			}
			tt.do(t, db)
			_, err := l.Verify()
			var ve *VerifyError
			if !errors.As(err, &ve) || !errors.Is(err, ErrTampered) {
				t.Fatalf("Verify = %v, want a VerifyError", err)
			}
			p := ve.Problems[0]
			if p.Kind != tt.wantKind || (tt.wantSeq != 0 && p.Seq != tt.wantSeq) {
				t.Errorf("first problem %v, want entry %d %s; all: %v", p, tt.wantSeq, tt.wantKind, ve.Problems)
			}
			if !strings.Contains(err.Error(), p.String()) {
				t.Errorf("error %q does not name the problem", err)
			}
			// A fresh process (no memory of its last write) must also notice, except when
			// only the running daemon's head could tell.
			_, err = verifyStored(t, db)
			switch {
			case tt.onlyLive && err != nil:
				t.Errorf("a fresh reader found %v in a consistently rewritten log", err)
			case !tt.onlyLive && tt.name != "removed from the end, head rewritten" && err == nil:
				t.Error("a fresh reader verified the tampered log")
			}
		})
	}
}

// rechain recomputes the hashes from entry from to the end and rewrites the head record, as
// an attacker holding the store key would.
func rechain(t *testing.T, db *store.DB, from uint64) {
	t.Helper()
	recs, err := db.List(Bucket)
	if err != nil {
		t.Fatal(err)
	}
	var prev string
	var head Head
	for _, r := range recs {
		seq, ok := parseEntryKey(r.Key)
		if !ok {
			continue
		}
		var e Entry
		if err := json.Unmarshal(r.Value, &e); err != nil {
			t.Fatal(err)
		}
		if seq >= from {
			if seq > from {
				e.Prev = prev
			}
			e.Hash = ComputeHash(&e)
			putEntry(t, db, seq, e)
		}
		prev = e.Hash
		head = Head{Seq: seq, Hash: e.Hash}
	}
	raw, _ := json.Marshal(head)
	if err := db.Put(Bucket, headKey, raw); err != nil {
		t.Fatal(err)
	}
}

func verifyStored(t *testing.T, db *store.DB) (Report, error) {
	recs, err := newRecords(db).List()
	if err != nil {
		t.Fatal(err)
	}
	return verifyRecords(recs, nil)
}

// firstAndCheckpoint returns the first kept entry and the latest checkpoint entry.
func firstAndCheckpoint(t *testing.T, db *store.DB) (first, cp uint64) {
	t.Helper()
	recs, err := db.List(Bucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		seq, ok := parseEntryKey(r.Key)
		if !ok {
			continue
		}
		if first == 0 {
			first = seq
		}
		var e Entry
		_ = json.Unmarshal(r.Value, &e)
		if e.Checkpoint != nil {
			cp = seq
		}
	}
	if first <= 1 || cp == 0 {
		t.Fatalf("log has not been cut by retention (first %d, checkpoint %d)", first, cp)
	}
	return first, cp
}

func TestVerifyExport_detectsTamperedLines(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db)
	record(t, l, 6)
	var buf bytes.Buffer
	if n, err := l.Export(&buf, 1); err != nil || n != 6 {
		t.Fatalf("Export = %d, %v", n, err)
	}
	if _, err := VerifyExport(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatalf("untouched export: %v", err)
	}
	lines := strings.SplitAfter(strings.TrimSpace(buf.String()), "\n")
	join := func(ls ...string) string { return strings.Join(ls, "") }
	tests := []struct {
		name     string
		input    string
		wantSeq  uint64
		wantKind ProblemKind
	}{
		{"modified", join(lines[0], lines[1], strings.Replace(lines[2], `"allow"`, `"deny"`, 1), lines[3], lines[4], lines[5]), 3, ProblemModified},
		{"removed", join(lines[0], lines[1], lines[3], lines[4], lines[5]), 3, ProblemRemoved},
		{"reordered", join(lines[0], lines[2], lines[1], lines[3], lines[4], lines[5]), 2, ProblemReordered},
		{"first removed", join(lines[1], lines[2]), 1, ProblemRemoved},
		{"garbage line", join(lines[0], "{oops\n", lines[1]), 0, ProblemModified},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := VerifyExport(strings.NewReader(tt.input))
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("VerifyExport = %v, want a VerifyError", err)
			}
			if p := ve.Problems[0]; p.Kind != tt.wantKind || p.Seq != tt.wantSeq {
				t.Errorf("first problem %v, want entry %d %s; all %v", p, tt.wantSeq, tt.wantKind, ve.Problems)
			}
		})
	}
}

func TestLog_Subscribe_receivesNewEntriesAndEndsLaggards(t *testing.T) {
	db := openDB(t)
	l, _ := newLog(t, db)
	fast := l.Subscribe(100)
	slow := l.Subscribe(2)
	record(t, l, 5)
	for i := range 5 {
		e := <-fast.C()
		if e.Seq != uint64(i+1) {
			t.Fatalf("got seq %d, want %d", e.Seq, i+1)
		}
	}
	<-slow.Done()
	if !errors.Is(slow.Err(), ErrLagging) {
		t.Errorf("slow subscriber: %v, want ErrLagging", slow.Err())
	}
	fast.Close()
	fast.Close()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if s := l.Subscribe(1); s.Err() != nil {
		t.Errorf("subscription on a closed log: %v", s.Err())
	}
}

func TestLog_Record_afterCloseGoesToTheOperationalLog(t *testing.T) {
	db := openDB(t)
	l, logs := newLog(t, db)
	_ = l.Close()
	l.Record(context.Background(), event(1))
	if !strings.Contains(logs.String(), `"msg":"audit"`) {
		t.Errorf("late event lost: %s", logs)
	}
}

func TestOpen_badConfig(t *testing.T) {
	db := openDB(t)
	for name, cfg := range map[string]Config{
		"no db":         {Logger: nil},
		"no logger":     {DB: db},
		"negative":      {DB: db, Logger: discard(), MaxBatch: -1},
		"tiny capacity": {DB: db, Logger: discard(), MaxEntries: 3},
	} {
		if _, err := Open(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Open = %v, want ErrInvalidConfig", name, err)
		}
	}
}

func TestEvent_JSON_hasNoRoomForSecrets(t *testing.T) {
	// The event is hashed and exported as is: it must stay names and fixed phrases only.
	b, err := json.Marshal(Event{Kind: KindDelivery, Outcome: OutcomeAllow, Secret: "db", Version: "3"})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	for k := range m {
		switch k {
		case "kind", "outcome", "secret", "version":
		default:
			t.Errorf("unexpected field %q", k)
		}
	}
}
