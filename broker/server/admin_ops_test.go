package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/revoke"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/server"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/client"
	"github.com/keywarden/keywarden/internal/grpcx"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// gateSource is the local source whose fetches can be held open (a rotation in progress).
type gateSource struct {
	source.Source
	mu      sync.Mutex
	gate    chan struct{} // nil: fetch at once
	entered chan struct{}
	fetches int
}

func (g *gateSource) Fetch(ctx context.Context, path string) (*source.Secret, error) {
	g.mu.Lock()
	g.fetches++
	gate, entered := g.gate, g.entered
	g.mu.Unlock()
	if gate != nil {
		entered <- struct{}{}
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return g.Source.Fetch(ctx, path)
}

func (g *gateSource) hold() (entered <-chan struct{}, release func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gate, g.entered = make(chan struct{}), make(chan struct{}, 16)
	gate := g.gate
	return g.entered, func() {
		g.mu.Lock()
		g.gate = nil
		g.mu.Unlock()
		close(gate)
	}
}

func (g *gateSource) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fetches
}

type adminStack struct {
	stack
	engine  *rotate.Engine
	auditL  *audit.Log
	revoker *revoke.Manager
	gate    *gateSource
	cfg     server.AdminConfig
	conn    keywardenv1.AdminServiceClient
}

