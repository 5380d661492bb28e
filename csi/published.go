package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/store"
)

// What happens to a volume after its first publish: its watch follows the secrets through the
// broker and rewrites the files on every change, an authoritative error or a pod gone from the
// node removes them (revocation), and Recover takes the volumes back under management after a
// restart. Rotation itself — deciding when a secret is renewed or re-issued — is the broker's
// cache (broker/rotate); this file only keeps published volumes current.

// startWatch follows v's secrets through the broker and rewrites v on every change. The
// goroutine is owned by the driver (d.wg) and stopped by stopWatch or Close.
func (d *Driver) startWatch(v *volume) {
	v.mu.Lock()
	if v.revoked || v.stop != nil {
		v.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(d.ctx)
	done := make(chan struct{})
	w := v.w
	v.stop = func() { cancel(); <-done }
	v.mu.Unlock()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(done)
		d.watch(ctx, v, w)
	}()
}

// stopWatch stops v's watch and waits for it. It must not be called with v.mu held.
func (d *Driver) stopWatch(v *volume) {
	v.mu.Lock()
	stop := v.stop
	v.stop = nil
	v.mu.Unlock()
	if stop != nil {
		stop()
	}
}

func (d *Driver) watch(ctx context.Context, v *volume, w identity.Workload) {
	log := d.log.With(slog.String("volume_id", v.id), slog.String("pod_uid", v.pod.UID))
	backoff := d.cfg.MinBackoff
	for {
		delivered := false
		err := d.cfg.Broker.Watch(consumerCtx(ctx, v.id), w, v.names, grant.DeliveryCSI, func(name string, s *source.Secret) error {
			delivered = true
			d.deliver(ctx, v, name, s)
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		switch {
		case errors.Is(err, broker.ErrPermissionDenied), source.IsAuthoritative(err):
			// Grant withdrawn, or the source's definite answer (secret deleted, access
			// refused): the pod must not keep the files. Transient errors keep them.
			log.Warn("volume revoked: files removed", slog.String("reason", err.Error()))
			d.revoke(v)
			return
		case errors.Is(err, broker.ErrUnauthenticated), errors.Is(err, broker.ErrInvalidArgument):
			// The identity expired: the files stay; the next republish brings a fresh token.
			log.Info("volume rotation paused until the next republish", slog.String("reason", err.Error()))
			return
		}
		if delivered {
			backoff = d.cfg.MinBackoff
		}
		log.Warn("volume rotation interrupted; retrying", slog.String("reason", errText(err)), slog.Duration("backoff", backoff))
		t := d.cfg.Clock.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		backoff = min(2*backoff, d.cfg.MaxBackoff)
	}
}

// errText is an error's caller-safe text: broker errors are; anything else is summarised.
func errText(err error) string {
	var be *broker.Error
	if errors.As(err, &be) {
		return be.Error()
	}
	if err == nil {
		return "watch ended"
	}
	return "internal error"
}

// deliver records a secret's value and rewrites the volume once every secret has a value and
// one of them changed.
func (d *Driver) deliver(ctx context.Context, v *volume, name string, s *source.Secret) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.revoked || ctx.Err() != nil {
		return
	}
	v.secrets[name] = s
	changed := false
	for _, n := range v.names {
		cur, ok := v.secrets[n]
		if !ok {
			return
		}
		if v.versions[n] != cur.Version {
			changed = true
		}
	}
	if !changed && v.writer.Written() {
		return
	}
	tmpls, err := d.templatesFor(v.req)
	var payload map[string]File
	if err == nil {
		payload, err = buildPayload(v.req, v.names, v.secrets, v.gid, tmpls)
	}
	if err != nil {
		d.metrics.rotationWrites.WithLabelValues(resultError).Inc()
		d.log.Error("volume rotation: the new value cannot be laid out; old files kept", slog.String("volume_id", v.id), slog.String("reason", err.Error()))
		return
	}
	start := time.Now()
	if err := v.writer.Write(payload); err != nil {
		d.metrics.rotationWrites.WithLabelValues(resultError).Inc()
		d.log.Error("volume rotation: write failed; old files kept", slog.String("volume_id", v.id), slog.Any("error", err))
		return
	}
	d.metrics.writeSeconds.Observe(time.Since(start).Seconds())
	d.metrics.rotationWrites.WithLabelValues(resultOK).Inc()
	versions := make(map[string]string, len(v.names))
	for _, n := range v.names {
		versions[n] = v.secrets[n].Version
	}
	v.versions = versions
	rec := record{VolumeID: v.id, Target: v.target, Request: v.req, Pod: v.pod, GID: v.gid, Names: v.names,
		Workload: toRecordWorkload(v.w), Versions: versions}
	if err := d.volumes.Put(v.id, rec); err != nil {
		d.log.Error("record volume", slog.String("volume_id", v.id), slog.Any("error", err))
	}
	d.log.Info("volume rotated", slog.String("volume_id", v.id))
}

// revoke removes v's files and marks it revoked; a later successful publish restores it.
func (d *Driver) revoke(v *volume) {
	v.mu.Lock()
	v.revoked = true
	v.secrets = map[string]*source.Secret{}
	v.versions = map[string]string{}
	err := v.writer.Clear()
	v.mu.Unlock()
	if err != nil {
		d.log.Error("clear revoked volume", slog.String("volume_id", v.id), slog.Any("error", err))
	}
	if err := d.save(v); err != nil {
		d.log.Error("record volume", slog.String("volume_id", v.id), slog.Any("error", err))
	}
	d.releaseLeases(v.id)
}

// consumerCtx is ctx under which the broker counts the volume id as the consumer of the
// leased credentials it reads: they live from the volume's publish to its unpublish or the
// removal of its files, across the retries of its watch.
func consumerCtx(ctx context.Context, id string) context.Context {
	return broker.WithConsumer(ctx, broker.ConsumerVolume+id)
}

// releaseLeases gives up the leased credentials volume id held; the broker revokes those
// that no other consumer holds.
func (d *Driver) releaseLeases(id string) {
	if n := d.cfg.Broker.ReleaseConsumer(broker.ConsumerVolume + id); n > 0 {
		d.log.Info("volume's leased credentials released", slog.String("volume_id", id), slog.Int("released", n))
	}
}

// Run checks every PodCheckInterval that the volumes' pods still run here, until ctx is done.
// It then stops every watch (files stay: the next daemon picks them up). Call Recover first.
func (d *Driver) Run(ctx context.Context) error {
	defer d.Close()
	if d.cfg.Pods == nil {
		<-ctx.Done()
		return nil
	}
	t := d.cfg.Clock.NewTicker(d.cfg.PodCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			d.checkPods()
		}
	}
}

