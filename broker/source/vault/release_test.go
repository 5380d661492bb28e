package vault

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

func TestSource_Release_revokesAtOnceAndNextFetchIssuesAnew(t *testing.T) {
	e := newEnv(t, nil)
	r := dbRef(t, vaultref.PodOwner("uid-1"))
	s1, err := e.s.Fetch(ctxT(t), r)
	if err != nil {
		t.Fatal(err)
	}
	if !e.s.Release(r) {
		t.Fatal("Release found no lease")
	}
	if e.store.keys("lease/") != 0 || e.store.keys("revoke/") != 1 {
		t.Fatalf("records after release: %d leases, %d revocations; want 0 and 1", e.store.keys("lease/"), e.store.keys("revoke/"))
	}
	// No grace: the consumer is gone, so the revocation is due now (the next reap).
	e.s.reap(context.Background())
	if !e.f.lease(s1.LeaseID).revoked {
		t.Fatal("released lease not revoked at the next reap")
	}
	if e.store.keys("revoke/") != 0 || len(e.s.Leases()) != 0 {
		t.Fatal("done revocation or released lease still recorded")
	}
	if e.s.Release(r) {
		t.Fatal("second Release found a lease")
	}
	s2, err := e.s.Fetch(ctxT(t), r)
	if err != nil {
		t.Fatal(err)
	}
	if s2.LeaseID == s1.LeaseID || e.f.count("GET database/creds/app") != 2 {
		t.Fatal("fetch after release did not issue a new credential")
	}
	if !strings.Contains(e.logs.String(), "lease released by its last consumer") {
		t.Error("release not logged")
	}
}

