package server_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/keyrot"
	"github.com/keywarden/keywarden/broker/server"
	"github.com/keywarden/keywarden/broker/store"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"

	"github.com/keywarden/keywarden/internal/testlog"
)

type fakeKeys struct {
	mu      sync.Mutex
	started []keyrot.Kinds
	status  keyrot.Status
}

func (k *fakeKeys) Start(kinds keyrot.Kinds) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.started = append(k.started, kinds)
	return nil
}

func (k *fakeKeys) Status() keyrot.Status { return k.status }

type eventRecorder struct {
	mu  sync.Mutex
	evs []audit.Event
}

func (r *eventRecorder) Record(_ context.Context, ev audit.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, ev)
}

func TestAdminService_RotateKeys_startsAuditsAndReports(t *testing.T) {
	started := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	keys := &fakeKeys{status: keyrot.Status{
		Running: true, Kinds: keyrot.Kinds{DEK: true, KEK: true}, Started: started, Provider: "local", KEKKeys: 2,
		Stores: []keyrot.StoreStatus{{Name: "state", KeyStatus: store.KeyStatus{PrimaryKeyID: 7, KeyIDs: []uint32{5, 7}, WrappedBy: "tink:9", Records: 10, Stale: 4, ResealPending: true, Resealed: 6}}},
	}}
	rec := &eventRecorder{}
	c := serveAdmin(t, server.AdminConfig{Broker: fakeAdminBroker{}, Cache: fakeCacheStatus{}, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
		Logger: slog.New(slog.NewJSONHandler(&testlog.Buffer{}, nil)), Keys: keys, Recorder: rec})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.RotateKeys(ctx, &keywardenv1.RotateKeysRequest{Dek: true, Kek: true})
	if err != nil {
		t.Fatal(err)
	}
	keys.mu.Lock()
	if len(keys.started) != 1 || keys.started[0] != (keyrot.Kinds{DEK: true, KEK: true}) {
		t.Fatalf("started %v", keys.started)
	}
	keys.mu.Unlock()
	st := resp.GetStatus()
	if st.GetState() != "running" || st.GetWhat() != "dek+kek" || st.GetKekKeys() != 2 || !st.GetStartedAt().AsTime().Equal(started) || st.GetFinishedAt() != nil {
		t.Fatalf("status %v", st)
	}
	s := st.GetStores()[0]
	if s.GetName() != "state" || s.GetPrimaryKeyId() != 7 || len(s.GetKeyIds()) != 2 || s.GetStaleRecords() != 4 || !s.GetResealPending() || s.GetResealed() != 6 || s.GetWrappedBy() != "tink:9" {
		t.Fatalf("store %v", s)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var found bool
	for _, ev := range rec.evs {
		if ev.Kind == audit.KindAdmin && ev.Action == "RotateKeys" && ev.Outcome == audit.OutcomeAllow && ev.Reason == "rotate dek+kek" && ev.Actor == "admin-socket" {
			found = true
		}
	}
	if !found {
		t.Fatalf("RotateKeys not audited: %+v", rec.evs)
	}
}

func TestAdminService_RotationStatus_states(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		st   keyrot.Status
		want string
	}{
		{keyrot.Status{}, "idle"},
		{keyrot.Status{Running: true, Started: now}, "running"},
		{keyrot.Status{Started: now, Finished: now}, "done"},
		{keyrot.Status{Started: now, Finished: now, LastError: "boom"}, "failed"},
	} {
		c := serveAdmin(t, server.AdminConfig{Broker: fakeAdminBroker{}, Cache: fakeCacheStatus{}, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
			Logger: slog.New(slog.NewJSONHandler(&testlog.Buffer{}, nil)), Keys: &fakeKeys{status: tc.st}})
		got, err := c.RotationStatus(context.Background(), &keywardenv1.RotationStatusRequest{})
		if err != nil || got.GetState() != tc.want {
			t.Errorf("state of %+v = %q, %v; want %q", tc.st, got.GetState(), err, tc.want)
		}
	}
}

type fakeLeases []server.TrackedLease

func (f fakeLeases) TrackedLeases() []server.TrackedLease { return f }

// GetStatus lists the Vault leases the node tracks, in both states, without a credential.
func TestAdminService_GetStatus_vaultLeases(t *testing.T) {
	exp := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	leases := fakeLeases{
		{LeaseID: "database/creds/app/a", Path: "database/creds/app", Owner: "uid-1", State: "held", ExpiresAt: exp},
		{LeaseID: "database/creds/app/b", Path: "database/creds/app", State: "revoking", ExpiresAt: exp},
	}
	c := serveAdmin(t, server.AdminConfig{Broker: fakeAdminBroker{}, Cache: fakeCacheStatus{}, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
		Logger: slog.New(slog.NewJSONHandler(&testlog.Buffer{}, nil)), Leases: leases})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.GetStatus(ctx, &keywardenv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := st.GetVaultLeases()
	if len(got) != 2 || got[0].GetLeaseId() != "database/creds/app/a" || got[0].GetOwner() != "uid-1" || got[0].GetState() != "held" ||
		!got[0].GetExpiresAt().AsTime().Equal(exp) || got[1].GetState() != "revoking" || got[1].GetOwner() != "" {
		t.Fatalf("vault leases %v", got)
	}

	// Without a lister (no Vault), none.
	c = serveAdmin(t, server.AdminConfig{Broker: fakeAdminBroker{}, Cache: fakeCacheStatus{}, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
		Logger: slog.New(slog.NewJSONHandler(&testlog.Buffer{}, nil))})
	if st, err = c.GetStatus(ctx, &keywardenv1.GetStatusRequest{}); err != nil || len(st.GetVaultLeases()) != 0 {
		t.Fatalf("without Vault: %v, %v", st.GetVaultLeases(), err)
	}
}
