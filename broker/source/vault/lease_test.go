package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

func dbRef(t testing.TB, owner string) string {
	return ref(t, vaultref.Spec{Engine: vaultref.Database, Mount: "database", Role: "app", Owner: owner})
}

func (f *fakeVault) lease(id string) fakeLease {
	f.mu.Lock()
	defer f.mu.Unlock()
	return *f.leases[id]
}

func TestSource_Fetch_leaseIssueRenewReissueRevoke(t *testing.T) {
	e := newEnv(t, nil) // lease TTL 60s, max TTL 300s, grace 10s
	r := dbRef(t, vaultref.ServiceAccountOwner("ns", "app"))
	s1, err := e.s.Fetch(ctxT(t), r)
	if err != nil {
		t.Fatal(err)
	}
	start := e.clock.Now()
	if s1.LeaseID == "" || s1.ExpiresAt != start.Add(time.Minute) {
		t.Fatalf("lease %q expires %v", s1.LeaseID, s1.ExpiresAt)
	}
	if d := s1.RenewAfter.Sub(start); d < 40*time.Second || d > 46*time.Second {
		t.Fatalf("renew after %v, want ⅔ of 60s plus at most 6s jitter", d)
	}
	if e.store.keys("lease/") != 1 {
		t.Fatal("lease not recorded")
	}

	// Before renewAfter: the same credential, no Vault call.
	if s, _ := e.s.Fetch(ctxT(t), r); s.Version != s1.Version || e.f.count("GET database/creds/app") != 1 {
		t.Fatal("fetched again before renewal was due")
	}

	// Renewals keep the credential (same version) and push the expiry.
	var last = s1
	for i := range 6 {
		e.clock.SetTime(last.RenewAfter)
		s, err := e.s.Fetch(ctxT(t), r)
		if err != nil {
			t.Fatal(err)
		}
		if s.Version != s1.Version {
			// Capped by max_ttl (300s from issue): a new credential, the old revoked later.
			if i < 4 {
				t.Fatalf("re-issued after %d renewals", i)
			}
			if !s.ExpiresAt.After(last.ExpiresAt) {
				t.Fatal("new credential expires no later than the old one")
			}
			if old := e.f.lease(s1.LeaseID); old.revoked {
				t.Fatal("old lease revoked at once, with no grace")
			}
			if e.store.keys("revoke/") != 1 {
				t.Fatal("pending revocation not recorded")
			}
			e.clock.Step(11 * time.Second)
			e.s.reap(context.Background())
			if old := e.f.lease(s1.LeaseID); !old.revoked {
				t.Fatal("old lease not revoked after grace")
			}
			if e.store.keys("revoke/") != 0 {
				t.Fatal("done revocation still recorded")
			}
			if e.f.lease(s.LeaseID).revoked {
				t.Fatal("new lease revoked")
			}
			return
		}
		if !s.ExpiresAt.After(last.ExpiresAt) || !e.clock.Now().Before(s.ExpiresAt) {
			t.Fatalf("renewal %d did not extend the lease", i)
		}
		last = s
	}
	t.Fatal("never re-issued before max_ttl")
}

func TestSource_Fetch_leaseRenewalRefused(t *testing.T) {
	e := newEnv(t, nil)
	r := dbRef(t, vaultref.PodOwner("uid-1"))
	s1, err := e.s.Fetch(ctxT(t), r)
	if err != nil {
		t.Fatal(err)
	}
	e.f.mu.Lock()
	e.f.refuse = true
	e.f.mu.Unlock()
	e.clock.SetTime(s1.RenewAfter)
	s2, err := e.s.Fetch(ctxT(t), r)
	if err != nil || s2.LeaseID == s1.LeaseID {
		t.Fatalf("refused renewal did not re-issue: %v", err)
	}
	if e.f.count("PUT sys/leases/renew") != 1 {
		t.Fatal("renewal not attempted")
	}
}

