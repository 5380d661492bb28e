package csi

import (
	"context"
	"slices"
	"testing"

	"github.com/keywarden/keywarden/broker"
)

func (b *fakeBroker) heldBy(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.held[id]
}

func (b *fakeBroker) releasedIDs() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.released)
}

// A volume reads its secrets as its own consumer, and gives its leased credentials up when it
// is unpublished.
func TestDriver_leases_heldByTheVolumeUntilUnpublish(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"password": "pw1"})
	r, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db"})
	if err != nil {
		t.Fatal(err)
	}
	id := broker.ConsumerVolume + r.VolumeID
	eventually(t, "the volume's watch reads as the volume", func() bool { return e.b.heldBy(id) >= 2 })
	if len(e.b.releasedIDs()) != 0 {
		t.Fatal("released before unpublish")
	}
	if err := e.d.Unpublish(context.Background(), r.VolumeID, r.TargetPath); err != nil {
		t.Fatal(err)
	}
	if got := e.b.releasedIDs(); !slices.Equal(got, []string{id}) {
		t.Fatalf("released %v, want %s", got, id)
	}
}

// A volume whose files are removed (grant withdrawn) gives its credentials up.
func TestDriver_leases_releasedWhenTheVolumeIsRevoked(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"password": "pw1"})
	r, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db"})
	if err != nil {
		t.Fatal(err)
	}
	e.b.deny("db")
	eventually(t, "release after the grant is withdrawn", func() bool {
		return slices.Contains(e.b.releasedIDs(), broker.ConsumerVolume+r.VolumeID)
	})
}

// A first publish that fails after reading some secrets gives them up: no volume holds them.
func TestDriver_leases_releasedWhenTheFirstPublishFails(t *testing.T) {
	e := newEnv(t)
	e.b.set("db", "v1", map[string]string{"password": "pw1"})
	r, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "db,missing"})
	if err == nil {
		t.Fatal("publish of a missing secret succeeded")
	}
	if got := e.b.releasedIDs(); !slices.Equal(got, []string{broker.ConsumerVolume + r.VolumeID}) {
		t.Fatalf("released %v after the failed publish", got)
	}
}
