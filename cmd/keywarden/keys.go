package main

import (
	"log/slog"

	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/keywarden/keywarden/broker/keyrot"
	"github.com/keywarden/keywarden/crypto"
)

// newKeyRotation builds the rotation of the stores' DEK and KEK (`keywarden keys rotate`)
// and adds its runner, which first finishes a rotation an earlier run left unfinished.
func (d *daemon) newKeyRotation(kek tink.AEAD) error {
	var k keyrot.KEK = crypto.LocalKEKFile{Path: d.cfg.KEK.File}
	if d.cfg.KEK.Provider == kekTransit {
		k = keyrot.Rewrap{AEAD: kek} // Vault rotates the Transit key; the daemon re-wraps
	}
	stores := []keyrot.NamedStore{{Name: "state", Store: d.state}, {Name: "node", Store: d.node}}
	if d.volumes != nil {
		stores = append(stores, keyrot.NamedStore{Name: "volumes", Store: d.volumes})
	}
	var err error
	d.keys, err = keyrot.New(keyrot.Config{
		Stores:   stores,
		KEK:      k,
		Provider: d.cfg.KEK.Provider,
		Logger:   d.log.With(slog.String("component", "keyrot")),
	})
	if err != nil {
		return err
	}
	d.runners = append(d.runners, d.keys.Run)
	return nil
}
