package main

import (
	"testing"

	"github.com/keywarden/keywarden/broker/revoke"
)

func TestDaemon_revocationSurvivesRestart(t *testing.T) {
	cfg, err := devConfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d, err := newDaemon(cfg, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	name, _, err := d.revoker.Revoke(revoke.Target{Secret: "demo-db"})
	if err != nil {
		d.close()
		t.Fatal(err)
	}
	d.close()

	d, err = newDaemon(cfg, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	if got := d.revoker.Names(); len(got) != 1 || got[0] != name {
		t.Fatalf("revocations after restart: %v, want [%s]", got, name)
	}
	found := false
	for _, g := range d.broker.ListGrants() {
		found = found || (g.Source == revoke.SourceName && g.Grant.Name == name)
	}
	if !found {
		t.Fatalf("revocation %s not in force in the broker after restart", name)
	}
}
