package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

// lease is the current dynamic credential of one reference.
type lease struct {
	Ref       string            `json:"ref"`
	Owner     string            `json:"owner"`
	IssuePath string            `json:"issuePath"` // e.g. database/creds/app: leases of one role share a max_ttl
	LeaseID   string            `json:"leaseId"`
	Renewable bool              `json:"renewable"`
	TTL       time.Duration     `json:"ttl"` // as issued; renewals ask for this much again
	IssuedAt  time.Time         `json:"issuedAt"`
	RenewedAt time.Time         `json:"renewedAt"`
	ExpiresAt time.Time         `json:"expiresAt"`
	RenewAt   time.Time         `json:"renewAt"`
	Version   string            `json:"version"`
	Data      map[string][]byte `json:"data"` // sealed by the store before it reaches disk

	// claimed is false for a lease restored after a restart until a consumer asks for it.
	claimed bool
}

// pendingRevoke is a replaced (or orphaned) lease waiting for its grace period to end.
type pendingRevoke struct {
	LeaseID   string    `json:"leaseId"`
	Ref       string    `json:"ref"`
	Owner     string    `json:"owner"`
	RevokeAt  time.Time `json:"revokeAt"`
	ExpiresAt time.Time `json:"expiresAt"`
	Failures  int       `json:"failures"`
}

// vaultEnd bounds when Vault ends l: ExpiresAt is when the daemon last learnt it, but a
// renewal whose answer was lost (a timeout, a kill before the answer was recorded) may have
// extended it by up to one TTL. A lease dropped before then is revoked, not left to expire.
func (l *lease) vaultEnd() time.Time { return l.ExpiresAt.Add(l.TTL) }

func (l *lease) secret() *source.Secret {
	data := make(map[string]source.Value, len(l.Data))
	for k, v := range l.Data {
		data[k] = source.Value(v)
	}
	return &source.Secret{Data: data, Version: l.Version, ExpiresAt: l.ExpiresAt, RenewAfter: l.RenewAt, LeaseID: l.LeaseID}
}

// renewAt is ⅔ of ttl after from, plus up to a tenth of ttl of jitter (so leases issued
// together do not renew together), never later than 90% of ttl.
func renewAt(from time.Time, ttl time.Duration) time.Time {
	return from.Add(ttl*2/3 + jitter(ttl/10))
}

// fetchLeased returns the reference's credential: the current one while it is fresh, renewed
// when due, or a new one when there is none, renewal was refused, capped by max_ttl, or the
// lease is not renewable.
func (s *Source) fetchLeased(ctx context.Context, ref string, spec vaultref.Spec) (*source.Secret, error) {
	now := s.clock.Now()
	s.mu.Lock()
	cur := s.leases[ref]
	if cur != nil {
		cur.claimed = true
	}
	seq := s.released.seq // a Release of ref after this point wins over this fetch
	s.mu.Unlock()

	reason := "new"
	if cur != nil && now.Before(cur.ExpiresAt) {
		if now.Before(cur.RenewAt) {
			return cur.secret(), nil
		}
		reason = "not_renewable"
		if at, ok := s.reissueAt(cur); ok && !now.Before(at) {
			// A renewal would be capped by max_ttl (learnt from an earlier lease of this
			// role): replace the credential now, while the old one still overlaps.
			reason = "max_ttl"
		} else if cur.Renewable {
			renewed, why, err := s.renewLease(ctx, cur, seq)
			if err != nil {
				return nil, err // transient: the engine serves the cached value until it expires
			}
			if renewed != nil {
				return renewed.secret(), nil
			}
			reason = why
		}
	} else if cur != nil {
		reason = "expired"
	}
	return s.issue(ctx, ref, spec, cur, reason, seq)
}

