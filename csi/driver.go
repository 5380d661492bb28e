package csi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/store"
)

// Broker is the part of broker.Broker the driver uses.
type Broker interface {
	Authenticate(ctx context.Context, tok identity.Token) (identity.Workload, error)
	GetSecret(ctx context.Context, w identity.Workload, name string, d grant.Delivery) (*source.Secret, error)
	Watch(ctx context.Context, w identity.Workload, names []string, d grant.Delivery, send broker.SendFunc) error
	ExpandSecrets(grantName string, names []string) ([]string, error)
	GrantTemplates(grantName string) []grant.TemplateFile
	// ReleaseConsumer gives up the leased credentials a volume held (broker.WithConsumer).
	ReleaseConsumer(id string) int
}

var _ Broker = (*broker.Broker)(nil)

// PodLookup tells whether a pod still runs on this node (identity.PodIndex).
type PodLookup interface {
	PodByUID(uid string) (identity.Pod, bool)
	Synced() bool
}

// Defaults.
const (
	DefaultDriverName       = "keywarden.dev"
	DefaultAudience         = "keywarden"
	DefaultPodCheckInterval = 10 * time.Second
	DefaultMinBackoff       = time.Second
	DefaultMaxBackoff       = time.Minute
	defaultFileMode         = fs.FileMode(0o400)
	defaultGroupFileMode    = fs.FileMode(0o440)
)

// Config configures a Driver.
type Config struct {
	// Broker verifies tokens and delivers secrets. Required.
	Broker Broker
	// Store records published volumes (in a typed bucket) so a restarted daemon finds them:
	// the volume store, volumes.db. It may be opened with store.Config.NoSync: a record a
	// power cut loses is written again by the volume's next republish (kubelet republishes
	// every volume of a requiresRepublish driver periodically), so a publish need not wait
	// for a disk flush. Required.
	Store *store.DB
	// LegacyStore, when set, is the store that held the volume records before they had their
	// own file (node.db): Recover moves its records into Store once, flushing Store before it
	// deletes them from LegacyStore, so no record is lost on the way. Optional.
	LegacyStore *store.DB
	// Mounter prepares volume directories. Required.
	Mounter Mounter
	// KubeletRoot is kubelet's root directory (/var/lib/kubelet); target paths must be
	// <KubeletRoot>/pods/<pod UID>/volumes/kubernetes.io~csi/<volume>/mount. Required, absolute.
	KubeletRoot string
	// NodeID is this node's name, returned by NodeGetInfo. Required.
	NodeID string
	// DriverName is the CSI driver name; default DefaultDriverName.
	DriverName string
	// Version is reported by GetPluginInfo.
	Version string
	// Audience of the pod token taken from the volume context; default DefaultAudience.
	Audience string
	// APISocket is the workload API socket bound into volumes; empty: no socket in volumes.
	APISocket string
	// Pods, when set, lets the driver stop and clear the volumes of pods gone from this node.
	Pods PodLookup
	// PodCheckInterval is how often Pods is consulted; default DefaultPodCheckInterval.
	PodCheckInterval time.Duration
	// MinBackoff and MaxBackoff bound the retry delay of a volume's watch after a source
	// error; defaults DefaultMinBackoff and DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// Metrics records volumes, publishes and writes. Required.
	Metrics *Metrics
	// Logger receives operational events. Required.
	Logger *slog.Logger
	// Clock drives backoff and pod checks; default the real clock.
	Clock clock.WithTicker
}

// Driver is the CSI node driver: it publishes, rotates and unpublishes volumes.
type Driver struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	volumes store.Bucket[record] // one sealed record per published volume, keyed by its ID
	// legacy is the volume bucket of Config.LegacyStore, or the zero Bucket.
	legacy store.Bucket[record]

	locks [64]sync.Mutex // per-volume-ID publish/unpublish serialization, striped

	mu   sync.Mutex
	vols map[string]*volume

	ctx    context.Context // parent of every volume watch; canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// hooks for tests: called between writing a new volume's files and recording it.
	afterWrite func()
}

