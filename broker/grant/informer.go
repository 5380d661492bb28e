package grant

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
)

// Resource is the plural resource name of AccessGrant.
const Resource = "accessgrants"

// GroupVersionResource of AccessGrant, for dynamic clients.
var GroupVersionResource = schema.GroupVersionResource{Group: GroupName, Version: Version, Resource: Resource}

// InformerSourceConfig configures an InformerSource.
type InformerSourceConfig struct {
	// Client reads AccessGrants from the apiserver. Required.
	Client dynamic.Interface
	// OnChange receives the valid grants after the first sync and after every change. Its
	// error (the broker refused the grants) is logged; the next change tries again. Required.
	OnChange func(*Set) error
	// Logger receives skipped objects and sync events. Required.
	Logger *slog.Logger
	// Resync is the informer's full resync period; 0 disables it (watch events suffice).
	Resync time.Duration
	// Settle coalesces bursts of events: a rebuild waits this long after an event.
	// Default 50ms.
	Settle time.Duration
}

// InformerSource is the Kubernetes grant source: it watches AccessGrant objects with a dynamic
// informer and hands the valid ones to OnChange as a Set. An object that does not convert or
// validate (the CRD's schema normally refuses it first) is logged, and:
//   - if an earlier version of the same object (same name and UID) was valid, that last valid
//     version stays in force: the last good config stays, so an edit that breaks a Deny grant
//     cannot widen access (THREATS.md);
//   - a brand-new object that never validated is skipped.
//
// Every other grant stays in force; a deleted object is withdrawn.
type InformerSource struct {
	cfg     InformerSourceConfig
	current atomic.Pointer[Set]
	synced  atomic.Bool

	mu        sync.Mutex
	invalid   map[string]string      // name → problem, for objects whose current version does not validate
	logged    map[string]string      // name → resourceVersion whose problem was logged
	lastValid map[string]AccessGrant // name → last version of the object that validated
}

// NewInformerSource returns an InformerSource with no grants; Run starts it.
func NewInformerSource(cfg InformerSourceConfig) (*InformerSource, error) {
	switch {
	case cfg.Client == nil:
		return nil, fmt.Errorf("%w: client is required", ErrInvalidConfig)
	case cfg.OnChange == nil:
		return nil, fmt.Errorf("%w: onChange is required", ErrInvalidConfig)
	case cfg.Logger == nil:
		return nil, fmt.Errorf("%w: logger is required", ErrInvalidConfig)
	case cfg.Resync < 0 || cfg.Settle < 0:
		return nil, fmt.Errorf("%w: negative duration", ErrInvalidConfig)
	}
	if cfg.Settle == 0 {
		cfg.Settle = 50 * time.Millisecond
	}
	s := &InformerSource{cfg: cfg, invalid: map[string]string{}, logged: map[string]string{}, lastValid: map[string]AccessGrant{}}
	empty, _ := NewSet(nil)
	s.current.Store(empty)
	return s, nil
}

// Current returns the valid grants last handed to OnChange.
func (s *InformerSource) Current() *Set { return s.current.Load() }

// HasSynced reports whether the first full list has been applied.
func (s *InformerSource) HasSynced() bool { return s.synced.Load() }

// Invalid returns the objects whose current version does not validate, by name, with the
// problem: skipped, or in force in their last valid version (Stale).
func (s *InformerSource) Invalid() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.invalid))
	for k, v := range s.invalid {
		out[k] = v
	}
	return out
}

// Run watches AccessGrants until ctx is done.
func (s *InformerSource) Run(ctx context.Context) error {
	factory := dynamicinformer.NewDynamicSharedInformerFactory(s.cfg.Client, s.cfg.Resync)
	inf := factory.ForResource(GroupVersionResource).Informer()
	changed := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    poke,
		UpdateFunc: func(_, obj any) { poke(obj) },
		DeleteFunc: poke,
	}); err != nil {
		return fmt.Errorf("accessgrant informer: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil // ctx done before the first list
	}
	s.cfg.Logger.Info("accessgrant informer synced")
	s.rebuild(inf.GetStore().List())
	s.synced.Store(true)
	timer := time.NewTimer(0)
	<-timer.C
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			timer.Reset(s.cfg.Settle)
		case <-timer.C:
			s.rebuild(inf.GetStore().List())
		}
	}
}