func TestSource_Fetch_leaseNotRenewable(t *testing.T) {
	e := newEnv(t, nil)
	e.f.mu.Lock()
	e.f.renewable = false
	e.f.mu.Unlock()
	r := dbRef(t, vaultref.GrantOwner("g"))
	s1, err := e.s.Fetch(ctxT(t), r)
	if err != nil {
		t.Fatal(err)
	}
	e.clock.SetTime(s1.RenewAfter)
	s2, err := e.s.Fetch(ctxT(t), r)
	if err != nil || s2.LeaseID == s1.LeaseID {
		t.Fatalf("not re-issued: %v", err)
	}
	if e.f.count("PUT sys/leases/renew") != 0 {
		t.Fatal("tried to renew a non-renewable lease")
	}
}

func TestSource_Fetch_leaseRenewalDuringOutageKeepsLease(t *testing.T) {
	e := newEnv(t, nil)
	r := dbRef(t, vaultref.PodOwner("uid-1"))
	s1, _ := e.s.Fetch(ctxT(t), r)
	e.f.mu.Lock()
	e.f.fault = func(w http.ResponseWriter, _ *http.Request) bool { vaultError(w, 503); return true }
	e.f.mu.Unlock()
	e.clock.SetTime(s1.RenewAfter)
	if _, err := e.s.Fetch(ctxT(t), r); !errors.Is(err, source.ErrUnavailable) {
		t.Fatalf("err = %v", err)
	}
	e.f.mu.Lock()
	e.f.fault = nil
	e.f.mu.Unlock()
	e.clock.Step(2 * time.Second)
	s2, err := e.s.Fetch(ctxT(t), r)
	if err != nil || s2.LeaseID != s1.LeaseID {
		t.Fatalf("after the outage: %v, same lease %v", err, s2 != nil && s2.LeaseID == s1.LeaseID)
	}
}

func TestSource_Fetch_shareOwnersGetDistinctLeases(t *testing.T) {
	e := newEnv(t, nil)
	a, _ := e.s.Fetch(ctxT(t), dbRef(t, vaultref.PodOwner("uid-1")))
	b, _ := e.s.Fetch(ctxT(t), dbRef(t, vaultref.PodOwner("uid-2")))
	a2, _ := e.s.Fetch(ctxT(t), dbRef(t, vaultref.PodOwner("uid-1")))
	if a.LeaseID == b.LeaseID || a.LeaseID != a2.LeaseID {
		t.Fatal("owners do not map to leases one to one")
	}
}