// volume is one published volume.
type volume struct {
	id, target string
	req        Request
	pod        PodInfo
	gid        int
	names      []string

	mu       sync.Mutex // guards the fields below and writes to the volume
	w        identity.Workload
	writer   *AtomicWriter
	secrets  map[string]*source.Secret
	versions map[string]string // versions written
	revoked  bool

	stop func() // stops the watch and waits for it; nil when not watching
}

// New returns a Driver.
func New(cfg Config) (*Driver, error) {
	switch {
	case cfg.Broker == nil:
		return nil, errors.New("csi: broker is required")
	case cfg.Store == nil:
		return nil, errors.New("csi: store is required")
	case cfg.Mounter == nil:
		return nil, errors.New("csi: mounter is required")
	case cfg.NodeID == "":
		return nil, errors.New("csi: node ID is required")
	case cfg.Metrics == nil:
		return nil, errors.New("csi: metrics are required")
	case cfg.Logger == nil:
		return nil, errors.New("csi: logger is required")
	case !filepath.IsAbs(cfg.KubeletRoot):
		return nil, errors.New("csi: kubelet root must be an absolute path")
	}
	if cfg.DriverName == "" {
		cfg.DriverName = DefaultDriverName
	}
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	if cfg.PodCheckInterval <= 0 {
		cfg.PodCheckInterval = DefaultPodCheckInterval
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	cfg.KubeletRoot = filepath.Clean(cfg.KubeletRoot)
	ctx, cancel := context.WithCancel(context.Background())
	d := &Driver{cfg: cfg, log: cfg.Logger, metrics: cfg.Metrics, volumes: store.NewBucket[record](cfg.Store, volumesBucket), vols: map[string]*volume{}, ctx: ctx, cancel: cancel}
	if cfg.LegacyStore != nil {
		if cfg.LegacyStore == cfg.Store {
			cancel()
			return nil, errors.New("csi: the legacy store must be another store than Store")
		}
		d.legacy = store.NewBucket[record](cfg.LegacyStore, volumesBucket)
	}
	return d, nil
}

func (d *Driver) lock(id string) func() {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	m := &d.locks[h.Sum32()%uint32(len(d.locks))]
	m.Lock()
	return m.Unlock
}

func (d *Driver) get(id string) *volume {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.vols[id]
}

// Volumes is the number of published volumes.
func (d *Driver) Volumes() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.vols)
}

// PublishRequest is a NodePublishVolume request in domain terms.
type PublishRequest struct {
	VolumeID   string
	TargetPath string
	// VolumeContext is the raw volume_context (attributes, pod info, tokens).
	VolumeContext map[string]string
	// GID is the pod's fsGroup (volume_mount_group), or -1.
	GID int
}

// checkTarget confines target to kubelet's directory for the pod's CSI volumes
// (CVE-2020-8568): it must be exactly <root>/pods/<uid>/volumes/kubernetes.io~csi/<vol>/mount,
// written without "..", "." or duplicate separators, and no existing component may be a
// symlink that leads elsewhere.
func (d *Driver) checkTarget(target, podUID string) error {
	if !filepath.IsAbs(target) || filepath.Clean(target) != target || strings.IndexByte(target, 0) >= 0 {
		return invalid("target_path must be a clean absolute path")
	}
	prefix := filepath.Join(d.cfg.KubeletRoot, "pods", podUID, "volumes", "kubernetes.io~csi") + "/"
	rest, ok := strings.CutPrefix(target, prefix)
	if !ok {
		return invalid("target_path is not in kubelet's volume directory for pod %s", podUID)
	}
	vol, last, ok := strings.Cut(rest, "/")
	if !ok || last != "mount" || vol == "" || vol == "." || vol == ".." {
		return invalid("target_path must end in /kubernetes.io~csi/<volume>/mount")
	}
	// The longest existing ancestor must resolve to itself under the resolved root.
	p := target
	for {
		if _, err := os.Lstat(p); err == nil {
			break
		}
		parent := filepath.Dir(p)
		if parent == p {
			break
		}
		p = parent
	}
	if p != d.cfg.KubeletRoot && !strings.HasPrefix(p, d.cfg.KubeletRoot+"/") {
		// Nothing under the kubelet root exists yet: no symlink can be planted in it.
		return nil
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return invalid("target_path cannot be resolved")
	}
	root, err := filepath.EvalSymlinks(d.cfg.KubeletRoot)
	if err != nil {
		return invalid("target_path cannot be resolved")
	}
	if real != root+strings.TrimPrefix(p, d.cfg.KubeletRoot) {
		return invalid("target_path leads through a symlink")
	}
	return nil
}