// renewLease renews l. It returns the renewed lease, or nil and the reason to re-issue. seq
// is the release sequence when the fetch began (see Release).
func (s *Source) renewLease(ctx context.Context, l *lease, seq uint64) (*lease, string, error) {
	resp, err := s.do(ctx, call{class: "lease-renew", method: http.MethodPut, path: "sys/leases/renew",
		body: map[string]any{"lease_id": l.LeaseID, "increment": int64(l.TTL / time.Second)}, ns: s.nsOfRef(l.Ref)})
	var ce *callError
	switch {
	case err == nil:
	case errors.As(err, &ce) && (ce.status == http.StatusBadRequest || ce.status == http.StatusNotFound):
		// Vault refuses: lease gone, revoked, or not renewable after all.
		s.metrics.renewals.WithLabelValues("refused").Inc()
		s.log.Info("lease renewal refused; issuing a new credential", slog.String("lease_id", l.LeaseID))
		return nil, "renewal_refused", nil
	case errors.Is(err, source.ErrForbidden):
		s.metrics.renewals.WithLabelValues("refused").Inc()
		return nil, "renewal_refused", nil
	default:
		s.metrics.renewals.WithLabelValues("failed").Inc()
		return nil, "", err
	}
	now := s.clock.Now()
	got := time.Duration(resp.LeaseDuration) * time.Second
	if got <= 0 || got < l.TTL-time.Second {
		// Capped by max_ttl: the credential dies at now+got whatever we do. Replace it now,
		// while the old one still has that long to overlap.
		s.metrics.renewals.WithLabelValues("capped").Inc()
		s.mu.Lock()
		l.ExpiresAt = now.Add(got)
		if l.IssuePath != "" {
			s.maxTTL[l.IssuePath] = l.ExpiresAt.Sub(l.IssuedAt)
		}
		s.mu.Unlock()
		return nil, "max_ttl", nil
	}
	s.metrics.renewals.WithLabelValues("ok").Inc()
	s.mu.Lock()
	if s.released.since(l.Ref, seq) {
		// Its consumers went while it was renewed: Release already scheduled its revocation.
		s.mu.Unlock()
		return nil, "", errReleased
	}
	if s.leases[l.Ref] != l {
		// Dropped meanwhile (expired as far as the reaper knew): its revocation is scheduled,
		// so the consumer gets a new credential rather than this one back.
		s.mu.Unlock()
		return nil, "expired", nil
	}
	next := *l
	next.Data = maps.Clone(l.Data)
	next.RenewedAt, next.ExpiresAt, next.RenewAt, next.Renewable, next.claimed = now, now.Add(got), renewAt(now, got), resp.Renewable, true
	if at, ok := s.reissueAtLocked(&next); ok && at.Before(next.RenewAt) {
		next.RenewAt = at
	}
	s.leases[l.Ref] = &next
	s.mu.Unlock()
	s.persistLease(&next, nil)
	return &next, "", nil
}

