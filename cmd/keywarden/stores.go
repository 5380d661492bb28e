package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/keywarden/keywarden/broker/store"
)

// Files inside the data directory.
const (
	// stateFile holds the embedded secrets, admin grants, revocations and the audit log: the
	// only copy of each, so it is never replaced automatically.
	stateFile = "state.db"
	// nodeFile holds what this node handed out: the records of published CSI volumes and the
	// Vault lease ids behind them. Neither is rebuildable from the sources, but losing them
	// only costs refreshes and revocations, not data (see openStores).
	nodeFile = "node.db"
	// legacyNodeFile is nodeFile's name in earlier releases; it is renamed on first start.
	legacyNodeFile = "cache.db"
	// volumesFile holds the records of published CSI volumes, committed without fsync so a
	// publish does not wait for the disk: a record lost to a power cut is written again by
	// the volume's next republish (requiresRepublish). Earlier releases kept these records
	// in node.db; the CSI driver moves them here once (csi.Config.LegacyStore).
	volumesFile = "volumes.db"
)

// openStores opens state.db, node.db and, with the CSI driver, volumes.db with the KEK.
func (d *daemon) openStores(kek tink.AEAD, commits *storeMetrics) error {
	cfg := d.cfg
	statePath := filepath.Join(cfg.DataDir, stateFile)
	var err error
	d.state, err = store.Open(store.Config{Path: statePath, KEK: kek, LockTimeout: cfg.Store.LockTimeout, Logger: d.log, OnCommit: commits.onCommit(storeState)})
	switch {
	case errors.Is(err, store.ErrUnreadable), errors.Is(err, store.ErrCorrupt):
		// This file is the only copy of the embedded secrets and admin grants: never
		// replace it behind the operator's back.
		return fmt.Errorf("%w\nthe state store %s holds the only copy of the embedded secrets and admin grants, so it is not replaced automatically; restore it from a backup, or move it aside (mv %s %s.broken) to start with an empty store", err, statePath, statePath, statePath)
	case err != nil:
		return kekUnavailable(err, statePath, cfg.KEK.Provider) // kek.go
	}

	nodePath := filepath.Join(cfg.DataDir, nodeFile)
	if err := migrateNodeFile(cfg.DataDir, d.log); err != nil {
		return err
	}
	// An unreadable node.db is moved aside rather than stopping the daemon: a daemon that
	// refuses to start blocks every new pod on the node, whereas what is lost is bounded and
	// said here, so the operator can act on it.
	var quarantined string
	d.node, quarantined, err = store.OpenOrQuarantine(store.Config{Path: nodePath, KEK: kek, LockTimeout: cfg.Store.LockTimeout, Logger: d.log, OnCommit: commits.onCommit(storeNode)})
	if err != nil {
		return kekUnavailable(err, nodePath, cfg.KEK.Provider) // kek.go
	}
	if quarantined != "" {
		d.log.Error("node store was unreadable and started empty: Vault leases handed out before are no longer renewed or revoked by this node (they expire at their Vault TTL; revoke them by prefix to end them now), and volumes whose records it still held (written by a release before volumes.db) are no longer refreshed until their next republish records them again",
			slog.String("path", nodePath), slog.String("kept_as", quarantined))
	}
	if cfg.CSI.Socket == "" {
		return nil
	}
	volumesPath := filepath.Join(cfg.DataDir, volumesFile)
	d.volumes, quarantined, err = store.OpenOrQuarantine(store.Config{Path: volumesPath, KEK: kek, LockTimeout: cfg.Store.LockTimeout, Logger: d.log,
		OnCommit: commits.onCommit(storeVolumes), NoSync: true})
	if err != nil {
		return kekUnavailable(err, volumesPath, cfg.KEK.Provider) // kek.go
	}
	if quarantined != "" {
		d.log.Error("volume store was unreadable and started empty: each volume published before is recorded again at its next republish; until then it is not rotated (its files stay)",
			slog.String("path", volumesPath), slog.String("kept_as", quarantined))
	}
	return nil
}

// migrateNodeFile renames a cache.db of an older release to node.db, once. A node.db that
// already exists wins; a cache.db left beside it is reported and not read.
func migrateNodeFile(dir string, log *slog.Logger) error {
	legacy, current := filepath.Join(dir, legacyNodeFile), filepath.Join(dir, nodeFile)
	if _, err := os.Lstat(legacy); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("node store: %w", err)
	}
	switch _, err := os.Lstat(current); {
	case err == nil:
		log.Warn("both node.db and cache.db exist: using node.db; cache.db (an older release's name) is not read and may be removed", slog.String("path", legacy))
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("node store: %w", err)
	}
	if err := os.Rename(legacy, current); err != nil {
		return fmt.Errorf("node store: rename %s to %s: %w", legacy, current, err)
	}
	if f, err := os.Open(dir); err == nil {
		_ = f.Sync() // the rename is durable before anything is written under the new name
		_ = f.Close()
	}
	log.Info("renamed the node store to its current name", slog.String("from", legacy), slog.String("to", current))
	return nil
}
