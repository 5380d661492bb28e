package broker

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

// Who holds a leased credential, and when it is given up.
//
// A leased Vault reference (a database or generic dynamic credential, or a PKI certificate)
// is held by consumers: a CSI volume (from its publish to its unpublish, or until its files
// are removed because the pod left or the grant was withdrawn), a watch stream (while it is
// open), and a pod that read it with GetSecret and no stream (while the pod exists). When the
// last consumer of a reference goes — the volume unpublished, the pod deleted, the grant
// withdrawn, the stream closed — the broker asks LeaseReleaser to give the credential up: the
// daemon then drops it from the cache and revokes its lease in Vault. A `share: Pod` reference
// has the one pod's consumers only; a ServiceAccount- or Grant-shared reference lives while any
// consumer of any pod holds it.

// LeaseReleaser gives up the credential of a leased reference whose last consumer went.
// Release must not block on the network: it drops the cached value and schedules the
// revocation.
type LeaseReleaser interface {
	Release(ref source.Ref)
}

// Consumer kinds (the prefix of a consumer id).
const (
	ConsumerVolume = "volume/" // a CSI volume: volume/<volume id>
	consumerStream = "stream/" // a watch stream: stream/<n>
	consumerPod    = "pod/"    // a GetSecret caller without a stream: pod/<uid>
	consumerSA     = "sa/"     // a GetSecret caller whose token names no pod: sa/<ns>/<name>
)

type consumerKey struct{}

// WithConsumer returns a context under which GetSecret and Watch hold leased credentials on
// behalf of the consumer id (e.g. ConsumerVolume+volumeID) rather than the caller's pod or
// stream; ReleaseConsumer(id) gives them up.
func WithConsumer(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, consumerKey{}, id)
}

// ConsumerOf returns the consumer id that WithConsumer put in ctx.
func ConsumerOf(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(consumerKey{}).(string)
	return id, ok && id != ""
}

// holdKey is one consumer's claim on one reference for one secret name (two names may share
// a reference).
type holdKey struct {
	consumer string
	name     string
}

// holding is what a consumer was allowed when it took its hold: re-evaluated when the grants
// change.
type holding struct {
	w identity.Workload
	d grant.Delivery
}

// goneMemory is how long a deleted pod is remembered, so that a stream or volume watch of it
// still running cannot take a new credential for it.
const goneMemory = time.Hour

type holds struct {
	release LeaseReleaser // nil: nothing is released
	streams atomic.Uint64

	mu   sync.Mutex
	refs map[source.Ref]map[holdKey]holding
	by   map[string]map[source.Ref]struct{} // consumer → references it holds
	gone map[string]time.Time               // deleted pod UIDs → when
}

func newHolds(r LeaseReleaser) *holds {
	return &holds{release: r, refs: map[source.Ref]map[holdKey]holding{}, by: map[string]map[source.Ref]struct{}{}, gone: map[string]time.Time{}}
}

// leased reports whether ref names a credential with an owner (a leased Vault engine).
func leased(ref source.Ref) bool {
	if ref.Source != VaultSourceName {
		return false
	}
	spec, err := vaultref.Parse(ref.Path)
	return err == nil && spec.Owner != ""
}

// consumerFor is the consumer on whose behalf ctx's caller w reads.
func consumerFor(ctx context.Context, w identity.Workload) string {
	if id, ok := ConsumerOf(ctx); ok {
		return id
	}
	if w.PodUID != "" {
		return consumerPod + w.PodUID
	}
	return consumerSA + w.Namespace + "/" + w.ServiceAccount
}

