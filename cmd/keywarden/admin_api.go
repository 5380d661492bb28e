package main

// The admin API's configuration, shared by its two listeners: the owner-only unix socket and,
// when configured, TCP with mTLS (X.509-SVIDs only).

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/keywarden/keywarden/broker/server"
	"github.com/keywarden/keywarden/internal/grpcx"
)

// rawAdmin is `admin:`.
type rawAdmin struct {
	TCP *rawAdminTCP `json:"tcp"`
}

// rawAdminTCP is `admin.tcp:`: the admin API over TCP, mTLS with X.509-SVIDs only.
type rawAdminTCP struct {
	Addr              string   `json:"addr"`
	SVIDCertFile      string   `json:"svidCertFile"`
	SVIDKeyFile       string   `json:"svidKeyFile"`
	BundleFile        string   `json:"bundleFile"`
	WorkloadAPISocket string   `json:"workloadAPISocket"`
	AllowedIDs        []string `json:"allowedIDs"`
}

// adminConfig is the typed admin section.
type adminConfig struct {
	TCP *adminTCPConfig // nil: the admin API is on the unix socket only
}

type adminTCPConfig struct {
	Addr              string
	CertFile, KeyFile string
	BundleFile        string
	WorkloadAPISocket string
	AllowedIDs        []spiffeid.ID
}

func (r rawConfig) typedAdminTCP(c *config, fail func(field, format string, args ...any)) {
	t := r.Admin.TCP
	if t == nil {
		return
	}
	tc := &adminTCPConfig{Addr: t.Addr, CertFile: t.SVIDCertFile, KeyFile: t.SVIDKeyFile, BundleFile: t.BundleFile, WorkloadAPISocket: t.WorkloadAPISocket}
	if _, _, err := net.SplitHostPort(t.Addr); err != nil {
		fail("admin.tcp.addr", "want host:port; got %q", t.Addr)
	}
	files := t.SVIDCertFile != "" || t.SVIDKeyFile != "" || t.BundleFile != ""
	switch {
	case files && t.WorkloadAPISocket != "":
		fail("admin.tcp", "set svidCertFile, svidKeyFile and bundleFile, or workloadAPISocket, not both")
	case t.WorkloadAPISocket == "" && (t.SVIDCertFile == "" || t.SVIDKeyFile == "" || t.BundleFile == ""):
		fail("admin.tcp", "set svidCertFile, svidKeyFile and bundleFile (PEM), or workloadAPISocket")
	}
	if len(t.AllowedIDs) == 0 {
		fail("admin.tcp.allowedIDs", "list at least one admin SPIFFE ID: the admin API over TCP has no other access control")
	}
	for i, s := range t.AllowedIDs {
		id, err := spiffeid.FromString(s)
		switch {
		case err != nil:
			fail(fmt.Sprintf("admin.tcp.allowedIDs[%d]", i), "%q is not a SPIFFE ID: %v", s, err)
		case !c.Identity.TrustDomain.IsZero() && !id.MemberOf(c.Identity.TrustDomain):
			fail(fmt.Sprintf("admin.tcp.allowedIDs[%d]", i), "%s is not in trust domain %q (identity.trustDomain)", id, c.Identity.TrustDomain)
		default:
			tc.AllowedIDs = append(tc.AllowedIDs, id)
		}
	}
	c.Admin.TCP = tc
}

// adminAPIConfig is what both admin listeners serve: grants, embedded secrets, the cache,
// and the audit log, rotation and revocation when they exist.
func (d *daemon) adminAPIConfig(version string, metrics *server.Metrics) server.AdminConfig {
	cfg := server.AdminConfig{
		Broker: d.broker, Grants: d.grants, Cache: d.engine, TrustDomain: d.cfg.Identity.TrustDomain,
		Version: version, StartedAt: time.Now(), Logger: d.log.With(slog.String("component", "admin-api")), Metrics: metrics,
	}
	if d.local != nil {
		cfg.Secrets = d.local
	}
	if d.auditLog != nil {
		cfg.Audit = d.auditLog
	}
	if d.revoker != nil {
		cfg.Revoker = d.revoker
	}
	if d.engine != nil {
		cfg.Rotator = d.engine
	}
	if d.keys != nil {
		cfg.Keys = d.keys
	}
	if d.vault != nil {
		cfg.Leases = trackedLeases{d.vault} // leases.go
	}
	return cfg
}

// listenAdminTCP starts listening for admin.tcp and adds its server to the runners.
func (d *daemon) listenAdminTCP(cfg server.AdminConfig) error {
	tc := d.cfg.Admin.TCP
	if tc == nil {
		return nil
	}
	tls := server.AdminTLSConfig{TrustDomain: d.cfg.Identity.TrustDomain, AllowedIDs: tc.AllowedIDs}
	var closeSource func()
	if tc.WorkloadAPISocket != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+tc.WorkloadAPISocket)))
		if err != nil {
			return fmt.Errorf("admin.tcp: SPIFFE Workload API %s: %w", tc.WorkloadAPISocket, err)
		}
		tls.SVID, tls.Bundles, closeSource = src, src, func() { _ = src.Close() }
	} else {
		svid, err := x509svid.Load(tc.CertFile, tc.KeyFile)
		if err != nil {
			return fmt.Errorf("admin.tcp: load X.509-SVID: %w", err)
		}
		bundle, err := x509bundle.Load(d.cfg.Identity.TrustDomain, tc.BundleFile)
		if err != nil {
			return fmt.Errorf("admin.tcp: load bundle: %w", err)
		}
		tls.SVID, tls.Bundles = svid, bundle
	}
	cfg.Logger = cfg.Logger.With(slog.String("listener", "tcp"))
	srv, err := server.NewAdminTLSServer(cfg, tls)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", tc.Addr)
	if err != nil {
		return fmt.Errorf("admin.tcp: listen: %w", err)
	}
	d.adminTCP = lis
	d.log.Info("admin API on TCP with mTLS", slog.String("addr", lis.Addr().String()), slog.Int("allowed_ids", len(tc.AllowedIDs)))
	d.runners = append(d.runners, func(ctx context.Context) error {
		if closeSource != nil {
			defer closeSource()
		}
		return grpcx.Serve(ctx, srv, lis, 5*time.Second)
	})
	return nil
}

// closeAdminTCP stops accepting admin connections over TCP.
func (d *daemon) closeAdminTCP() {
	if d.adminTCP != nil {
		_ = d.adminTCP.Close()
	}
}
