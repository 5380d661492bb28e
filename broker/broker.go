package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

// Verifier proves who a token belongs to.
type Verifier interface {
	Verify(ctx context.Context, tok identity.Token) (identity.Workload, error)
}

// Cache is the part of the rotation engine the broker uses.
type Cache interface {
	Get(ctx context.Context, ref source.Ref) (*source.Secret, error)
	Subscribe(ref source.Ref) *rotate.Subscription
}

var _ Cache = (*rotate.Engine)(nil)

// Config configures a Broker.
type Config struct {
	// Verifier verifies workload tokens. Required.
	Verifier Verifier
	// Cache fetches and caches secret values. Required.
	Cache Cache
	// Audit records every authentication and decision. Required.
	Audit audit.Recorder
	// Logger receives operational events. Required.
	Logger *slog.Logger
	// Clock ends watch streams when their token expires. Defaults to the real clock.
	Clock clock.WithTicker
	// Binding re-checks, during a watch stream's life, that the caller's pod still runs on
	// this node. Nil when the daemon has no node binding (dev mode).
	Binding BindingChecker
	// RecheckInterval is how often open watch streams re-check the binding. Default 5s.
	RecheckInterval time.Duration
	// Metrics counts access decisions. Nil records nothing.
	Metrics *Metrics
	// Leases gives up a leased credential when its last consumer goes (holds.go). Nil keeps
	// leased credentials until the cache evicts them and their leases expire.
	Leases LeaseReleaser
}

// BindingChecker tells whether a verified workload's pod is still on this node.
type BindingChecker interface {
	Check(w identity.Workload) error
}

// Broker answers "may this workload read this secret, and what is its value".
type Broker struct {
	verifier     Verifier
	cache        Cache
	audit        audit.Recorder
	log          *slog.Logger
	clock        clock.WithTicker
	binding      BindingChecker
	recheckEvery time.Duration
	metrics      *Metrics
	holds        *holds // consumers of leased credentials: holds.go

	grants atomic.Pointer[grant.Set]
	// mu guards the per-source grant sets and grantsChanged. grantsChanged is closed and
	// replaced on every change of the grants in force, waking all watchers so they re-check
	// their grants (revocation).
	mu            sync.Mutex
	sources       map[string]*grant.Set
	grantsChanged chan struct{}
	watchers      atomic.Int64
}

// New returns a Broker.
func New(cfg Config) (*Broker, error) {
	switch {
	case cfg.Verifier == nil:
		return nil, errors.New("broker: verifier is required")
	case cfg.Cache == nil:
		return nil, errors.New("broker: cache is required")
	case cfg.Audit == nil:
		return nil, errors.New("broker: audit recorder is required")
	case cfg.Logger == nil:
		return nil, errors.New("broker: logger is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.RecheckInterval <= 0 {
		cfg.RecheckInterval = 5 * time.Second
	}
	empty, err := grant.NewSet(nil)
	if err != nil {
		return nil, err
	}
	b := &Broker{verifier: cfg.Verifier, cache: cfg.Cache, audit: cfg.Audit, log: cfg.Logger, clock: cfg.Clock,
		binding: cfg.Binding, recheckEvery: cfg.RecheckInterval, metrics: cfg.Metrics, holds: newHolds(cfg.Leases),
		sources: map[string]*grant.Set{}, grantsChanged: make(chan struct{})}
	b.grants.Store(empty)
	return b, nil
}

// SourcedGrant is a grant in force and the source it came from.
type SourcedGrant struct {
	Source string
	Grant  grant.AccessGrant
}

// UpdateGrantSource replaces the grants of one source ("file", "store", "kubernetes") and
// puts the merged grants in force. When the merge fails (the same grant name in two sources)
// nothing changes and the error says why. Watch streams re-check their grants at once: a
// withdrawn grant ends the stream.
func (b *Broker) UpdateGrantSource(name string, s *grant.Set) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	next := maps.Clone(b.sources)
	next[name] = s
	names := slices.Sorted(maps.Keys(next))
	sets := make([]*grant.Set, 0, len(names))
	for _, n := range names {
		sets = append(sets, next[n])
	}
	merged, err := grant.Merge(sets...)
	if err != nil {
		return fmt.Errorf("grants from source %q not applied: %w", name, err)
	}
	b.sources = next
	b.grants.Store(merged)
	close(b.grantsChanged)
	b.grantsChanged = make(chan struct{})
	b.log.Info("grants updated", slog.String("source", name), slog.Int("source_grants", s.Len()), slog.Int("grants", merged.Len()))
	if n := b.holds.regrant(merged); n > 0 {
		b.log.Info("leased credentials given up: the grants no longer allow their consumers", slog.Int("released", n))
	}
	return nil
}