// Publish makes the volume: first publish fetches every secret (any failure fails the publish
// with nothing written), writes the files, records the volume and starts rotating it. A
// republish with the same arguments refreshes the volume's identity; during an outage it keeps
// the old files and succeeds.
func (d *Driver) Publish(ctx context.Context, r PublishRequest) (err error) {
	began := time.Now()
	var outcome string // the result label of a success that is not a plain publish
	defer func() {
		d.metrics.publishes.WithLabelValues(publishResult(outcome, err)).Inc()
		d.metrics.publishSeconds.Observe(time.Since(began).Seconds())
	}()
	vc, err := ParseVolumeContext(r.VolumeContext, d.cfg.Audience)
	if err != nil {
		return err
	}
	if err := d.checkTarget(r.TargetPath, vc.Pod.UID); err != nil {
		return err
	}
	unlock := d.lock(r.VolumeID)
	defer unlock()
	log := d.log.With(slog.String("volume_id", r.VolumeID), slog.String("pod_uid", vc.Pod.UID))

	v := d.get(r.VolumeID)
	if v != nil && (v.target != r.TargetPath || v.pod.UID != vc.Pod.UID || v.gid != r.GID || !v.req.Equal(vc.Request)) {
		return fmt.Errorf("%w: volume %s", ErrAlreadyExists, r.VolumeID)
	}
	w, err := d.authenticate(ctx, vc)
	switch {
	case err != nil && v != nil && errors.Is(err, broker.ErrUnavailable) && v.isWritten():
		log.Warn("republish: identity check unavailable; keeping the volume's files")
		outcome = resultStale
		return nil
	case err != nil:
		return err
	case v != nil && v.isWritten():
		// Republish: new identity, same files; rotation keeps them current.
		d.refresh(v, w)
		outcome = resultRepublished
		return nil
	}

	names, secrets, payload, err := d.fetch(consumerCtx(ctx, r.VolumeID), w, vc.Request, r.GID)
	if err != nil {
		if v == nil || !v.isWritten() {
			// Leased credentials fetched before the failure have no volume files to hold them.
			d.releaseLeases(r.VolumeID)
		}
		return err
	}
	if v != nil {
		// Known but empty (revoked, or recovered without files): write it again.
		if err := d.rewrite(v, secrets, payload); err != nil {
			return err
		}
		d.refresh(v, w)
		return nil
	}
	v = &volume{id: r.VolumeID, target: r.TargetPath, req: vc.Request, pod: vc.Pod, gid: r.GID, names: names, w: w,
		secrets: secrets, versions: map[string]string{}}
	if err := d.create(v, payload, log); err != nil {
		d.releaseLeases(r.VolumeID)
		return err
	}
	log.Info("volume published", slog.Int("secrets", len(names)))
	return nil
}

// publishResult is the result label of a Publish that returned err; outcome names a success
// other than a plain publish.
func publishResult(outcome string, err error) string {
	switch {
	case err != nil:
		return resultOf(err)
	case outcome != "":
		return outcome
	}
	return resultOK
}

// authenticate verifies the volume's pod token and checks that it belongs to the pod kubelet
// named in the volume context.
func (d *Driver) authenticate(ctx context.Context, vc VolumeContext) (identity.Workload, error) {
	w, err := d.cfg.Broker.Authenticate(ctx, vc.Token)
	if err != nil {
		return identity.Workload{}, err
	}
	if w.PodUID != vc.Pod.UID || w.Namespace != vc.Pod.Namespace || (w.PodName != "" && w.PodName != vc.Pod.Name) {
		return identity.Workload{}, invalid("the token belongs to another pod than the one in volume_context")
	}
	return w, nil
}

