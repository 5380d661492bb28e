package server

import (
	"sync"

	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/internal/grpcx"
)

// Values of the limit label of keywarden_grpc_watch_streams_refused_total.
const (
	limitPerWorkload = "per_workload"
	limitTotal       = "total"
)

// watchSlots counts the WatchSecrets streams open on one workload server, per workload and in
// total, so that one breached workload cannot hold the daemon's memory with streams spread
// over many connections (MaxConcurrentStreams bounds only one connection).
type watchSlots struct {
	perWorkload, total int
	metrics            *Metrics // nil records nothing

	mu   sync.Mutex
	open map[string]int // by watchKey; entries at zero are deleted, so pod churn leaves none
	n    int
}

func newWatchSlots(l Limits, m *Metrics) *watchSlots {
	per, total := l.watchCaps()
	return &watchSlots{perWorkload: per, total: total, metrics: m, open: map[string]int{}}
}

// watchKey is what the per-workload cap counts by: the pod's UID when the token is bound
// to a pod. The pod is the unit that opens streams and the unit a breach takes over; counting
// by service account instead would let one breached replica starve its healthy siblings on
// the node, which share the account, and would make the cap shrink per pod as replicas grow.
// A token with no pod binding (identity.requirePodBinding off) counts against its service
// account, so every such pod of the account shares one budget: stricter, never looser. The
// prefixes keep the two kinds of key apart.
func watchKey(w identity.Workload) string {
	if w.PodUID != "" {
		return "pod:" + w.PodUID
	}
	return "sa:" + w.Namespace + "/" + w.ServiceAccount
}

// acquire takes a slot for a stream of w, or refuses at once with ResourceExhausted naming the
// limit and its config key. The caller must call release when the stream ends, however it
// ends (defer); release is idempotent.
func (s *watchSlots) acquire(w identity.Workload) (release func(), err error) {
	key := watchKey(w)
	s.mu.Lock()
	switch {
	case s.open[key] >= s.perWorkload:
		s.mu.Unlock()
		s.metrics.refuseWatch(limitPerWorkload)
		return nil, grpcx.Errorf(grpcx.ErrResourceExhausted, "too many watch streams for this workload (limit %d, limits.maxWatchesPerWorkload)", s.perWorkload)
	case s.n >= s.total:
		s.mu.Unlock()
		s.metrics.refuseWatch(limitTotal)
		return nil, grpcx.Errorf(grpcx.ErrResourceExhausted, "too many watch streams on this node (limit %d, limits.maxWatches)", s.total)
	}
	s.open[key]++
	s.n++
	s.mu.Unlock()
	s.metrics.addWatches(1)
	return sync.OnceFunc(func() {
		s.mu.Lock()
		if s.open[key]--; s.open[key] <= 0 {
			delete(s.open, key)
		}
		s.n--
		s.mu.Unlock()
		s.metrics.addWatches(-1)
	}), nil
}
