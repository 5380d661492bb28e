package csi

import (
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/crypto"
)

// openNodeStore opens node.db of dir as releases before volumes.db did (with fsync).
func openNodeStore(tb testing.TB, dir string) *store.DB {
	tb.Helper()
	kek, err := crypto.LoadOrCreateLocalKEK(filepath.Join(dir, "kek.json"))
	if err != nil {
		tb.Fatal(err)
	}
	db, err := store.Open(store.Config{Path: filepath.Join(dir, "node.db"), KEK: kek, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = db.Close() })
	return db
}

// TestDriver_Recover_movesLegacyRecords publishes volumes with their records in node.db (an
// older release's layout), then starts a driver on volumes.db with node.db as its legacy
// store: the volumes are recovered, their records are in volumes.db and gone from node.db,
// a record volumes.db already holds is kept rather than overwritten, and a second start moves
// nothing.
func TestDriver_Recover_movesLegacyRecords(t *testing.T) {
	e := newEnv(t)
	node := openNodeStore(t, e.dir)
	// The older release: volume records in node.db.
	e.d.Close()
	newDB := e.db
	e.db = node
	e.start()
	e.b.set("db", "v1", map[string]string{"password": "legacy-v1"})
	r1, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db"})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := e.publish("p2", "secrets", map[string]string{AttrSecrets: "db"})
	if err != nil {
		t.Fatal(err)
	}
	e.d.Close()
	// volumes.db already holds a record of p2's volume, written after an interrupted move.
	newer, err := store.NewBucket[record](node, volumesBucket).Get(r2.VolumeID)
	if err != nil {
		t.Fatal(err)
	}
	// Marked in a field that a redelivery keeps: the recovered volume's watch may rewrite its
	// record's versions at any time after the start.
	newer.Workload.IssuedAt = newer.Workload.IssuedAt.Add(time.Second)
	if err := store.NewBucket[record](newDB, volumesBucket).Put(r2.VolumeID, newer); err != nil {
		t.Fatal(err)
	}

	// This release: volumes.db, node.db as the legacy store.
	e.db, e.legacy = newDB, node
	e.start()
	if got := e.d.Volumes(); got != 2 {
		t.Fatalf("recovered %d volumes, want 2", got)
	}
	left, err := store.NewBucket[record](node, volumesBucket).List()
	if err != nil || len(left) != 0 {
		t.Fatalf("node.db still holds %d volume records (err %v), want 0", len(left), err)
	}
	moved, err := store.NewBucket[record](newDB, volumesBucket).List()
	if err != nil || len(moved) != 2 {
		t.Fatalf("volumes.db holds %d records (err %v), want 2", len(moved), err)
	}
	for _, it := range moved {
		if it.Key == r2.VolumeID && !it.Value.Workload.IssuedAt.Equal(newer.Workload.IssuedAt) {
			t.Fatalf("the record volumes.db already held was overwritten: issued at %v, want %v", it.Value.Workload.IssuedAt, newer.Workload.IssuedAt)
		}
	}
	if !strings.Contains(e.logs.String(), "volume records moved to the volume store") {
		t.Fatal("the move was not logged")
	}
	// Republish and unpublish work on the moved records.
	if err := e.d.Publish(t.Context(), r1); err != nil {
		t.Fatalf("republish after the move: %v", err)
	}
	if err := e.d.Unpublish(t.Context(), r1.VolumeID, r1.TargetPath); err != nil {
		t.Fatal(err)
	}

	// A second start has nothing to move and recovers the remaining volume.
	e.d.Close()
	before := strings.Count(e.logs.String(), "volume records moved")
	e.start()
	if got := e.d.Volumes(); got != 1 {
		t.Fatalf("second start recovered %d volumes, want 1", got)
	}
	if strings.Count(e.logs.String(), "volume records moved") != before {
		t.Fatal("a second start moved records again")
	}
}

func TestNew_legacyStoreMustDiffer(t *testing.T) {
	e := newEnv(t)
	_, err := New(Config{Broker: e.b, Store: e.db, LegacyStore: e.db, Mounter: DirMounter{}, KubeletRoot: e.root, NodeID: "n", Metrics: e.d.metrics, Logger: e.d.log})
	if err == nil || !strings.Contains(err.Error(), "legacy store must be another store") {
		t.Fatalf("New with the same store twice: %v", err)
	}
}