// fetch gets every secret the request names for w and lays them out as files; any failure
// fails the whole publish.
func (d *Driver) fetch(ctx context.Context, w identity.Workload, req Request, gid int) ([]string, map[string]*source.Secret, map[string]File, error) {
	names, err := d.cfg.Broker.ExpandSecrets(req.Grant, req.Secrets)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	secrets := make(map[string]*source.Secret, len(names))
	for _, n := range names {
		s, err := d.cfg.Broker.GetSecret(ctx, w, n, grant.DeliveryCSI)
		if err != nil {
			return nil, nil, nil, err
		}
		secrets[n] = s
	}
	tmpls, err := d.templatesFor(req)
	if err != nil {
		return nil, nil, nil, payloadError{err}
	}
	payload, err := buildPayload(req, names, secrets, gid, tmpls)
	if err != nil {
		return nil, nil, nil, payloadError{err}
	}
	return names, secrets, payload, nil
}

// payloadError is a failure to lay the secrets out as files (counted as an invalid request:
// the volume's attributes do not fit the secrets). Its message is the cause's.
type payloadError struct{ error }

func (e payloadError) Unwrap() error { return e.error }

// create mounts v's target, writes its first files, records it and starts rotating it. On
// failure the target is torn down and nothing is recorded.
func (d *Driver) create(v *volume, payload map[string]File, log *slog.Logger) error {
	root, err := d.cfg.Mounter.Setup(v.target, v.gid)
	if err != nil {
		log.Error("volume setup failed", slog.Any("error", err))
		return fmt.Errorf("set up volume: %w", err)
	}
	fail := func(err error) error {
		if terr := d.cfg.Mounter.Teardown(v.target); terr != nil {
			log.Error("volume teardown after a failed publish", slog.Any("error", terr))
		}
		return err
	}
	if err := markVolume(root, v.id); err != nil {
		_ = root.Close()
		return fail(err)
	}
	aw, err := NewAtomicWriter(root, v.gid, d.cfg.Clock.Now)
	if err != nil {
		return fail(err)
	}
	v.writer = aw
	start := time.Now()
	if err := aw.Write(payload); err != nil {
		_ = aw.Close()
		return fail(fmt.Errorf("write volume: %w", err))
	}
	d.metrics.writeSeconds.Observe(time.Since(start).Seconds())
	for n, s := range v.secrets {
		v.versions[n] = s.Version
	}
	d.bindSocket(v, log)
	if d.afterWrite != nil {
		d.afterWrite()
	}
	if err := d.save(v); err != nil {
		_ = aw.Close()
		log.Error("record volume", slog.Any("error", err))
		return fail(fmt.Errorf("record volume: %w", err))
	}
	d.mu.Lock()
	d.vols[v.id] = v
	d.metrics.volumes.Set(float64(len(d.vols)))
	d.mu.Unlock()
	d.startWatch(v)
	return nil
}

// bindSocket binds the workload API socket into v when its request asks for it. A failure is
// logged, not returned: the files are what the pod needs most.
func (d *Driver) bindSocket(v *volume, log *slog.Logger) {
	if !v.req.APISocket || d.cfg.APISocket == "" {
		return
	}
	if err := d.cfg.Mounter.BindSocket(v.writer.root, d.cfg.APISocket, v.target); err != nil && !errors.Is(err, errors.ErrUnsupported) {
		log.Warn("workload socket not bound into the volume", slog.Any("error", err))
	}
}

