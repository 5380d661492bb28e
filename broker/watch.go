package broker

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/source"
)

// MaxWatchNames bounds how many secrets one watch stream may follow.
const MaxWatchNames = 64

// SendFunc delivers one secret value to a watcher. An error ends the watch.
type SendFunc func(name string, s *source.Secret) error

type watched struct {
	name    string
	dec     grant.Decision
	ref     source.Ref
	keys    []string
	sub     *rotate.Subscription
	version string
}

// Watch sends the current value of every named secret, then each new value, until ctx is
// done, the caller's token expires or its pod leaves this node (ErrUnauthenticated: reconnect
// with a fresh token), a grant is withdrawn (ErrPermissionDenied) or a secret deleted
// (ErrNotFound). Every value is re-authorized just before it is sent, so a value is never
// delivered under a grant that is no longer in force.
func (b *Broker) Watch(ctx context.Context, w identity.Workload, names []string, d grant.Delivery, send SendFunc) error {
	if len(names) == 0 || len(names) > MaxWatchNames {
		return newError(ErrInvalidArgument, fmt.Sprintf("watch needs 1 to %d secret names, got %d", MaxWatchNames, len(names)))
	}
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	if i := firstDup(sorted); i >= 0 {
		return newError(ErrInvalidArgument, fmt.Sprintf("secret %q is named twice", sorted[i]))
	}
	b.watchers.Add(1)
	defer b.watchers.Add(-1)
	if _, ok := ConsumerOf(ctx); !ok {
		// The stream holds its leased credentials while it is open (a volume's watch runs
		// under the volume's consumer, which outlives the stream's retries).
		id := b.holds.newStream()
		ctx = WithConsumer(ctx, id)
		defer b.holds.releaseConsumer(id)
	}
	// Take the change signal before the first authorization, so a grant change at any later
	// moment is noticed.
	grantsChanged := b.grantsChangedCh()

	ws := make([]*watched, 0, len(names))
	defer func() {
		for _, x := range ws {
			x.sub.Close()
		}
	}()
	for _, n := range names {
		dec, err := b.authorize(ctx, w, n, d)
		if err != nil {
			return err
		}
		ref, keys, err := resolveFor(w, dec)
		if err != nil {
			_, ferr := b.fetch(ctx, w, n, d, dec)
			return ferr
		}
		// Subscribe before the first read so no change between the two is missed.
		ws = append(ws, &watched{name: n, dec: dec, ref: ref, keys: keys, sub: b.cache.Subscribe(ref)})
	}

	// The stream is one select loop over every event source, so it starts no goroutine: the
	// subscriptions' coalescing channels are selected on directly, one case each.
	sel := newWatchSelect(ctx, grantsChanged, ws)
	if !w.ExpiresAt.IsZero() {
		t := b.clock.NewTimer(w.ExpiresAt.Sub(b.clock.Now()))
		defer t.Stop()
		sel.set(caseExpiry, t.C())
	}
	if b.binding != nil {
		tick := b.clock.NewTicker(b.recheckEvery)
		defer tick.Stop()
		sel.set(caseRecheck, tick.C())
	}

	for _, x := range ws {
		if err := b.deliver(ctx, w, d, x, send); err != nil {
			return err
		}
	}
	for {
		switch c := sel.wait(); c {
		case caseDone:
			return newError(ErrCanceled, "watch canceled")
		case caseExpiry:
			return newError(ErrUnauthenticated, "token expired: reconnect with a fresh token")
		case caseRecheck:
			if err := b.checkBinding(ctx, w); err != nil {
				return err
			}
		case caseGrants:
			sel.set(caseGrants, b.grantsChangedCh())
			for i, x := range ws {
				moved, err := b.recheck(ctx, w, d, x, send)
				if err != nil {
					return err
				}
				if moved {
					sel.setSub(i, x.sub)
				}
			}
		default:
			i := c - caseSubs
			moved, err := b.recheck(ctx, w, d, ws[i], send)
			if err == nil && !moved {
				err = b.deliver(ctx, w, d, ws[i], send)
			}
			if err != nil {
				return err
			}
			if moved {
				sel.setSub(i, ws[i].sub)
			}
		}
	}
}

// The cases of a watch stream's select: fixed ones, then one per followed secret.
const (
	caseDone    = iota // the caller's ctx
	caseExpiry         // the caller's token expires
	caseRecheck        // time to re-check the pod binding
	caseGrants         // the grants in force changed
	caseSubs           // ws[i]'s value changed: case caseSubs+i
)