// acquire records that consumer holds ref for name. It refuses a pod that was deleted, and a
// hold that the grants in force (allowed, checked under the lock, so that a grant change is
// either seen here or drops the hold in regrant) no longer give.
func (h *holds) acquire(consumer string, ref source.Ref, name string, hd holding, allowed func() bool) error {
	if !leased(ref) {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if hd.w.PodUID != "" {
		if _, gone := h.gone[hd.w.PodUID]; gone {
			return newError(ErrUnauthenticated, "invalid token: the pod was deleted")
		}
	}
	if !allowed() {
		return newError(ErrPermissionDenied, fmt.Sprintf("permission denied: the grant that allowed secret %q was withdrawn", name))
	}
	m := h.refs[ref]
	if m == nil {
		m = map[holdKey]holding{}
		h.refs[ref] = m
	}
	m[holdKey{consumer, name}] = hd
	c := h.by[consumer]
	if c == nil {
		c = map[source.Ref]struct{}{}
		h.by[consumer] = c
	}
	c[ref] = struct{}{}
	return nil
}

// dropLocked removes one hold and reports whether ref has no consumer left.
func (h *holds) dropLocked(ref source.Ref, k holdKey) bool {
	m := h.refs[ref]
	delete(m, k)
	still := false
	for o := range m {
		if o.consumer == k.consumer {
			still = true
			break
		}
	}
	if !still {
		if c := h.by[k.consumer]; c != nil {
			delete(c, ref)
			if len(c) == 0 {
				delete(h.by, k.consumer)
			}
		}
	}
	if len(m) == 0 {
		delete(h.refs, ref)
		return true
	}
	return false
}

// releaseLocked gives up refs. It runs under h.mu so that a consumer arriving meanwhile
// finds the credential gone and fetches a new one.
func (h *holds) releaseLocked(refs []source.Ref) {
	if h.release == nil {
		return
	}
	for _, ref := range refs {
		h.release.Release(ref)
	}
}

// releaseConsumer drops every hold of consumer and gives up the references left without any.
func (h *holds) releaseConsumer(consumer string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	var empty []source.Ref
	for ref := range h.by[consumer] {
		for k := range h.refs[ref] {
			if k.consumer == consumer && h.dropLocked(ref, k) {
				empty = append(empty, ref)
			}
		}
	}
	delete(h.by, consumer)
	h.releaseLocked(empty)
	return len(empty)
}

// podGone drops every hold taken by the pod uid (its GetSecret reads, streams and volumes) and
// refuses it new ones.
func (h *holds) podGone(uid string, now time.Time) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gone[uid] = now
	for u, at := range h.gone {
		if now.Sub(at) > goneMemory {
			delete(h.gone, u)
		}
	}
	return h.dropWhereLocked(func(_ source.Ref, _ holdKey, hd holding) bool { return hd.w.PodUID == uid })
}

// dropWhereLocked drops the holds for which drop is true and gives up the references left
// without any.
func (h *holds) dropWhereLocked(drop func(source.Ref, holdKey, holding) bool) int {
	var empty []source.Ref
	for ref, m := range h.refs {
		for k, hd := range m {
			if drop(ref, k, hd) && h.dropLocked(ref, k) {
				empty = append(empty, ref)
			}
		}
	}
	h.releaseLocked(empty)
	return len(empty)
}

// regrant drops the holds that the grants set no longer allows, or allows through another
// reference, and gives up the references left without any.
func (h *holds) regrant(set *grant.Set) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dropWhereLocked(func(ref source.Ref, k holdKey, hd holding) bool {
		dec := set.Evaluate(requestFor(hd.w, k.name, hd.d))
		if !dec.Allowed {
			return true
		}
		now, _, err := resolveFor(hd.w, dec)
		return err != nil || now != ref
	})
}

// consumers is the number of consumers holding ref (for tests and status).
func (h *holds) consumers(ref source.Ref) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	seen := map[string]struct{}{}
	for k := range h.refs[ref] {
		seen[k.consumer] = struct{}{}
	}
	return len(seen)
}

func (h *holds) newStream() string {
	return consumerStream + strconv.FormatUint(h.streams.Add(1), 10)
}

// ReleaseConsumer gives up every leased credential that consumer id (see WithConsumer) holds
// and that no other consumer holds: their leases are revoked. It returns how many were given up.
func (b *Broker) ReleaseConsumer(id string) int { return b.holds.releaseConsumer(id) }

// PodGone gives up the credentials the pod uid held (through GetSecret, streams and volumes)
// and that no other consumer holds, and refuses the pod new ones: called when the pod
// informer sees the pod deleted. It returns how many were given up.
func (b *Broker) PodGone(uid string) int {
	if uid == "" {
		return 0
	}
	return b.holds.podGone(uid, b.clock.Now())
}

// LeaseConsumers is the number of consumers holding the leased reference ref.
func (b *Broker) LeaseConsumers(ref source.Ref) int { return b.holds.consumers(ref) }