// issue asks the engine for a new credential and schedules the revocation of old. seq is the
// release sequence when the fetch began: a credential whose reference was released meanwhile
// is revoked at once and not handed out.
func (s *Source) issue(ctx context.Context, ref string, spec vaultref.Spec, old *lease, reason string, seq uint64) (*source.Secret, error) {
	c := call{class: "lease-issue", ns: s.nsOf(spec)}
	switch spec.Engine {
	case vaultref.Database:
		c.method, c.path = http.MethodGet, spec.Mount+"/creds/"+spec.Role
	case vaultref.PKI:
		c.method, c.path, c.body = http.MethodPut, spec.Mount+"/issue/"+spec.Role, map[string]any{}
	default:
		c.method, c.path, c.class = http.MethodGet, spec.Mount+"/"+spec.Path, "generic-read"
	}
	resp, err := s.do(ctx, c)
	if err != nil {
		return nil, err
	}
	data, dropped, err := decodeData(resp.Data)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", source.ErrUnavailable, c.path, err)
	}
	s.warnDropped(spec, dropped)
	now := s.clock.Now()
	if resp.LeaseID == "" {
		// No lease (a PKI role without generate_lease, a static generic path): nothing to
		// renew or revoke. A certificate still has an expiry: re-issue at ⅔ of it.
		sec := &source.Secret{Data: data, Version: contentVersion(s.versionKey, data)}
		if exp := pkiExpiration(data); !exp.IsZero() && exp.After(now) {
			sec.ExpiresAt, sec.RenewAfter = exp, renewAt(now, exp.Sub(now))
		} else if resp.LeaseDuration > 0 {
			ttl := time.Duration(resp.LeaseDuration) * time.Second
			sec.ExpiresAt, sec.RenewAfter = now.Add(ttl), renewAt(now, ttl)
		}
		return sec, nil
	}
	ttl := time.Duration(resp.LeaseDuration) * time.Second
	raw := make(map[string][]byte, len(data))
	for k, v := range data {
		raw[k] = v
	}
	l := &lease{Ref: ref, Owner: spec.Owner, IssuePath: c.path, LeaseID: resp.LeaseID, Renewable: resp.Renewable, TTL: ttl,
		IssuedAt: now, RenewedAt: now, ExpiresAt: now.Add(ttl), RenewAt: renewAt(now, ttl),
		Version: "lease-" + shortHash(resp.LeaseID), Data: raw, claimed: true}
	var rev *pendingRevoke
	s.mu.Lock()
	if s.released.since(ref, seq) {
		rev = &pendingRevoke{LeaseID: l.LeaseID, Ref: ref, Owner: l.Owner, RevokeAt: now, ExpiresAt: l.ExpiresAt}
		s.revokes[l.LeaseID] = rev
		s.mu.Unlock()
		s.persistRevoke(rev)
		s.wake()
		s.log.Info("revoking a credential whose consumers went while it was issued", slog.String("lease_id", l.LeaseID))
		return nil, errReleased
	}
	if at, ok := s.reissueAtLocked(l); ok && at.Before(l.RenewAt) {
		l.RenewAt = at
	}
	s.leases[ref] = l
	if old != nil && old.LeaseID != l.LeaseID && now.Before(old.vaultEnd()) {
		rev = &pendingRevoke{LeaseID: old.LeaseID, Ref: ref, Owner: old.Owner, RevokeAt: minTime(now.Add(s.cfg.LeaseGrace), old.ExpiresAt), ExpiresAt: old.vaultEnd()}
		s.revokes[old.LeaseID] = rev
	}
	s.mu.Unlock()
	s.persistLease(l, rev)
	if old != nil {
		s.metrics.reissues.WithLabelValues(reason).Inc()
		s.log.Info("issued a new credential", slog.String("reason", reason), slog.String("lease_id", l.LeaseID),
			slog.String("replaces", old.LeaseID), slog.Duration("ttl", ttl))
	} else {
		s.log.Info("issued a credential", slog.String("lease_id", l.LeaseID), slog.Duration("ttl", ttl), slog.Bool("renewable", l.Renewable))
	}
	return l.secret(), nil
}

// reissueAt is when l should be replaced because its role's max_ttl (learnt when a renewal of
// an earlier lease was capped) is near: a third of the TTL before it, so the old and the new
// credential overlap. ok is false while the max_ttl is unknown.
func (s *Source) reissueAt(l *lease) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reissueAtLocked(l)
}

func (s *Source) reissueAtLocked(l *lease) (time.Time, bool) {
	maxTTL, ok := s.maxTTL[l.IssuePath]
	if !ok || l.IssuePath == "" || maxTTL <= l.TTL/3 {
		return time.Time{}, false
	}
	return l.IssuedAt.Add(maxTTL - l.TTL/3), true
}

// pkiExpiration reads a PKI answer's "expiration" (unix seconds), if any.
func pkiExpiration(data map[string]source.Value) time.Time {
	v, ok := data["expiration"]
	if !ok {
		return time.Time{}
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}
	}
	return time.Unix(n, 0)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// reap revokes leases whose grace ended, revokes restored leases nobody claimed, and forgets