// Close stops every watch and waits for them. It is idempotent.
func (d *Driver) Close() {
	d.cancel()
	d.wg.Wait()
}

// Recover finds the volumes recorded before a restart, keeps their files and resumes their
// rotation, and binds the workload socket into them again. Call it once, after the workload
// socket listens and before serving publishes. A record whose target is gone is dropped.
func (d *Driver) Recover() error {
	if d.cfg.LegacyStore != nil {
		if err := d.migrate(); err != nil {
			// The records stay in the legacy store and the move is tried at the next
			// start; until then those volumes are recorded again by their next republish.
			d.log.Error("volume records not moved from the legacy store", slog.Any("error", err))
		}
	}
	recs, err := d.volumes.List()
	if err != nil {
		return err
	}
	n := 0
	for _, rc := range recs {
		r := rc.Value
		if rc.Err != nil || r.VolumeID != rc.Key {
			d.log.Error("volume record unreadable; dropped", slog.String("volume_id", rc.Key))
			_ = d.volumes.Delete(rc.Key)
			continue
		}
		log := d.log.With(slog.String("volume_id", r.VolumeID), slog.String("pod_uid", r.Pod.UID))
		if _, err := os.Lstat(r.Target); err != nil || d.checkTarget(r.Target, r.Pod.UID) != nil {
			log.Info("recorded volume is gone; record dropped")
			_ = d.volumes.Delete(r.VolumeID)
			continue
		}
		w, err := r.Workload.workload()
		if err != nil {
			log.Error("volume record unreadable; dropped")
			_ = d.volumes.Delete(r.VolumeID)
			continue
		}
		root, err := d.cfg.Mounter.Open(r.Target)
		if errors.Is(err, ErrNotMounted) {
			// The node rebooted, or someone unmounted it: its files are gone, and writing
			// them again into the bare directory would put secrets on the kubelet's disk.
			log.Warn("recorded volume is no longer mounted; record dropped")
			_ = d.volumes.Delete(r.VolumeID)
			continue
		}
		if err != nil {
			log.Error("recorded volume cannot be opened", slog.Any("error", err))
			continue
		}
		if !ownsTarget(r.Target, r.VolumeID) {
			// A volume published before volumes carried their marker.
			if err := markVolume(root, r.VolumeID); err != nil {
				log.Warn("volume marker not written", slog.Any("error", err))
			}
		}
		aw, err := NewAtomicWriter(root, r.GID, d.cfg.Clock.Now)
		if err != nil {
			log.Error("recorded volume cannot be opened", slog.Any("error", err))
			continue
		}
		v := &volume{id: r.VolumeID, target: r.Target, req: r.Request, pod: r.Pod, gid: r.GID, names: r.Names, w: w,
			writer: aw, secrets: map[string]*source.Secret{}, versions: r.Versions, revoked: r.Revoked}
		if v.versions == nil || !aw.Written() {
			v.versions = map[string]string{}
		}
		// The daemon's workload socket is a new file since the restart: bind it again.
		d.bindSocket(v, log)
		d.mu.Lock()
		d.vols[v.id] = v
		d.mu.Unlock()
		d.startWatch(v)
		n++
	}
	d.mu.Lock()
	d.metrics.volumes.Set(float64(len(d.vols)))
	d.mu.Unlock()
	if n > 0 {
		d.log.Info("volumes recovered", slog.Int("volumes", n))
	}
	return nil
}