// watchSelect is the select of one watch stream. A case without a channel is never chosen.
type watchSelect []reflect.SelectCase

func newWatchSelect(ctx context.Context, grantsChanged <-chan struct{}, ws []*watched) watchSelect {
	sel := make(watchSelect, caseSubs+len(ws))
	for i := range sel {
		sel[i].Dir = reflect.SelectRecv
	}
	sel.set(caseDone, ctx.Done())
	sel.set(caseGrants, grantsChanged)
	for i, x := range ws {
		sel.setSub(i, x.sub)
	}
	return sel
}

// set makes case i receive from ch, which must be a receivable channel.
func (s watchSelect) set(i int, ch any) { s[i].Chan = reflect.ValueOf(ch) }

// setSub makes the case of ws[i] follow sub (after the grant moved it to another reference).
func (s watchSelect) setSub(i int, sub *rotate.Subscription) { s.set(caseSubs+i, sub.C()) }

// wait blocks until a case is ready, consumes its value and returns the case.
func (s watchSelect) wait() int {
	c, _, _ := reflect.Select(s)
	return c
}

// checkBinding ends a stream whose pod has left this node (deleted, rescheduled).
func (b *Broker) checkBinding(ctx context.Context, w identity.Workload) error {
	if b.binding == nil {
		return nil
	}
	err := b.binding.Check(w)
	if err == nil {
		return nil
	}
	reason := "pod binding no longer holds"
	var ve *identity.VerifyError
	if errors.As(err, &ve) {
		reason = ve.Reason
	} else if errors.Is(err, identity.ErrUnavailable) {
		return nil // the pod list is not loaded: keep the stream rather than guess
	}
	b.audit.Record(ctx, withWorkload(audit.Event{Kind: audit.KindRevocation, Outcome: audit.OutcomeDeny, Reason: reason}, w))
	return newError(ErrUnauthenticated, "invalid token: "+reason)
}

func firstDup(sorted []string) int {
	for i := 1; i < len(sorted); i++ {
		if sorted[i] == sorted[i-1] {
			return i
		}
	}
	return -1
}

// deliver sends x's current value when its version differs from the last one sent.
func (b *Broker) deliver(ctx context.Context, w identity.Workload, d grant.Delivery, x *watched, send SendFunc) error {
	s, err := b.fetch(ctx, w, x.name, d, x.dec)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			b.audit.Record(ctx, withWorkload(audit.Event{Kind: audit.KindRevocation, Outcome: audit.OutcomeDeny, Secret: x.name, Delivery: string(d), Grant: x.dec.Grant, Reason: "secret deleted in source"}, w))
		}
		return err
	}
	if s.Version == x.version {
		return nil
	}
	if err := b.checkBinding(ctx, w); err != nil {
		return err
	}
	if err := send(x.name, s); err != nil {
		return err
	}
	x.version = s.Version
	b.audit.Record(ctx, withWorkload(audit.Event{Kind: audit.KindDelivery, Outcome: audit.OutcomeAllow, Secret: x.name, Version: s.Version, Delivery: string(d), Grant: x.dec.Grant}, w))
	return nil
}

// recheck re-evaluates x's grant against the grants in force now. A withdrawn grant ends the
// watch; a grant that now points elsewhere (another source path or key set) moves the
// subscription, delivers the new value and reports it so the caller selects on the new
// subscription's signals.
func (b *Broker) recheck(ctx context.Context, w identity.Workload, d grant.Delivery, x *watched, send SendFunc) (bool, error) {
	dec := b.grants.Load().Evaluate(requestFor(w, x.name, d))
	if !dec.Allowed {
		b.audit.Record(ctx, withWorkload(audit.Event{Kind: audit.KindRevocation, Outcome: audit.OutcomeDeny, Secret: x.name, Delivery: string(d), Grant: x.dec.Grant, Reason: "grant withdrawn"}, w))
		return false, newError(ErrPermissionDenied, fmt.Sprintf("permission denied: the grant that allowed secret %q was withdrawn", x.name))
	}
	ref, keys, err := resolveFor(w, dec)
	if err != nil {
		_, ferr := b.fetch(ctx, w, x.name, d, dec)
		return false, ferr
	}
	x.dec = dec
	if ref == x.ref && slices.Equal(keys, x.keys) {
		return false, nil
	}
	x.sub.Close()
	x.ref, x.keys, x.sub, x.version = ref, keys, b.cache.Subscribe(ref), ""
	return true, b.deliver(ctx, w, d, x, send)
}
