package broker

import (
	"context"
	"errors"
	"fmt"
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
// done, the caller's token expires (ErrUnauthenticated: reconnect with a fresh token), or a grant
// is withdrawn (ErrPermissionDenied) or a secret deleted (ErrNotFound).
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
			_, ferr := b.fetch(ctx, w, n, dec)
			return ferr
		}
		// Subscribe before the first read so no change between the two is missed.
		ws = append(ws, &watched{name: n, dec: dec, ref: ref, keys: keys, sub: b.cache.Subscribe(ref)})
	}

	// One goroutine per subscription forwards its signals into a single channel.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changed := make(chan int, len(ws))
	forward := func(i int, c <-chan struct{}) {
		go func() {
			for {
				select {
				case <-wctx.Done():
					return
				case <-c:
					select {
					case changed <- i:
					case <-wctx.Done():
						return
					}
				}
			}
		}()
	}
	for i, x := range ws {
		forward(i, x.sub.C())
	}

	var expiry <-chan struct{}
	if !w.ExpiresAt.IsZero() {
		t := b.clock.NewTimer(w.ExpiresAt.Sub(b.clock.Now()))
		defer t.Stop()
		done := make(chan struct{})
		go func() {
			select {
			case <-t.C():
				close(done)
			case <-wctx.Done():
			}
		}()
		expiry = done
	}

	for _, x := range ws {
		if err := b.deliver(ctx, w, d, x, send); err != nil {
			return err
		}
	}
	for {
		select {
		case <-ctx.Done():
			return newError(ErrCanceled, "watch canceled")
		case <-expiry:
			return newError(ErrUnauthenticated, "token expired: reconnect with a fresh token")
		case i := <-changed:
			if err := b.deliver(ctx, w, d, ws[i], send); err != nil {
				return err
			}
		case <-grantsChanged:
			grantsChanged = b.grantsChangedCh()
			for i, x := range ws {
				moved, err := b.recheck(ctx, w, d, x, send)
				if err != nil {
					return err
				}
				if moved {
					forward(i, x.sub.C())
				}
			}
		}
	}
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
	s, err := b.fetch(ctx, w, x.name, x.dec)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			b.audit.Record(ctx, withWorkload(audit.Event{Kind: audit.KindRevocation, Outcome: audit.OutcomeDeny, Secret: x.name, Delivery: string(d), Grant: x.dec.Grant, Reason: "secret deleted in source"}, w))
		}
		return err
	}
	if s.Version == x.version {
		return nil
	}
	if err := send(x.name, s); err != nil {
		return err
	}
	x.version = s.Version
	b.audit.Record(ctx, withWorkload(audit.Event{Kind: audit.KindDelivery, Outcome: audit.OutcomeAllow, Secret: x.name, Version: s.Version, Delivery: string(d), Grant: x.dec.Grant}, w))
	return nil
}

// recheck re-evaluates x's grant after a grant change. A withdrawn grant ends the watch; a
// grant that now points elsewhere (another source path or key set) moves the subscription, and
// recheck reports it so the caller forwards the new subscription's signals.
func (b *Broker) recheck(ctx context.Context, w identity.Workload, d grant.Delivery, x *watched, send SendFunc) (bool, error) {
	dec := b.grants.Load().Evaluate(requestFor(w, x.name, d))
	if !dec.Allowed {
		b.audit.Record(ctx, withWorkload(audit.Event{Kind: audit.KindRevocation, Outcome: audit.OutcomeDeny, Secret: x.name, Delivery: string(d), Grant: x.dec.Grant, Reason: "grant withdrawn"}, w))
		return false, newError(ErrPermissionDenied, fmt.Sprintf("permission denied: the grant that allowed secret %q was withdrawn", x.name))
	}
	ref, keys, err := resolveFor(w, dec)
	if err != nil {
		_, ferr := b.fetch(ctx, w, x.name, dec)
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