// migrate moves the volume records of the legacy store into the volume store: a record the
// volume store already holds (a move interrupted after its copy) is kept as it is, since it
// may be newer. The copy is flushed to disk before the legacy records are deleted, so a power
// cut in between leaves them in one file or both, never in neither.
func (d *Driver) migrate() error {
	items, err := d.legacy.List()
	if err != nil {
		return fmt.Errorf("list legacy volume records: %w", err)
	}
	if len(items) == 0 {
		return nil
	}
	copied := 0
	err = d.volumes.Update(func(tx store.TxBucket[record]) error {
		for _, it := range items {
			if it.Err != nil {
				continue // Recover would drop it anyway
			}
			if _, err := tx.Get(it.Key); err == nil {
				continue
			} else if !errors.Is(err, store.ErrNotFound) {
				return err
			}
			if err := tx.Put(it.Key, it.Value); err != nil {
				return err
			}
			copied++
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("copy volume records: %w", err)
	}
	if err := d.cfg.Store.Sync(); err != nil {
		return fmt.Errorf("flush volume records: %w", err)
	}
	err = d.legacy.Update(func(tx store.TxBucket[record]) error {
		for _, it := range items {
			if err := tx.Delete(it.Key); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete legacy volume records: %w", err)
	}
	d.log.Info("volume records moved to the volume store", slog.Int("records", copied), slog.Int("legacy_records", len(items)))
	return nil
}

// checkPods stops and clears the volumes of pods no longer on this node.
func (d *Driver) checkPods() {
	p := d.cfg.Pods
	if !p.Synced() {
		return
	}
	if s, ok := p.(interface{ Stale() bool }); ok && s.Stale() {
		return
	}
	d.mu.Lock()
	vols := make([]*volume, 0, len(d.vols))
	for _, v := range d.vols {
		vols = append(vols, v)
	}
	d.mu.Unlock()
	for _, v := range vols {
		if _, ok := p.PodByUID(v.pod.UID); ok {
			continue
		}
		v.mu.Lock()
		revoked := v.revoked
		v.mu.Unlock()
		if revoked {
			continue
		}
		d.log.Warn("pod gone from this node: volume files removed", slog.String("volume_id", v.id), slog.String("pod_uid", v.pod.UID))
		d.stopWatch(v)
		d.revoke(v)
	}
}