// leases that expired.
func (s *Source) reap(ctx context.Context) {
	now := s.clock.Now()
	var due []*pendingRevoke
	type drop struct {
		leaseID string
		rev     *pendingRevoke // nil: Vault has certainly ended it
	}
	dropped := map[string]drop{} // by reference
	s.mu.Lock()
	for ref, l := range s.leases {
		orphan := !l.claimed && now.Sub(s.startedAt) >= s.cfg.OrphanGrace
		if now.Before(l.ExpiresAt) && !orphan {
			continue
		}
		// Expired as far as the daemon knows (Vault may still hold it: vaultEnd), or restored
		// after a restart and nobody asked for it: revoke rather than leave a live credential
		// that no one renews or uses.
		delete(s.leases, ref)
		d := drop{leaseID: l.LeaseID}
		if now.Before(l.vaultEnd()) {
			d.rev = &pendingRevoke{LeaseID: l.LeaseID, Ref: ref, Owner: l.Owner, RevokeAt: now, ExpiresAt: l.vaultEnd()}
			s.revokes[l.LeaseID] = d.rev
			if orphan {
				s.log.Info("revoking a restored lease that no consumer claimed", slog.String("lease_id", l.LeaseID))
			}
		}
		dropped[ref] = d
	}
	for id, r := range s.revokes {
		switch {
		case !now.Before(r.ExpiresAt):
			delete(s.revokes, id) // Vault revoked it at expiry
			s.forgetRevoke(id)
		case !now.Before(r.RevokeAt):
			due = append(due, r)
		}
	}
	for ref, e := range s.kv {
		if now.Sub(e.usedAt) > kvIdle {
			delete(s.kv, ref)
		}
	}
	s.released.prune(now)
	s.mu.Unlock()
	for ref, d := range dropped {
		// Only if the record still holds the dropped lease: a fetch may have recorded its
		// successor since.
		if err := s.commit(d.rev, nil, ref, d.leaseID); err != nil {
			s.log.Error("record lease revocation", slog.String("error", err.Error()))
		}
	}
	for _, r := range due {
		s.revoke(ctx, r)
	}
}

func (s *Source) revoke(ctx context.Context, r *pendingRevoke) {
	_, err := s.do(ctx, call{class: "lease-revoke", method: http.MethodPut, path: "sys/leases/revoke", body: map[string]any{"lease_id": r.LeaseID}, ns: s.nsOfRef(r.Ref)})
	var ce *callError
	if err != nil && !(errors.As(err, &ce) && ce.status == http.StatusBadRequest) {
		s.metrics.revocations.WithLabelValues("failed").Inc()
		s.mu.Lock()
		r.Failures++
		r.RevokeAt = s.clock.Now().Add(backoff(s.cfg.MinBackoff, s.cfg.MaxBackoff, r.Failures))
		s.mu.Unlock()
		s.log.Warn("lease revocation failed; retrying", slog.String("lease_id", r.LeaseID), slog.String("error", err.Error()))
		return
	}
	s.metrics.revocations.WithLabelValues("ok").Inc()
	s.log.Info("revoked a lease", slog.String("lease_id", r.LeaseID), slog.String("owner", r.Owner))
	s.mu.Lock()
	delete(s.revokes, r.LeaseID)
	s.mu.Unlock()
	s.forgetRevoke(r.LeaseID)
}

// LeaseStatus describes one current lease without its credential.
type LeaseStatus struct {
	Ref       string
	Owner     string
	LeaseID   string
	ExpiresAt time.Time
	// RenewAt is when a held lease is renewed next, or when a revoking one is tried next.
	RenewAt time.Time
	State   string // LeaseHeld or LeaseRevoking
}

// Leases lists the current leases.
func (s *Source) Leases() []LeaseStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]LeaseStatus, 0, len(s.leases))
	for _, l := range s.leases {
		out = append(out, LeaseStatus{Ref: l.Ref, Owner: l.Owner, LeaseID: l.LeaseID, ExpiresAt: l.ExpiresAt, RenewAt: l.RenewAt, State: LeaseHeld})
	}
	return out
}

// The states of a tracked lease (LeaseStatus.State).
const (
	// LeaseHeld: the current credential of a reference, renewed or re-issued while used
	// (restored leases not yet claimed after a restart included).
	LeaseHeld = "held"
	// LeaseRevoking: given up (replaced, released or orphaned) and waiting for its revocation.
	LeaseRevoking = "revoking"
)

