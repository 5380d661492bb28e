package vault

import (
	"encoding/json"
	"log/slog"

	"github.com/keywarden/keywarden/broker/store"
)

// LeaseBucket is the store bucket this package owns: one record per current lease
// ("lease/<hash of the reference>") and per pending revocation ("revoke/<hash of the lease
// id>"). Records hold credentials, so they live only sealed in the store.
const LeaseBucket = "vault-leases"

// leaseBuckets are the two record kinds of LeaseBucket: current leases keyed by the hash of
// their reference, pending revocations keyed by the hash of the lease id.
type leaseBuckets struct {
	leases  store.Bucket[lease]         // "lease/<hash>"
	revokes store.Bucket[pendingRevoke] // "revoke/<hash>"
}

// restore loads the leases and pending revocations of the previous run. Restored leases are
// unclaimed until a consumer fetches their reference; Run revokes those still unclaimed after
// OrphanGrace. Unreadable records are dropped with a log line (the lease then expires in Vault
// by itself).
func (s *Source) restore() error {
	if s.cfg.Leases == nil {
		return nil
	}
	leases, err := s.stored.leases.List()
	var revokes []store.Item[pendingRevoke]
	if err == nil {
		revokes, err = s.stored.revokes.List()
	}
	if err != nil {
		// The leases then expire in Vault by themselves; refusing to start would be worse.
		s.log.Error("cannot read the recorded vault leases; they will expire unrenewed", slog.String("error", err.Error()))
		return nil
	}
	now := s.clock.Now()
	for _, r := range leases {
		l := r.Value
		if r.Err != nil || l.LeaseID == "" || l.Ref == "" {
			s.log.Warn("dropping an unreadable lease record", slog.String("key", "lease/"+r.Key))
			_ = s.stored.leases.Delete(r.Key)
			continue
		}
		if !now.Before(l.ExpiresAt) {
			// Expired as far as the record says; a renewal answered as the process died may
			// have extended it, so it is revoked unless Vault has certainly ended it.
			if now.Before(l.vaultEnd()) {
				p := &pendingRevoke{LeaseID: l.LeaseID, Ref: l.Ref, Owner: l.Owner, RevokeAt: now, ExpiresAt: l.vaultEnd()}
				s.revokes[p.LeaseID] = p
				if err := s.commit(p, nil, l.Ref, l.LeaseID); err != nil {
					s.log.Error("record lease revocation", slog.String("error", err.Error()))
				}
				continue
			}
			_ = s.stored.leases.Delete(r.Key)
			continue
		}
		s.leases[l.Ref] = &l
	}
	for _, r := range revokes {
		p := r.Value
		if r.Err != nil || p.LeaseID == "" {
			_ = s.stored.revokes.Delete(r.Key)
			continue
		}
		s.revokes[p.LeaseID] = &p
		if l := s.leases[p.Ref]; l != nil && l.LeaseID == p.LeaseID {
			// Recorded as both current and pending revocation (a store written before the two
			// were committed together): it is being revoked, so a consumer gets a new one.
			delete(s.leases, p.Ref)
			_ = s.stored.leases.Delete(shortHash(p.Ref))
		}
	}
	if len(s.leases)+len(s.revokes) > 0 {
		s.log.Info("restored vault leases", slog.Int("leases", len(s.leases)), slog.Int("pending_revocations", len(s.revokes)))
	}
	return nil
}

// persistLease records l and the revocation of the lease it replaced, in one transaction: a
// crash leaves either the old lease current or the new one current and the old one pending
// revocation, never the old one unrecorded. A failure is logged: the credential still works,
// only a restart would lose track of it.
func (s *Source) persistLease(l *lease, rev *pendingRevoke) {
	if s.cfg.Leases == nil {
		return
	}
	if err := s.commit(rev, l, "", ""); err != nil {
		s.log.Error("record lease", slog.String("lease_id", l.LeaseID), slog.String("error", err.Error()))
	}
}

// commit writes, in one transaction, the pending revocation rev and the current lease l (each
// when not nil) and deletes the lease record of the reference forget (when not empty) if it
// still holds the lease forgetID: commits of one reference may land in another order than
// the decisions were taken under s.mu, and a successor must not lose its record.
func (s *Source) commit(rev *pendingRevoke, l *lease, forget, forgetID string) error {
	if s.cfg.Leases == nil {
		return nil
	}
	var revRaw, leaseRaw []byte
	var err error
	if rev != nil {
		if revRaw, err = json.Marshal(rev); err != nil {
			return err
		}
	}
	if l != nil {
		if leaseRaw, err = json.Marshal(l); err != nil {
			return err
		}
	}
	return s.cfg.Leases.Update(func(tx *store.Tx) error {
		if rev != nil {
			if err := tx.Put(LeaseBucket, "revoke/"+shortHash(rev.LeaseID), revRaw); err != nil {
				return err
			}
		}
		if l != nil {
			if err := tx.Put(LeaseBucket, "lease/"+shortHash(l.Ref), leaseRaw); err != nil {
				return err
			}
		}
		if forget == "" {
			return nil
		}
		key := "lease/" + shortHash(forget)
		raw, err := tx.Get(LeaseBucket, key)
		if err != nil {
			return nil // gone already (or unreadable: restore drops it)
		}
		var cur struct {
			LeaseID string `json:"leaseId"`
		}
		if json.Unmarshal(raw, &cur) == nil && cur.LeaseID != forgetID {
			return nil
		}
		return tx.Delete(LeaseBucket, key)
	})
}

// persistRevoke records a pending revocation on its own.
func (s *Source) persistRevoke(rev *pendingRevoke) {
	if s.cfg.Leases == nil {
		return
	}
	if err := s.stored.revokes.Put(shortHash(rev.LeaseID), *rev); err != nil {
		s.log.Error("record pending lease revocation", slog.String("lease_id", rev.LeaseID), slog.String("error", err.Error()))
	}
}

func (s *Source) forgetRevoke(id string) {
	if s.cfg.Leases != nil {
		_ = s.stored.revokes.Delete(shortHash(id))
	}
}
