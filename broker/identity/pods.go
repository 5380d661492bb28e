package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// PodIndexConfig configures a PodIndex.
type PodIndexConfig struct {
	// Client talks to the apiserver. Required.
	Client kubernetes.Interface
	// NodeName limits the watch to this node's pods (field selector spec.nodeName). Required.
	NodeName string
	// Logger receives apiserver outages and recoveries. Required.
	Logger *slog.Logger
	// Metrics records whether the index runs on cached state; nil disables them.
	Metrics *Metrics
	// ProbeInterval is how often reachability is re-checked during an outage. Default 5s.
	ProbeInterval time.Duration
}

// PodIndex is a node-scoped pod informer indexed by UID: one watch instead of a GET per
// request. During an apiserver outage it keeps answering from its last state (and says so in
// the logs and the keywarden_identity_apiserver_unreachable metric); client-go re-lists on
// recovery.
type PodIndex struct {
	cfg      PodIndexConfig
	informer cache.SharedIndexInformer
	factory  informers.SharedInformerFactory
	synced   atomic.Bool
	down     atomic.Bool
}

var _ PodLookup = (*PodIndex)(nil)

const uidIndex = "uid"

// NewPodIndex returns a PodIndex; Run starts it.
func NewPodIndex(cfg PodIndexConfig) (*PodIndex, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("pod index: client is required")
	case cfg.NodeName == "":
		return nil, errors.New("pod index: node name is required")
	case cfg.Logger == nil:
		return nil, errors.New("pod index: logger is required")
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = 5 * time.Second
	}
	f := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName).String()
	}))
	inf := f.Core().V1().Pods().Informer()
	if err := inf.AddIndexers(cache.Indexers{uidIndex: func(obj any) ([]string, error) {
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return nil, nil
		}
		return []string{string(p.UID)}, nil
	}}); err != nil {
		return nil, fmt.Errorf("pod index: %w", err)
	}
	pi := &PodIndex{cfg: cfg, informer: inf, factory: f}
	if err := inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		pi.markDown(err.Error())
	}); err != nil {
		return nil, fmt.Errorf("pod index: %w", err)
	}
	return pi, nil
}

// Run starts the informer and blocks until ctx is done.
func (p *PodIndex) Run(ctx context.Context) error {
	p.factory.Start(ctx.Done())
	defer p.factory.Shutdown()
	if cache.WaitForCacheSync(ctx.Done(), p.informer.HasSynced) {
		p.synced.Store(true)
		p.cfg.Logger.Info("pods of this node loaded", slog.String("node", p.cfg.NodeName), slog.Int("pods", len(p.informer.GetStore().ListKeys())))
	}
	t := time.NewTicker(p.cfg.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			// client-go retries a refused watch quietly, so reachability is probed
			// rather than inferred from watch errors alone.
			switch up := p.reachable(ctx); {
			case up && p.down.Load():
				p.down.Store(false)
				p.cfg.Metrics.apiserverUnreachable(false)
				p.cfg.Logger.Info("apiserver reachable again: pod watch resumes")
			case !up && ctx.Err() == nil:
				p.markDown("probe of /readyz failed")
			}
		}
	}
}

func (p *PodIndex) reachable(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	rc := p.cfg.Client.Discovery().RESTClient()
	if rc == nil { // fake clientsets have no transport
		return true
	}
	_, err := rc.Get().AbsPath("/readyz").DoRaw(ctx)
	return err == nil
}

func (p *PodIndex) markDown(reason string) {
	if !p.down.Swap(true) {
		p.cfg.Logger.Warn("apiserver unreachable: pod checks use the last known pods of this node", slog.String("error", reason))
		p.cfg.Metrics.apiserverUnreachable(true)
	}
}

// OnDelete calls fn with the UID of every pod of this node that the informer sees deleted
// (including a deletion noticed only at a re-list). Call it before Run; fn must not block.
func (p *PodIndex) OnDelete(fn func(uid string)) error {
	_, err := p.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{DeleteFunc: func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if pod, ok := obj.(*corev1.Pod); ok && pod.UID != "" {
			fn(string(pod.UID))
		}
	}})
	if err != nil {
		return fmt.Errorf("pod index: %w", err)
	}
	return nil
}

// Synced implements PodLookup.
func (p *PodIndex) Synced() bool { return p.synced.Load() }

// Stale reports whether the apiserver is currently unreachable.
func (p *PodIndex) Stale() bool { return p.down.Load() }

// PodByUID implements PodLookup.
func (p *PodIndex) PodByUID(uid string) (Pod, bool) {
	objs, err := p.informer.GetIndexer().ByIndex(uidIndex, uid)
	if err != nil || len(objs) != 1 {
		return Pod{}, false
	}
	// A terminating pod still runs (and may need its secrets to shut down); it leaves the
	// index when the apiserver deletes the object.
	pod, ok := objs[0].(*corev1.Pod)
	if !ok {
		return Pod{}, false
	}
	return Pod{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID), NodeName: pod.Spec.NodeName, ServiceAccount: pod.Spec.ServiceAccountName}, true
}