func TestSource_Release_failedRevocationRetriedAndSurvivesRestart(t *testing.T) {
	e := newEnv(t, nil)
	r := dbRef(t, vaultref.PodOwner("uid-1"))
	s1, err := e.s.Fetch(ctxT(t), r)
	if err != nil {
		t.Fatal(err)
	}
	wantTracked(t, e.s, s1.LeaseID, LeaseHeld)
	fail := true
	e.f.mu.Lock()
	e.f.fault = func(w http.ResponseWriter, req *http.Request) bool {
		if fail && strings.HasSuffix(req.URL.Path, "sys/leases/revoke") {
			vaultError(w, http.StatusInternalServerError)
			return true
		}
		return false
	}
	e.f.mu.Unlock()
	e.s.Release(r)
	e.s.reap(context.Background())
	if e.f.lease(s1.LeaseID).revoked || e.store.keys("revoke/") != 1 {
		t.Fatal("a failed revocation must stay recorded")
	}
	wantTracked(t, e.s, s1.LeaseID, LeaseRevoking)

	// A restart (a new Source on the same store) finishes it.
	e.f.mu.Lock()
	fail = false
	e.f.mu.Unlock()
	s2, err := New(e.s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	wantTracked(t, s2, s1.LeaseID, LeaseRevoking) // restored, before its retry
	s2.reap(context.Background())
	if !e.f.lease(s1.LeaseID).revoked || e.store.keys("revoke/") != 0 {
		t.Fatal("restarted source did not finish the recorded revocation")
	}
	wantTracked(t, s2, "", "")
}

// wantTracked checks that s tracks exactly one lease, id in state, or none when id is "".
func wantTracked(t *testing.T, s *Source, id, state string) {
	t.Helper()
	got := s.Tracked()
	if id == "" {
		if len(got) != 0 {
			t.Fatalf("Tracked() = %+v, want none", got)
		}
		return
	}
	if len(got) != 1 || got[0].LeaseID != id || got[0].State != state {
		t.Fatalf("Tracked() = %+v, want %s %s", got, id, state)
	}
}

// A fetch under way when its reference is released must neither keep nor hand out the
// credential it obtains.
func TestSource_Release_duringIssue(t *testing.T) {
	e := newEnv(t, nil)
	r := dbRef(t, vaultref.PodOwner("uid-1"))
	spec, err := vaultref.Parse(r)
	if err != nil {
		t.Fatal(err)
	}
	e.s.mu.Lock()
	seq := e.s.released.seq // the fetch begins
	e.s.mu.Unlock()
	e.s.Release(r) // its consumer goes meanwhile
	sec, err := e.s.issue(ctxT(t), r, spec, nil, "new", seq)
	if !errors.Is(err, errReleased) || !errors.Is(err, source.ErrUnavailable) || sec != nil {
		t.Fatalf("issue after release = %v, %v; want errReleased", sec, err)
	}
	if len(e.s.Leases()) != 0 || e.store.keys("lease/") != 0 || e.store.keys("revoke/") != 1 {
		t.Fatal("the credential issued during the release was kept")
	}
	e.s.reap(context.Background())
	revoked := 0
	e.f.mu.Lock()
	for _, l := range e.f.leases {
		if l.revoked {
			revoked++
		}
	}
	n := len(e.f.leases)
	e.f.mu.Unlock()
	if n != 1 || revoked != 1 {
		t.Fatalf("vault holds %d leases, %d revoked; want the one issued, revoked", n, revoked)
	}
	// A fetch that begins after the release is a new consumer's: it keeps its credential.
	if _, err := e.s.Fetch(ctxT(t), r); err != nil {
		t.Fatal(err)
	}
	if len(e.s.Leases()) != 1 {
		t.Fatal("fetch after the release kept no lease")
	}
}

// A lease renewed while it is released is not put back.
func TestSource_Release_duringRenewal(t *testing.T) {
	e := newEnv(t, nil)
	r := dbRef(t, vaultref.PodOwner("uid-1"))
	if _, err := e.s.Fetch(ctxT(t), r); err != nil {
		t.Fatal(err)
	}
	e.s.mu.Lock()
	cur, seq := e.s.leases[r], e.s.released.seq
	e.s.mu.Unlock()
	e.s.Release(r)
	if _, _, err := e.s.renewLease(ctxT(t), cur, seq); !errors.Is(err, errReleased) {
		t.Fatalf("renewal after release: %v, want errReleased", err)
	}
	if len(e.s.Leases()) != 0 || e.store.keys("lease/") != 0 {
		t.Fatal("renewal put the released lease back")
	}
}

// A lease recorded both as current and as pending revocation (a crash of an older release
// between its two writes) is not served again after a restart: it is revoked, and the next
// fetch issues a new credential.
func TestSource_restore_leaseAlsoPendingRevocationIsNotCurrent(t *testing.T) {
	e := newEnv(t, nil)
	r := dbRef(t, vaultref.PodOwner("uid-1"))
	s1, err := e.s.Fetch(ctxT(t), r)
	if err != nil {
		t.Fatal(err)
	}
	rev := pendingRevoke{LeaseID: s1.LeaseID, Ref: r, RevokeAt: e.clock.Now(), ExpiresAt: s1.ExpiresAt}
	if err := e.s.stored.revokes.Put(shortHash(s1.LeaseID), rev); err != nil {
		t.Fatal(err)
	}
	s2, err := New(e.s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(s2.Leases()) != 0 || e.store.keys("lease/") != 0 {
		t.Fatal("a lease pending revocation was restored as current")
	}
	s2.reap(context.Background())
	if !e.f.lease(s1.LeaseID).revoked {
		t.Fatal("not revoked")
	}
	s3, err := s2.Fetch(ctxT(t), r)
	if err != nil || s3.LeaseID == s1.LeaseID {
		t.Fatalf("fetch after restore: %v, %v", s3, err)
	}
}

// A drop of a lease whose commit lands after its successor's must not delete the successor's
// record (the first long run of the lease campaign lost one that way: 1 orphan in 600 trials).
func TestSource_commit_forgetSparesASuccessor(t *testing.T) {
	e := newEnv(t, nil)
	r := dbRef(t, vaultref.PodOwner("uid-1"))
	if _, err := e.s.Fetch(ctxT(t), r); err != nil {
		t.Fatal(err)
	}
	e.s.mu.Lock()
	next := *e.s.leases[r]
	e.s.mu.Unlock()
	oldID := next.LeaseID
	next.LeaseID = "database/creds/app/successor"
	e.s.persistLease(&next, nil)
	if err := e.s.commit(nil, nil, r, oldID); err != nil {
		t.Fatal(err)
	}
	if e.store.keys("lease/") != 1 {
		t.Fatal("the late drop of the old lease deleted its successor's record")
	}
	if err := e.s.commit(nil, nil, r, next.LeaseID); err != nil {
		t.Fatal(err)
	}
	if e.store.keys("lease/") != 0 {
		t.Fatal("the drop of the recorded lease left its record")
	}
}