// newAdminStack runs the real broker with the persistent audit log, the revocation manager
// and the admin service with every feature, over Unix sockets.
func newAdminStack(t *testing.T) *adminStack {
	t.Helper()
	bs := newBase(t)
	auditLog, err := audit.Open(audit.Config{DB: bs.db, Logger: bs.log, FlushInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	gate := &gateSource{Source: bs.loc}
	eng, err := rotate.New(rotate.Config{Sources: map[string]source.Source{"local": gate}, Logger: bs.log, TickInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{Verifier: bs.ver, Cache: eng, Audit: auditLog, Logger: bs.log})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.UpdateGrantSource("file", demoGrants(t)); err != nil {
		t.Fatal(err)
	}
	rev, err := revoke.New(revoke.Config{Broker: b, Purger: eng, Logger: bs.log,
		Apply: func(s *grant.Set) error { return b.UpdateGrantSource(revoke.SourceName, s) }})
	if err != nil {
		t.Fatal(err)
	}
	ws, err := server.NewWorkloadServer(server.WorkloadConfig{Broker: b, Logger: bs.log})
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.AdminConfig{Broker: b, Secrets: bs.loc, Cache: eng, TrustDomain: bs.td, Logger: bs.log,
		Audit: auditLog, Rotator: eng, Revoker: rev}
	as, err := server.NewAdminServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	st := &adminStack{stack: stack{dev: bs.dev, local: bs.loc, broker: b, logs: bs.logs},
		engine: eng, auditL: auditLog, revoker: rev, gate: gate, cfg: cfg}
	// Registered before serveStack's cleanup, so it runs after the servers stopped.
	t.Cleanup(func() { _ = auditLog.Close() })
	st.socket, st.admin = serveStack(t, bs.dir, ws, as, eng.Run, auditLog.Run, rev.Run)
	conn, err := grpc.NewClient(client.Target(st.admin), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	st.conn = keywardenv1.NewAdminServiceClient(conn)
	return st
}

func TestAdminService_audit_tailVerifyExport(t *testing.T) {
	s := newAdminStack(t)
	ctx := context.Background()
	c := s.client(t, s.token(t, "demo", "app"))
	if _, err := c.Get(ctx, "demo-db"); err != nil {
		t.Fatal(err)
	}
	other := s.client(t, s.token(t, "demo", "intruder"))
	if _, err := other.Get(ctx, "demo-db"); err == nil {
		t.Fatal("intruder read the secret")
	}

	tail, err := s.conn.AuditTail(ctx, &keywardenv1.AuditTailRequest{Last: 100, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	var entries []audit.Entry
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(strings.Join(kinds, ","), "decision/deny") {
		if time.Now().After(deadline) {
			t.Fatalf("tail never showed the denied decision; got %v", kinds)
		}
		m, err := tail.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var e audit.Entry
		if err := json.Unmarshal(m.GetJson(), &e); err != nil || e.Seq != m.GetSeq() {
			t.Fatalf("entry %s: %v", m.GetJson(), err)
		}
		entries = append(entries, e)
		kinds = append(kinds, string(e.Event.Kind)+"/"+string(e.Event.Outcome))
	}
	// Follow: a new event arrives on the open stream.
	if _, err := c.Get(ctx, "demo-db"); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := tail.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var e audit.Entry
		_ = json.Unmarshal(m.GetJson(), &e)
		if e.Event != nil && e.Event.Kind == audit.KindDelivery && e.Seq > entries[len(entries)-1].Seq {
			break
		}
	}

	v, err := s.conn.AuditVerify(ctx, &keywardenv1.AuditVerifyRequest{})
	if err != nil || !v.GetOk() || v.GetEntries() == 0 || len(v.GetHeadHash()) != 64 {
		t.Fatalf("verify: %v %v", v, err)
	}
	exp, err := s.conn.AuditExport(ctx, &keywardenv1.AuditExportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for {
		m, err := exp.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(m.GetData())
	}
	rep, err := audit.VerifyExport(bytes.NewReader(buf.Bytes()))
	if err != nil || rep.Entries == 0 {
		t.Fatalf("export does not verify: %v (%+v)", err, rep)
	}
	for _, bad := range []string{secretValue, s.token(t, "demo", "app")[:40]} {
		if strings.Contains(buf.String(), bad) {
			t.Fatal("the audit export holds a secret value or token")
		}
	}
	// Every admin call is itself audited, with its actor.
	if err := s.auditL.Flush(); err != nil {
		t.Fatal(err)
	}
	all, _ := s.auditL.Last(1000)
	var sawVerify bool
	for _, e := range all {
		if e.Event != nil && e.Event.Kind == audit.KindAdmin && e.Event.Action == "AuditVerify" && e.Event.Actor == "admin-socket" {
			sawVerify = true
		}
	}
	if !sawVerify {
		t.Error("AuditVerify was not audited")
	}
	st, err := s.conn.GetStatus(ctx, &keywardenv1.GetStatusRequest{})
	if err != nil || !st.GetAudit().GetEnabled() || st.GetAudit().GetHeadSeq() == 0 || len(st.GetGrantSources()) == 0 {
		t.Fatalf("status: %v %v", st, err)
	}
}

func TestAdminService_rotateNowAndRevoke(t *testing.T) {
	s := newAdminStack(t)
	ctx := context.Background()
	c := s.client(t, s.token(t, "demo", "app"))
	if _, err := c.Get(ctx, "demo-db"); err != nil {
		t.Fatal(err)
	}
	before := s.gate.count()
	r, err := s.conn.RotateNow(ctx, &keywardenv1.RotateNowRequest{Secret: "demo-db"})
	if err != nil || len(r.GetSources()) != 1 || r.GetSources()[0].GetVersion() != "1" || r.GetSources()[0].GetError() != "" {
		t.Fatalf("rotate: %v %v", r, err)
	}
	if s.gate.count() != before+1 {
		t.Errorf("RotateNow made %d fetches, want 1", s.gate.count()-before)
	}
	_, err = s.conn.RotateNow(ctx, &keywardenv1.RotateNowRequest{Secret: "nobody-grants-this"})
	expectStatus(t, err, codes.NotFound, "no grant in force")
	_, err = s.conn.RotateNow(ctx, &keywardenv1.RotateNowRequest{Secret: "../x"})
	expectStatus(t, err, codes.InvalidArgument, "secret")

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	got := make(chan struct{}, 4)
	go func() {
		done <- c.Watch(wctx, []string{"demo-db"}, func(*client.Secret) error { got <- struct{}{}; return nil })
	}()
	<-got
	rv, err := s.conn.Revoke(ctx, &keywardenv1.RevokeRequest{Secret: "demo-db", Reason: "leaked"})
	if err != nil || rv.GetRevocation() != "revoked.secret.demo-db" || rv.GetPurged() != 1 {
		t.Fatalf("revoke: %v %v", rv, err)
	}
	select {
	case err := <-done:
		expectStatus(t, err, codes.PermissionDenied, "")
	case <-time.After(20 * time.Second):
		t.Fatal("watch survived the revocation")
	}
	_, err = c.Get(ctx, "demo-db")
	expectStatus(t, err, codes.PermissionDenied, "permission denied")
	st, _ := s.conn.GetStatus(ctx, &keywardenv1.GetStatusRequest{})
	if len(st.GetRevocations()) != 1 {
		t.Errorf("status revocations %v", st.GetRevocations())
	}
	if _, err := s.conn.Revoke(ctx, &keywardenv1.RevokeRequest{Secret: "demo-db", Lift: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "demo-db"); err != nil {
		t.Fatalf("after lift: %v", err)
	}
	// A workload revocation denies that workload only.
	if _, err := s.conn.Revoke(ctx, &keywardenv1.RevokeRequest{Namespace: "demo", ServiceAccount: "app"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Get(ctx, "demo-db")
	expectStatus(t, err, codes.PermissionDenied, "")
	_, err = s.conn.Revoke(ctx, &keywardenv1.RevokeRequest{Secret: "demo-db", Namespace: "demo"})
	expectStatus(t, err, codes.InvalidArgument, "only one")
	_, err = s.conn.Revoke(ctx, &keywardenv1.RevokeRequest{Secret: "other", Lift: true})
	expectStatus(t, err, codes.NotFound, "not revoked")
}

// A grant withdrawn while its secret is being re-fetched: the watch ends with
// PermissionDenied at once, and the value fetched afterwards is never sent on it.
func TestAdminService_grantDeletedMidRotation(t *testing.T) {
	s := newAdminStack(t)
	ctx := context.Background()
	c := s.client(t, s.token(t, "demo", "app"))
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	var mu sync.Mutex
	var versions []string
	got := make(chan struct{}, 4)
	go func() {
		done <- c.Watch(wctx, []string{"demo-db"}, func(sec *client.Secret) error {
			mu.Lock()
			versions = append(versions, sec.Version)
			mu.Unlock()
			got <- struct{}{}
			return nil
		})
	}()
	<-got
	entered, release := s.gate.hold()
	if _, err := s.local.Put(ctx, "demo-db", map[string][]byte{"password": []byte("rotated-9f2")}); err != nil {
		t.Fatal(err)
	}
	rot := make(chan error, 1)
	go func() {
		_, err := s.conn.RotateNow(ctx, &keywardenv1.RotateNowRequest{Secret: "demo-db"})
		rot <- err
	}()
	select {
	case <-entered: // the rotation is now inside the source
	case <-time.After(20 * time.Second):
		t.Fatal("rotation never reached the source")
	}
	empty, _ := grant.NewSet(nil)
	if err := s.broker.UpdateGrantSource("file", empty); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		expectStatus(t, err, codes.PermissionDenied, "was withdrawn")
	case <-time.After(20 * time.Second):
		t.Fatal("watch survived the withdrawn grant while a rotation was in progress")
	}
	release()
	if err := <-rot; err == nil {
		// The rotation finishes (its grant is gone, so it finds no source to refresh, or it
		// refreshed the cache); either way nothing more reached the closed stream.
		t.Log("rotation completed after the grant was withdrawn")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(versions) != 1 || versions[0] != "1" {
		t.Errorf("watch received %v, want only version 1", versions)
	}
}

// pki is a CA per trust domain and helpers to issue X.509-SVIDs.
type pki struct {
	t     *testing.T
	cas   map[string]*x509svid.SVID
	bunds []*x509bundle.Bundle
}

func newPKI(t *testing.T, tds ...string) *pki {
	p := &pki{t: t, cas: map[string]*x509svid.SVID{}}
	for _, td := range tds {
		ca := p.issue(nil, "spiffe://"+td, true)
		p.cas[td] = ca
		p.bunds = append(p.bunds, x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(td), ca.Certificates))
	}
	return p
}

var serial int64

func (p *pki) issue(parent *x509svid.SVID, id string, isCA bool) *x509svid.SVID {
	p.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	u, _ := url.Parse(id)
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{u}, BasicConstraintsValid: true, IsCA: isCA,
	}
	if isCA {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	signer, signerKey := tmpl, any(key)
	if parent != nil {
		signer, signerKey = parent.Certificates[0], parent.PrivateKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		p.t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	sid, _ := spiffeid.FromURI(u)
	return &x509svid.SVID{ID: sid, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

func (p *pki) svid(td, path string) *x509svid.SVID {
	return p.issue(p.cas[td], "spiffe://"+td+path, false)
}

func TestAdminTLS_refusesUnauthorizedPeers(t *testing.T) {
	s := newAdminStack(t)
	p := newPKI(t, "cluster.local", "other.org")
	bundles := x509bundle.NewSet(p.bunds...)
	serverSVID := p.svid("cluster.local", "/keywarden/node")
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	admin := spiffeid.RequireFromString("spiffe://cluster.local/admin/alice")
	srv, err := server.NewAdminTLSServer(s.cfg, server.AdminTLSConfig{SVID: serverSVID, Bundles: bundles, TrustDomain: td, AllowedIDs: []spiffeid.ID{admin}})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- grpcx.Serve(ctx, srv, lis, time.Second) }()
	defer func() { cancel(); <-served }()

	stranger := newPKI(t, "cluster.local") // same trust domain name, a CA nobody trusts
	dial := func(t *testing.T, tlsCfg credentials.TransportCredentials) keywardenv1.AdminServiceClient {
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(tlsCfg))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return keywardenv1.NewAdminServiceClient(conn)
	}
	serverOK := tlsconfig.AuthorizeID(serverSVID.ID)
	tests := []struct {
		name     string
		creds    credentials.TransportCredentials
		wantCode codes.Code
		wantMsg  string
	}{
		{"allowed admin", credentials.NewTLS(tlsconfig.MTLSClientConfig(p.svid("cluster.local", "/admin/alice"), bundles, serverOK)), codes.OK, ""},
		{"no client certificate", credentials.NewTLS(tlsconfig.TLSClientConfig(bundles, serverOK)), codes.Unavailable, ""},
		{"id not allowed", credentials.NewTLS(tlsconfig.MTLSClientConfig(p.svid("cluster.local", "/admin/mallory"), bundles, serverOK)), codes.PermissionDenied, "not an allowed admin ID"},
		{"workload id", credentials.NewTLS(tlsconfig.MTLSClientConfig(p.svid("cluster.local", "/ns/demo/sa/app"), bundles, serverOK)), codes.PermissionDenied, "not an allowed admin ID"},
		{"other trust domain", credentials.NewTLS(tlsconfig.MTLSClientConfig(p.svid("other.org", "/admin/alice"), bundles, serverOK)), codes.PermissionDenied, `trust domain "other.org"`},
		{"untrusted CA", credentials.NewTLS(tlsconfig.MTLSClientConfig(stranger.svid("cluster.local", "/admin/alice"), bundles, serverOK)), codes.Unavailable, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, tt.creds)
			cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer ccancel()
			_, err := c.GetStatus(cctx, &keywardenv1.GetStatusRequest{})
			if tt.wantCode == codes.OK {
				if err != nil {
					t.Fatalf("allowed admin refused: %v", err)
				}
				return
			}
			expectStatus(t, err, tt.wantCode, tt.wantMsg)
			// Streams are guarded the same way.
			if tt.wantCode == codes.PermissionDenied {
				st, err := c.AuditTail(cctx, &keywardenv1.AuditTailRequest{})
				if err == nil {
					_, err = st.Recv()
				}
				expectStatus(t, err, tt.wantCode, tt.wantMsg)
			}
		})
	}
	// Refused callers are audited with their SPIFFE ID; the allowed one as the actor.
	if err := s.auditL.Flush(); err != nil {
		t.Fatal(err)
	}
	all, _ := s.auditL.Last(1000)
	var denied, allowed bool
	for _, e := range all {
		if e.Event == nil || e.Event.Kind != audit.KindAdmin {
			continue
		}
		if e.Event.Outcome == audit.OutcomeDeny && e.Event.Actor == "spiffe://other.org/admin/alice" {
			denied = true
		}
		if e.Event.Outcome == audit.OutcomeAllow && e.Event.Actor == admin.String() {
			allowed = true
		}
	}
	if !denied || !allowed {
		t.Errorf("admin TLS calls not audited (denied %v, allowed %v)", denied, allowed)
	}

	if _, err := server.NewAdminTLSServer(s.cfg, server.AdminTLSConfig{SVID: serverSVID, Bundles: bundles, TrustDomain: td}); err == nil {
		t.Error("a TLS admin server without allowed IDs was built")
	}
	if _, err := server.NewAdminTLSServer(s.cfg, server.AdminTLSConfig{SVID: serverSVID, Bundles: bundles, TrustDomain: td,
		AllowedIDs: []spiffeid.ID{spiffeid.RequireFromString("spiffe://other.org/admin")}}); err == nil {
		t.Error("an allowed ID from another trust domain was accepted")
	}
}