// ListGrants returns the grants in force with their sources, sorted by name.
func (b *Broker) ListGrants() []SourcedGrant {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []SourcedGrant
	for src, set := range b.sources {
		for _, g := range set.Grants() {
			out = append(out, SourcedGrant{Source: src, Grant: g})
		}
	}
	slices.SortFunc(out, func(a, b SourcedGrant) int { return strings.Compare(a.Grant.Name, b.Grant.Name) })
	return out
}

// Grants returns the grants in force.
func (b *Broker) Grants() *grant.Set { return b.grants.Load() }

func (b *Broker) grantsChangedCh() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.grantsChanged
}

// WatchStreams is the number of open watch streams.
func (b *Broker) WatchStreams() int64 { return b.watchers.Load() }

// Authenticate verifies a bearer token.
func (b *Broker) Authenticate(ctx context.Context, tok identity.Token) (identity.Workload, error) {
	if tok.IsZero() {
		b.audit.Record(ctx, audit.Event{Kind: audit.KindAuthentication, Outcome: audit.OutcomeDeny, Reason: "no token"})
		return identity.Workload{}, newError(ErrUnauthenticated, "missing token: send the workload's projected service-account token as `authorization: Bearer <token>`")
	}
	w, err := b.verifier.Verify(ctx, tok)
	if err != nil {
		ev := audit.Event{Kind: audit.KindAuthentication, Outcome: audit.OutcomeDeny}
		var out error
		switch {
		case errors.Is(err, identity.ErrUnavailable):
			ev.Outcome, ev.Reason = audit.OutcomeError, "verification keys unavailable"
			out = newError(ErrUnavailable, "token verification is unavailable right now; try again")
		case errors.Is(err, identity.ErrInvalidToken):
			// The verifier's messages are fixed phrases without token content.
			ev.Reason = err.Error()
			out = newError(ErrUnauthenticated, err.Error())
		default:
			ev.Outcome, ev.Reason = audit.OutcomeError, "verification failed"
			b.log.Error("token verification failed", slog.Any("error", err))
			out = newError(ErrInternal, "internal error")
		}
		b.audit.Record(ctx, ev)
		return identity.Workload{}, out
	}
	b.audit.Record(ctx, withWorkload(audit.Event{Kind: audit.KindAuthentication, Outcome: audit.OutcomeAllow}, w))
	return w, nil
}

func withWorkload(ev audit.Event, w identity.Workload) audit.Event {
	ev.Namespace, ev.ServiceAccount, ev.PodName, ev.PodUID = w.Namespace, w.ServiceAccount, w.PodName, w.PodUID
	if !w.ID.IsZero() {
		ev.SPIFFEID = w.ID.String()
	}
	return ev
}

func requestFor(w identity.Workload, name string, d grant.Delivery) grant.Request {
	r := grant.Request{Namespace: w.Namespace, ServiceAccount: w.ServiceAccount, Secret: name, Delivery: d}
	if !w.ID.IsZero() {
		r.SPIFFEID = w.ID.String()
	}
	return r
}

// authorize checks the grants for one secret and audits the decision.
func (b *Broker) authorize(ctx context.Context, w identity.Workload, name string, d grant.Delivery) (grant.Decision, error) {
	if err := grant.ValidateSecretName(name); err != nil {
		return grant.Decision{}, newError(ErrInvalidArgument, fmt.Sprintf("invalid secret name: %v", err))
	}
	dec := b.grants.Load().Evaluate(requestFor(w, name, d))
	b.metrics.decision(dec)
	if !dec.Allowed {
		ev := withWorkload(audit.Event{Kind: audit.KindDecision, Outcome: audit.OutcomeDeny, Secret: name, Delivery: string(d), Grant: dec.Grant, Reason: dec.Reason}, w)
		b.audit.Record(ctx, ev)
		// The same message whether or not the secret exists: it only repeats what the
		// caller sent and who the caller is.
		explainDelivery := "" // explain's default is GRPC
		if d != grant.DeliveryGRPC {
			explainDelivery = " --delivery " + string(d)
		}
		return dec, newError(ErrPermissionDenied, fmt.Sprintf(
			"permission denied: no grant allows service account %q in namespace %q to read secret %q over %s; an administrator can run `keywarden grant explain --namespace %s --service-account %s --secret %s%s`",
			w.ServiceAccount, w.Namespace, name, d, w.Namespace, w.ServiceAccount, name, explainDelivery))
	}
	return dec, nil
}