func TestSource_restart_reusesLeasesInUseAndRevokesOrphans(t *testing.T) {
	e := newEnv(t, nil)
	e.f.leaseTTL, e.f.maxTTL = 600, 6000
	used := dbRef(t, vaultref.PodOwner("used"))
	orphan := dbRef(t, vaultref.PodOwner("orphan"))
	replaced := dbRef(t, vaultref.PodOwner("replaced"))
	su, _ := e.s.Fetch(ctxT(t), used)
	so, _ := e.s.Fetch(ctxT(t), orphan)
	sr, _ := e.s.Fetch(ctxT(t), replaced)
	// Replace one lease so that a revocation is pending when the daemon dies.
	e.f.mu.Lock()
	e.f.refuse = true
	e.f.mu.Unlock()
	e.clock.SetTime(sr.RenewAfter)
	if _, err := e.s.Fetch(ctxT(t), replaced); err != nil {
		t.Fatal(err)
	}
	e.f.mu.Lock()
	e.f.refuse = false
	e.f.mu.Unlock()

	// "kill -9": a new Source on the same store and Vault.
	s2, err := New(Config{Address: e.f.srv.URL, Auth: e.s.cfg.Auth, Leases: e.store.DB, Logger: e.s.log, Clock: e.clock,
		LeaseGrace: 10 * time.Second, OrphanGrace: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	issued := e.f.count("GET database/creds/app")
	got, err := s2.Fetch(ctxT(t), used)
	if err != nil || got.LeaseID != su.LeaseID {
		t.Fatalf("restart did not reuse the lease in use: %v", err)
	}
	if e.f.count("GET database/creds/app") != issued {
		t.Fatal("restart issued a new credential for a lease in use")
	}
	e.clock.Step(11 * time.Second)
	s2.reap(context.Background())
	if !e.f.lease(sr.LeaseID).revoked {
		t.Fatal("pending revocation lost across the restart")
	}
	if e.f.lease(so.LeaseID).revoked {
		t.Fatal("orphan revoked before its grace")
	}
	e.clock.Step(time.Minute)
	s2.reap(context.Background())
	if !e.f.lease(so.LeaseID).revoked {
		t.Fatal("unclaimed lease not revoked after the orphan grace")
	}
	if e.f.lease(su.LeaseID).revoked {
		t.Fatal("lease in use revoked")
	}
}

func TestSource_reap_forgetsExpiredLeases(t *testing.T) {
	e := newEnv(t, nil)
	s, _ := e.s.Fetch(ctxT(t), dbRef(t, vaultref.PodOwner("p")))
	e.clock.SetTime(s.ExpiresAt)
	e.s.reap(context.Background())
	if len(e.s.Leases()) != 0 || e.store.keys("lease/") != 0 {
		t.Fatal("expired lease kept")
	}
}

func TestSource_Fetch_learntMaxTTLReissuesWithOverlap(t *testing.T) {
	e := newEnv(t, nil) // lease TTL 60s, max TTL 300s
	r := dbRef(t, vaultref.PodOwner("p"))
	first, err := e.s.Fetch(ctxT(t), r)
	if err != nil {
		t.Fatal(err)
	}
	// Renew until the first capped renewal re-issues.
	cur := first
	for cur.LeaseID == first.LeaseID {
		e.clock.SetTime(cur.RenewAfter)
		if cur, err = e.s.Fetch(ctxT(t), r); err != nil {
			t.Fatal(err)
		}
	}
	second := cur
	capped := e.f.count("PUT sys/leases/renew")
	// The second lease is replaced before its max_ttl with at least a third of the TTL left,
	// without waiting for a capped renewal.
	for cur.LeaseID == second.LeaseID {
		e.clock.SetTime(cur.RenewAfter)
		if cur, err = e.s.Fetch(ctxT(t), r); err != nil {
			t.Fatal(err)
		}
	}
	maxEnd := e.f.lease(second.LeaseID).issued.Add(300 * time.Second)
	if left := maxEnd.Sub(e.clock.Now()); left < 20*time.Second {
		t.Fatalf("re-issued with only %v of overlap before max_ttl", left)
	}
	renewals := e.f.count("PUT sys/leases/renew") - capped
	if renewals < 3 {
		t.Fatalf("only %d renewals of the second lease", renewals)
	}
	if got := counterValue(e.s.metrics.reissues.WithLabelValues("max_ttl")); got != 2 {
		t.Fatalf("max_ttl re-issues = %v, want 2", got)
	}
}

// TestSource_Fetch_leaseDurationOutOfRange: a lease TTL no Vault sends (negative, or so large
// that seconds → time.Duration overflows into a wrong expiry) is refused as Unavailable, so
// nothing is delivered with an expiry the daemon made up.
func TestSource_Fetch_leaseDurationOutOfRange(t *testing.T) {
	for _, ttl := range []int{-1, 1 << 40, 10*365*24*60*60 + 1} {
		t.Run(fmt.Sprint(ttl), func(t *testing.T) {
			e := newEnv(t, nil)
			e.f.mu.Lock()
			e.f.leaseTTL = ttl
			e.f.mu.Unlock()
			s, err := e.s.Fetch(ctxT(t), dbRef(t, vaultref.PodOwner("uid-1")))
			if !errors.Is(err, source.ErrUnavailable) || !strings.Contains(err.Error(), "lease duration out of range") {
				t.Fatalf("lease_duration %d: secret %v (expires %v), err %v; want Unavailable", ttl, s, expiry(s), err)
			}
		})
	}
}

func expiry(s *source.Secret) time.Time {
	if s == nil {
		return time.Time{}
	}
	return s.ExpiresAt
}
