package main

import (
	"log/slog"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vault"
)

// leaseReleaser gives up a leased credential whose last consumer went (broker/holds.go): the
// cache drops it first, so no refresh asks for it again, then the Vault source revokes its
// lease.
type leaseReleaser struct {
	engine *rotate.Engine
	vault  *vault.Source
}

var _ broker.LeaseReleaser = leaseReleaser{}

func (r leaseReleaser) Release(ref source.Ref) {
	if ref.Source != broker.VaultSourceName || r.vault == nil {
		return
	}
	r.engine.Drop(ref)
	r.vault.Release(ref.Path)
}

// newLeaseReleaser returns the releaser of the daemon's sources, or nil without Vault.
func newLeaseReleaser(engine *rotate.Engine, sources map[string]source.Source) broker.LeaseReleaser {
	v, ok := sources[broker.VaultSourceName].(*vault.Source)
	if !ok {
		return nil
	}
	return leaseReleaser{engine: engine, vault: v}
}

// releaseOnPodDeletion gives up the credentials of every pod the informer sees deleted.
func (d *daemon) releaseOnPodDeletion(log *slog.Logger, pods interface{ OnDelete(func(string)) error }) error {
	return pods.OnDelete(func(uid string) {
		if n := d.broker.PodGone(uid); n > 0 {
			log.Info("pod deleted: its leased credentials released", slog.String("pod_uid", uid), slog.Int("released", n))
		}
	})
}