func resultOf(err error) string {
	switch {
	case errors.Is(err, broker.ErrInvalidArgument), errors.Is(err, ErrInvalidRequest), errors.Is(err, ErrAlreadyExists), errors.As(err, new(payloadError)):
		return resultInvalid
	case errors.Is(err, broker.ErrUnauthenticated), errors.Is(err, broker.ErrPermissionDenied), errors.Is(err, broker.ErrNotFound):
		return resultDenied
	case errors.Is(err, broker.ErrUnavailable):
		return resultUnavailable
	}
	return resultError
}

func (v *volume) isWritten() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return !v.revoked && v.writer != nil && v.writer.Written()
}

// buildPayload lays the secrets out as files: <secret>/<key> unless the request maps the key
// elsewhere, plus the optional JSON bundle and the rendered templates: one payload, one swap.
func buildPayload(r Request, names []string, secrets map[string]*source.Secret, gid int, tmpls []fileTemplate) (map[string]File, error) {
	mode := r.Mode
	if mode == 0 {
		mode = defaultFileMode
		if gid >= 0 {
			mode = defaultGroupFileMode
		}
	}
	enc := func(b []byte) []byte {
		if r.Encoding == EncodingBase64 {
			return []byte(base64.StdEncoding.EncodeToString(b))
		}
		return slices.Clone(b)
	}
	out := map[string]File{}
	bundle := map[string]map[string]string{}
	for _, n := range names {
		s := secrets[n]
		if s == nil {
			return nil, fmt.Errorf("secret %q has no value", n)
		}
		bundle[n] = map[string]string{}
		for _, k := range s.Keys() {
			p, ok := r.Files[n+"/"+k]
			if !ok {
				p = n + "/" + k
			}
			if err := validateVolumePath(p); err != nil {
				return nil, invalid("secret %q: key %q cannot be a file name (%v); map it with the %q attribute", n, k, err, AttrFiles)
			}
			if _, dup := out[p]; dup {
				return nil, invalid("two keys map to the same file %q", p)
			}
			out[p] = File{Data: enc(s.Data[k]), Mode: mode}
			bundle[n][k] = string(enc(s.Data[k]))
		}
	}
	if r.Bundle != "" {
		if _, dup := out[r.Bundle]; dup {
			return nil, invalid("the bundle file %q is also a key's file", r.Bundle)
		}
		b, err := json.Marshal(bundle)
		if err != nil {
			return nil, fmt.Errorf("encode bundle: %w", err)
		}
		out[r.Bundle] = File{Data: b, Mode: mode}
	}
	if err := renderTemplates(tmpls, names, secrets, mode, out); err != nil {
		return nil, err
	}
	if err := checkPayload(out); err != nil {
		return nil, err
	}
	return out, nil
}

// rewrite writes payload (built from secrets) to v and remembers the versions.
func (d *Driver) rewrite(v *volume, secrets map[string]*source.Secret, payload map[string]File) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	start := time.Now()
	if err := v.writer.Write(payload); err != nil {
		return fmt.Errorf("write volume: %w", err)
	}
	d.metrics.writeSeconds.Observe(time.Since(start).Seconds())
	v.secrets = secrets
	v.versions = map[string]string{}
	for n, s := range secrets {
		v.versions[n] = s.Version
	}
	v.revoked = false
	return nil
}

// refresh puts a newly verified identity in force and restarts the volume's watch with it.
func (d *Driver) refresh(v *volume, w identity.Workload) {
	d.stopWatch(v)
	v.mu.Lock()
	v.w = w
	v.mu.Unlock()
	if err := d.save(v); err != nil {
		d.log.Error("record volume", slog.String("volume_id", v.id), slog.Any("error", err))
	}
	d.startWatch(v)
}

func (d *Driver) save(v *volume) error {
	v.mu.Lock()
	rec := record{VolumeID: v.id, Target: v.target, Request: v.req, Pod: v.pod, GID: v.gid, Names: v.names,
		Workload: toRecordWorkload(v.w), Versions: maps.Clone(v.versions), Revoked: v.revoked}
	v.mu.Unlock() // rec is encoded after this: it must share no map the volume may change
	return d.volumes.Put(v.id, rec)
}

