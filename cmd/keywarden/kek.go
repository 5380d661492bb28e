package main

import (
	"errors"
	"fmt"

	"github.com/keywarden/keywarden/broker/store"
)

// kekUnavailable turns a store that could not be opened because the key-encryption key did
// not answer (Vault Transit down, sealed or refusing the daemon) into a start-up error that
// says so; the file was left as it was. Any other error is returned unchanged.
func kekUnavailable(err error, path, provider string) error {
	if !errors.Is(err, store.ErrKEKUnavailable) {
		return err
	}
	return fmt.Errorf("KEK unavailable: %w\nthe key-encryption key (kek.provider %s) did not answer, so %s cannot be opened; "+
		"it was left untouched (not quarantined). Check that Vault is reachable and unsealed and that the Transit key "+
		"can be used by this daemon, then start keywarden again", err, provider, path)
}