// Tracked lists every lease the node tracks: the current ones and those waiting to be
// revoked. Every lease Vault issued to this node and still lists is one of them, unless its
// answer is being recorded at this moment or was lost with the process that asked for it;
// any other lease missing here is an orphan. Sorted by lease id.
func (s *Source) Tracked() []LeaseStatus {
	s.mu.Lock()
	out := make([]LeaseStatus, 0, len(s.leases)+len(s.revokes))
	for _, l := range s.leases {
		out = append(out, LeaseStatus{Ref: l.Ref, Owner: l.Owner, LeaseID: l.LeaseID, ExpiresAt: l.ExpiresAt, RenewAt: l.RenewAt, State: LeaseHeld})
	}
	for _, r := range s.revokes {
		out = append(out, LeaseStatus{Ref: r.Ref, Owner: r.Owner, LeaseID: r.LeaseID, ExpiresAt: r.ExpiresAt, RenewAt: r.RevokeAt, State: LeaseRevoking})
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b LeaseStatus) int { return strings.Compare(a.LeaseID, b.LeaseID) })
	return out
}

// errReleased answers a fetch whose reference was released while it was under way: the
// credential it got is being revoked. A consumer that still wants the secret fetches again.
var errReleased = fmt.Errorf("%w: the credential was released by its consumers while it was fetched; try again", source.ErrUnavailable)

// releases remembers recent Release calls, so that a fetch under way at that moment neither
// keeps nor hands out the credential it gets. seq numbers the calls; a fetch notes seq when
// it begins.
type releases struct {
	seq uint64
	at  map[string]releaseMark // by reference
}

type releaseMark struct {
	seq  uint64
	when time.Time
}

// releaseMemory is how long a Release is remembered: longer than any fetch may take.
const releaseMemory = 10 * time.Minute

func (r *releases) mark(ref string, now time.Time) {
	r.seq++
	r.at[ref] = releaseMark{seq: r.seq, when: now}
}

// since reports whether ref was released after the sequence number seq was read.
func (r *releases) since(ref string, seq uint64) bool {
	m, ok := r.at[ref]
	return ok && m.seq > seq
}

func (r *releases) prune(now time.Time) {
	for ref, m := range r.at {
		if now.Sub(m.when) > releaseMemory {
			delete(r.at, ref)
		}
	}
}

// Release gives up the credential of the reference path because its last consumer went (a
// pod deleted, a volume unpublished, a grant withdrawn): the lease is forgotten and revoked in
// Vault within a reap interval, its revocation recorded first and retried with backoff until
// the lease expires, so a restart finishes it. A fetch of path under way meanwhile gets
// errReleased, and the credential it obtained is revoked too. The next Fetch of path issues a
// new credential. Release reports whether path had a lease.
func (s *Source) Release(path string) bool {
	now := s.clock.Now()
	s.mu.Lock()
	s.released.mark(path, now)
	l := s.leases[path]
	var rev *pendingRevoke
	if l != nil {
		delete(s.leases, path)
		if now.Before(l.vaultEnd()) {
			rev = &pendingRevoke{LeaseID: l.LeaseID, Ref: path, Owner: l.Owner, RevokeAt: now, ExpiresAt: l.vaultEnd()}
			s.revokes[l.LeaseID] = rev
		}
	}
	s.mu.Unlock()
	if l == nil {
		return false
	}
	// The revocation is recorded as the lease record goes, in one transaction.
	if err := s.commit(rev, nil, path, l.LeaseID); err != nil {
		s.log.Error("record lease release", slog.String("lease_id", l.LeaseID), slog.String("error", err.Error()))
	}
	s.log.Info("lease released by its last consumer; revoking", slog.String("lease_id", l.LeaseID), slog.String("owner", l.Owner))
	s.wake()
	return true
}

// wake makes Run reap now rather than at its next tick.
func (s *Source) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}