// Unpublish removes the volume's files, mount and record. It acts only on what this driver
// made: the volume it recorded under volumeID at target or, when it has no record of volumeID
// (a crash between mount and record, a lost node store), a volume at target whose marker names
// volumeID, or an empty directory (what an unpublish killed after its unmount leaves).
// Anything else at target — another volume of this driver, another driver's mount, a plain
// directory with entries — is left alone, and the call succeeds as the CSI spec asks of an
// unknown volume: kubelet then finds the target still in use, and nothing of another volume
// is lost.
func (d *Driver) Unpublish(_ context.Context, volumeID, target string) error {
	unlock := d.lock(volumeID)
	defer unlock()
	v := d.get(volumeID)
	if v == nil || v.target != target {
		log := d.log.With(slog.String("volume_id", volumeID))
		switch {
		case v != nil:
			log.Warn("unpublish at a target the volume was not published to; nothing removed")
		case d.byTarget(target) != nil:
			log.Warn("unpublish of an unknown volume at another volume's target; nothing removed")
		case d.confined(target) && ownsTarget(target, volumeID):
			if err := d.cfg.Mounter.Teardown(target); err != nil {
				return fmt.Errorf("remove volume: %w", err)
			}
			log.Info("unrecorded volume removed")
		case d.confined(target) && emptyDir(target):
			// What an unpublish killed after the unmount leaves behind. rmdir removes
			// neither a mount point nor a directory with entries, so nothing is lost.
			if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
				log.Warn("empty target not removed", slog.Any("error", err))
			}
		}
		return nil
	}
	d.stopWatch(v)
	v.mu.Lock()
	_ = v.writer.Close()
	v.mu.Unlock()
	if err := d.cfg.Mounter.Teardown(v.target); err != nil {
		return fmt.Errorf("remove volume: %w", err)
	}
	if err := d.volumes.Delete(v.id); err != nil {
		return fmt.Errorf("delete volume record: %w", err)
	}
	d.mu.Lock()
	delete(d.vols, v.id)
	d.metrics.volumes.Set(float64(len(d.vols)))
	d.mu.Unlock()
	d.releaseLeases(v.id)
	d.log.Info("volume unpublished", slog.String("volume_id", v.id), slog.String("pod_uid", v.pod.UID))
	return nil
}

// byTarget returns the published volume at target, or nil.
func (d *Driver) byTarget(target string) *volume {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, v := range d.vols {
		if v.target == target {
			return v
		}
	}
	return nil
}

// markVolume writes the marker that names the volume's ID into its root.
func markVolume(root *os.Root, id string) error {
	if err := root.WriteFile(volumeMarker, []byte(id), 0o444); err != nil {
		return wrapWrite("mark volume", err)
	}
	return nil
}

// ownsTarget reports whether target is a volume of this driver whose marker names id.
func ownsTarget(target, id string) bool {
	root, err := os.OpenRoot(target)
	if err != nil {
		return false
	}
	defer root.Close()
	fi, err := root.Lstat(volumeMarker)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != int64(len(id)) {
		return false
	}
	b, err := root.ReadFile(volumeMarker)
	return err == nil && string(b) == id
}

// emptyDir reports whether target is a directory (not a symlink) with no entries.
func emptyDir(target string) bool {
	fi, err := os.Lstat(target)
	if err != nil || !fi.IsDir() {
		return false
	}
	entries, err := os.ReadDir(target)
	return err == nil && len(entries) == 0
}

// confined reports whether target has the shape of a kubelet CSI volume path under the root.
func (d *Driver) confined(target string) bool {
	rest, ok := strings.CutPrefix(target, filepath.Join(d.cfg.KubeletRoot, "pods")+"/")
	if !ok || filepath.Clean(target) != target {
		return false
	}
	parts := strings.Split(rest, "/")
	return len(parts) == 5 && validatePodUID(parts[0]) == nil && parts[1] == "volumes" && parts[2] == "kubernetes.io~csi" &&
		parts[3] != ".." && parts[3] != "." && parts[4] == "mount" && d.checkTarget(target, parts[0]) == nil
}
