package main

import (
	"log/slog"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/server"
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

// trackedLeases lists the Vault source's leases for `keywarden status`.
type trackedLeases struct{ vault *vault.Source }

func (l trackedLeases) TrackedLeases() []server.TrackedLease {
	ls := l.vault.Tracked()
	out := make([]server.TrackedLease, 0, len(ls))
	for _, x := range ls {
		out = append(out, server.TrackedLease{LeaseID: x.LeaseID, Path: x.Ref, Owner: x.Owner, State: x.State, ExpiresAt: x.ExpiresAt})
	}
	return out
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