// resolve turns a grant's secret clause into the cache reference and key selection.
func resolve(sg *grant.SecretGrant) (source.Ref, []string, error) {
	switch {
	case sg.Source.Local != nil:
		path := sg.Source.Local.Name
		if path == "" {
			path = sg.Name
		}
		return source.Ref{Source: "local", Path: path}, sg.Keys, nil
	case sg.Source.Vault != nil && !vaultref.Engine(engineOf(sg.Source.Vault)).Leased():
		// Static Vault secrets are shared by every caller; leased ones need resolveFor.
		return vaultRef(sg, "")
	default:
		return source.Ref{}, nil, errors.New("grant names a source that this daemon does not serve")
	}
}

// GetSecret returns the secret name for workload w, if a grant allows it.
func (b *Broker) GetSecret(ctx context.Context, w identity.Workload, name string, d grant.Delivery) (*source.Secret, error) {
	dec, err := b.authorize(ctx, w, name, d)
	if err != nil {
		return nil, err
	}
	s, err := b.fetch(ctx, w, name, d, dec)
	if err != nil {
		return nil, err
	}
	b.audit.Record(ctx, withWorkload(audit.Event{Kind: audit.KindDelivery, Outcome: audit.OutcomeAllow, Secret: name, Version: s.Version, Delivery: string(d), Grant: dec.Grant}, w))
	return s, nil
}

func (b *Broker) fetch(ctx context.Context, w identity.Workload, name string, d grant.Delivery, dec grant.Decision) (*source.Secret, error) {
	ref, keys, err := resolveFor(w, dec)
	if err != nil {
		b.log.Error("grant cannot be served", slog.String("grant", dec.Grant), slog.String("secret", name), slog.Any("error", err))
		if errors.Is(err, errCertificateRequest) {
			// The message names grant fields and fixed phrases only, never a name's value.
			return nil, newError(ErrUnavailable, fmt.Sprintf("secret %q: the grant %q cannot make a certificate request for this workload: %v", name, dec.Grant, err))
		}
		return nil, newError(ErrUnavailable, fmt.Sprintf("secret %q: the grant %q names a source this daemon does not serve", name, dec.Grant))
	}
	// A leased credential is fetched only by a consumer that holds it, so that it is given up
	// when the last one goes.
	if err := b.holds.acquire(consumerFor(ctx, w), ref, name, holding{w: w, d: d}, func() bool {
		now := b.grants.Load().Evaluate(requestFor(w, name, d))
		r, _, err := resolveFor(w, now)
		return now.Allowed && err == nil && r == ref
	}); err != nil {
		b.audit.Record(ctx, withWorkload(audit.Event{Kind: audit.KindRevocation, Outcome: audit.OutcomeDeny, Secret: name, Delivery: string(d), Grant: dec.Grant, Reason: err.Error()}, w))
		return nil, err
	}
	s, err := b.cache.Get(ctx, ref)
	if err == nil {
		s, err = s.Select(keys)
	}
	if err != nil {
		out := b.sourceError(name, err)
		ev := withWorkload(audit.Event{Kind: audit.KindDelivery, Outcome: audit.OutcomeError, Secret: name, Grant: dec.Grant, Reason: out.Error()}, w)
		b.audit.Record(ctx, ev)
		return nil, out
	}
	return s, nil
}

// sourceError maps a source error for a caller who holds a grant for the secret. The result
// keeps the source's error class, so source.IsAuthoritative answers for it as for err: the
// authoritative classes map to NotFound and PermissionDenied, the transient ones never do.
func (b *Broker) sourceError(name string, err error) error {
	var out *Error
	switch {
	case errors.Is(err, context.Canceled):
		out = newError(ErrCanceled, "request canceled")
	case errors.Is(err, rotate.ErrExpired):
		// Before the deadline case: a caller's deadline is then not the reason.
		out = newError(ErrUnavailable, fmt.Sprintf("secret %q: its cached value expired and the source cannot be reached for a new one; try again", name))
	case errors.Is(err, context.DeadlineExceeded):
		out = newError(ErrUnavailable, fmt.Sprintf("secret %q: the source did not answer in time", name))
	case errors.Is(err, source.ErrNotFound), errors.Is(err, source.ErrDeleted):
		out = newError(ErrNotFound, fmt.Sprintf("secret %q is granted but its source holds no value for it", name))
	case errors.Is(err, source.ErrForbidden):
		out = newError(ErrPermissionDenied, fmt.Sprintf("secret %q: the source refused this node access", name))
	case errors.Is(err, source.ErrUnavailable):
		out = newError(ErrUnavailable, fmt.Sprintf("secret %q: the source is unavailable; try again", name))
	default:
		b.log.Error("secret fetch failed", slog.String("secret", name), slog.Any("error", err))
		return newError(ErrInternal, "internal error")
	}
	out.class = source.Class(err)
	return out
}

// Explain evaluates a hypothetical request against the grants in force.
func (b *Broker) Explain(r grant.Request) grant.Explanation {
	return b.grants.Load().Explain(r)
}