// Stale returns the names of the objects whose current version does not validate and whose
// last valid version is in force instead, sorted.
func (s *InformerSource) Stale() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for name := range s.invalid {
		if _, ok := s.lastValid[name]; ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// rebuild converts and validates every object and hands the valid ones (and the last valid
// version of each object that stopped validating) to OnChange.
func (s *InformerSource) rebuild(objs []any) {
	var grants []AccessGrant
	invalid := map[string]string{}
	versions := map[string]string{}
	s.mu.Lock()
	lastValid := make(map[string]AccessGrant, len(s.lastValid))
	stale := map[string]string{} // name → resourceVersion of the last valid version kept
	for _, o := range objs {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		name := u.GetName()
		g, err := FromUnstructured(u)
		if err != nil {
			invalid[name] = err.Error()
			versions[name] = u.GetResourceVersion()
			// The same object (a delete and re-create gives a new UID) was valid before:
			// keep that version in force rather than drop it.
			if prev, ok := s.lastValid[name]; ok && prev.UID == u.GetUID() {
				lastValid[name] = prev
				stale[name] = prev.ResourceVersion
				grants = append(grants, prev)
			}
			continue
		}
		lastValid[name] = *g
		grants = append(grants, *g)
	}
	s.mu.Unlock()
	set, err := NewSet(grants)
	if err != nil {
		// Validated one by one above, so only a duplicate name (impossible for objects of
		// one resource) gets here.
		s.cfg.Logger.Error("accessgrants not applied", slog.Any("error", err))
		return
	}
	s.mu.Lock()
	for name, problem := range invalid {
		if v, ok := s.logged[name]; !ok || v != versions[name] {
			if kept, ok := stale[name]; ok {
				s.cfg.Logger.Warn("accessgrant update does not validate; its last valid version stays in force",
					slog.String("grant", name), slog.String("problem", problem),
					slog.String("resource_version", versions[name]), slog.String("in_force_resource_version", kept))
			} else {
				s.cfg.Logger.Warn("accessgrant skipped: it does not validate; the other grants stay in force",
					slog.String("grant", name), slog.String("problem", problem))
			}
			s.logged[name] = versions[name]
		}
	}
	for name := range s.logged {
		if _, still := invalid[name]; !still {
			delete(s.logged, name)
		}
	}
	s.invalid = invalid
	s.lastValid = lastValid
	s.mu.Unlock()
	if err := s.cfg.OnChange(set); err != nil {
		s.cfg.Logger.Error("accessgrants refused by the broker; the previous grants stay in force", slog.Any("error", err))
		return
	}
	s.current.Store(set)
	names := make([]string, 0, set.Len())
	for _, g := range set.Grants() {
		names = append(names, g.Name)
	}
	slices.Sort(names)
	s.cfg.Logger.Debug("accessgrants applied", slog.Int("grants", len(names)), slog.Int("invalid", len(invalid)), slog.Int("stale", len(stale)))
}

// FromUnstructured converts an AccessGrant object read from the apiserver and validates it.
// Unknown fields are an error (the CRD's structural schema prunes them, so one here means a
// schema older or newer than this daemon). The error matches ErrInvalidGrant.
func FromUnstructured(u *unstructured.Unstructured) (*AccessGrant, error) {
	g := &AccessGrant{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, g, true); err != nil {
		return nil, Errors{{Detail: "does not convert: " + oneLine(err.Error())}}
	}
	// Server-side fields that the grant model does not use.
	g.ObjectMeta = metav1.ObjectMeta{Name: g.Name, Namespace: g.Namespace, UID: g.UID, ResourceVersion: g.ResourceVersion, Generation: g.Generation, Labels: g.Labels}
	if err := Validate(g); err != nil {
		return nil, err
	}
	return g, nil
}
