package vault

import (
	"encoding/json"
	"log/slog"
	"strings"

	"github.com/keywarden/keywarden/broker/store"
)

// LeaseBucket is the store bucket this package owns: one record per current lease
// ("lease/<hash of the reference>") and per pending revocation ("revoke/<hash of the lease
// id>"). Records hold credentials, so they live only sealed in the store.
const LeaseBucket = "vault-leases"

// LeaseStore is the part of the store the source uses.
type LeaseStore interface {
	Put(bucket, key string, value []byte) error
	Delete(bucket, key string) error
	List(bucket string) ([]store.Record, error)
}

var _ LeaseStore = (*store.DB)(nil)

func leaseKey(ref string) string { return "lease/" + shortHash(ref) }
func revokeKey(id string) string { return "revoke/" + shortHash(id) }

// restore loads the leases and pending revocations of the previous run. Restored leases are
// unclaimed until a consumer fetches their reference; Run revokes those still unclaimed after
// OrphanGrace. Unreadable records are dropped with a log line (the lease then expires in Vault
// by itself).
func (s *Source) restore() error {
	if s.cfg.Leases == nil {
		return nil
	}
	recs, err := s.cfg.Leases.List(LeaseBucket)
	if err != nil {
		// The leases then expire in Vault by themselves; refusing to start would be worse.
		s.log.Error("cannot read the recorded vault leases; they will expire unrenewed", slog.String("error", err.Error()))
		return nil
	}
	now := s.clock.Now()
	for _, r := range recs {
		switch {
		case strings.HasPrefix(r.Key, "lease/"):
			var l lease
			if err := json.Unmarshal(r.Value, &l); err != nil || l.LeaseID == "" || l.Ref == "" {
				s.log.Warn("dropping an unreadable lease record", slog.String("key", r.Key))
				_ = s.cfg.Leases.Delete(LeaseBucket, r.Key)
				continue
			}
			if !now.Before(l.ExpiresAt) {
				_ = s.cfg.Leases.Delete(LeaseBucket, r.Key)
				continue
			}
			s.leases[l.Ref] = &l
		case strings.HasPrefix(r.Key, "revoke/"):
			var p pendingRevoke
			if err := json.Unmarshal(r.Value, &p); err != nil || p.LeaseID == "" {
				_ = s.cfg.Leases.Delete(LeaseBucket, r.Key)
				continue
			}
			s.revokes[p.LeaseID] = &p
		}
	}
	if len(s.leases)+len(s.revokes) > 0 {
		s.log.Info("restored vault leases", slog.Int("leases", len(s.leases)), slog.Int("pending_revocations", len(s.revokes)))
	}
	return nil
}

// persistLease records l (and the revocation of the lease it replaced). A failure is logged:
// the credential still works, only a restart would lose track of it.
func (s *Source) persistLease(l *lease, rev *pendingRevoke) {
	if s.cfg.Leases == nil {
		return
	}
	if rev != nil {
		if err := s.cfg.Leases.Put(LeaseBucket, revokeKey(rev.LeaseID), encodeRecord(rev)); err != nil {
			s.log.Error("record pending lease revocation", slog.String("lease_id", rev.LeaseID), slog.String("error", err.Error()))
		}
	}
	if err := s.cfg.Leases.Put(LeaseBucket, leaseKey(l.Ref), encodeRecord(l)); err != nil {
		s.log.Error("record lease", slog.String("lease_id", l.LeaseID), slog.String("error", err.Error()))
	}
}

func (s *Source) forgetLease(ref string) {
	if s.cfg.Leases != nil {
		_ = s.cfg.Leases.Delete(LeaseBucket, leaseKey(ref))
	}
}

func (s *Source) forgetRevoke(id string) {
	if s.cfg.Leases != nil {
		_ = s.cfg.Leases.Delete(LeaseBucket, revokeKey(id))
	}
}
