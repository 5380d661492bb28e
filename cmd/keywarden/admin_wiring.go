package main

// Wiring of issue 7: the Kubernetes client and AccessGrant informer, the persistent audit log,
// revocations, and the admin API over TCP with mTLS (X.509-SVIDs).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/revoke"
	"github.com/keywarden/keywarden/broker/server"
	"github.com/keywarden/keywarden/internal/grpcx"
)

// rawKubernetes is `kubernetes:`: how the daemon reaches the apiserver.
type rawKubernetes struct {
	Kubeconfig string `json:"kubeconfig"`
	InCluster  bool   `json:"inCluster"`
}

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

// rawAudit is `audit:`.
type rawAudit struct {
	MaxEntries    int    `json:"maxEntries"`
	FlushInterval string `json:"flushInterval"`
}

// i7Config is the typed form of the keys above (embedded in config).
type i7Config struct {
	Kubeconfig       string
	InCluster        bool
	GrantsKubernetes bool

	AdminTCP *adminTCPConfig

	AuditMaxEntries    int
	AuditFlushInterval time.Duration
}

type adminTCPConfig struct {
	Addr              string
	CertFile, KeyFile string
	BundleFile        string
	WorkloadAPISocket string
	AllowedIDs        []spiffeid.ID
}

func (r rawConfig) typedI7(c *config, fail func(field, format string, args ...any)) {
	c.Kubeconfig, c.InCluster, c.GrantsKubernetes = r.Kubernetes.Kubeconfig, r.Kubernetes.InCluster, r.Grants.Kubernetes
	if c.Kubeconfig != "" && c.InCluster {
		fail("kubernetes", "set kubeconfig or inCluster, not both")
	}
	if c.GrantsKubernetes && c.Kubeconfig == "" && !c.InCluster {
		fail("grants.kubernetes", "needs the kubernetes section: set kubernetes.kubeconfig or kubernetes.inCluster: true")
	}
	c.AuditMaxEntries = r.Audit.MaxEntries
	if c.AuditMaxEntries != 0 && c.AuditMaxEntries < 10 {
		fail("audit.maxEntries", "want 0 (default %d) or at least 10; got %d", audit.DefaultMaxEntries, c.AuditMaxEntries)
	}
	if r.Audit.FlushInterval != "" {
		v, err := time.ParseDuration(r.Audit.FlushInterval)
		if err != nil || v <= 0 || v > 10*time.Second {
			fail("audit.flushInterval", "want a positive duration of at most 10s such as \"100ms\"; got %q", r.Audit.FlushInterval)
		}
		c.AuditFlushInterval = v
	}
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
		case !c.TrustDomain.IsZero() && !id.MemberOf(c.TrustDomain):
			fail(fmt.Sprintf("admin.tcp.allowedIDs[%d]", i), "%s is not in trust domain %q (identity.trustDomain)", id, c.TrustDomain)
		default:
			tc.AllowedIDs = append(tc.AllowedIDs, id)
		}
	}
	c.AdminTCP = tc
}

// i7State is the daemon's part built here.
type i7State struct {
	rest     *rest.Config
	kube     kubernetes.Interface
	audit    *audit.Log
	revoker  *revoke.Manager
	informer *grant.InformerSource
	tcp      net.Listener
}

// restConfig builds the apiserver client config once; nil when kubernetes is not configured.
func (d *daemon) restConfig() (*rest.Config, error) {
	if d.i7.rest != nil {
		return d.i7.rest, nil
	}
	var (
		rc  *rest.Config
		err error
	)
	switch {
	case d.cfg.InCluster:
		rc, err = rest.InClusterConfig()
	case d.cfg.Kubeconfig != "":
		rc, err = clientcmd.BuildConfigFromFlags("", d.cfg.Kubeconfig)
	default:
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	rc.UserAgent = "keywarden/" + version
	d.i7.rest = rc
	return rc, nil
}

// kubeClient is the typed apiserver client, or nil when kubernetes is not configured.
func (d *daemon) kubeClient() (kubernetes.Interface, error) {
	if d.i7.kube != nil {
		return d.i7.kube, nil
	}
	rc, err := d.restConfig()
	if err != nil || rc == nil {
		return nil, err
	}
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	d.i7.kube = kc
	return kc, nil
}

// auditRecorder opens the hash-chained audit log in the state store; the broker records into
// it and Run (a runner) writes batches.
func (d *daemon) auditRecorder(log *slog.Logger) (audit.Recorder, error) {
	l, err := audit.Open(audit.Config{
		DB: d.state, Logger: log.With(slog.String("component", "audit")),
		MaxEntries: d.cfg.AuditMaxEntries, FlushInterval: d.cfg.AuditFlushInterval,
	})
	if err != nil {
		return nil, err
	}
	d.i7.audit = l
	d.runners = append(d.runners, l.Run)
	return l, nil
}

// setupI7 builds the revocation manager and the AccessGrant informer, once the broker and the
// other grant sources exist.
func (d *daemon) setupI7(log *slog.Logger) error {
	var err error
	d.i7.revoker, err = revoke.New(revoke.Config{
		Broker: d.broker, Purger: d.engine, Logger: log.With(slog.String("component", "revoke")),
		Apply: func(s *grant.Set) error { return d.broker.UpdateGrantSource(revoke.SourceName, s) },
		DB:    d.state, // revocations survive a restart; loaded and applied here, before serving
	})
	if err != nil {
		return err
	}
	d.runners = append(d.runners, d.i7.revoker.Run)
	if !d.cfg.GrantsKubernetes {
		return nil
	}
	rc, err := d.restConfig()
	if err != nil {
		return err
	}
	dc, err := dynamic.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	d.i7.informer, err = grant.NewInformerSource(grant.InformerSourceConfig{
		Client: dc, Logger: log.With(slog.String("component", "grants-kubernetes")),
		OnChange: d.grantsChanged("kubernetes"),
	})
	if err != nil {
		return err
	}
	d.runners = append(d.runners, d.i7.informer.Run)
	return nil
}

// withI7 adds the audit log, rotation and revocation to the admin API.
func (d *daemon) withI7(cfg server.AdminConfig) server.AdminConfig {
	if d.i7.audit != nil {
		cfg.Audit = d.i7.audit
	}
	if d.i7.revoker != nil {
		cfg.Revoker = d.i7.revoker
	}
	if d.engine != nil {
		cfg.Rotator = d.engine
	}
	return cfg
}

// listenAdminTCP starts listening for admin.tcp and adds its server to the runners.
func (d *daemon) listenAdminTCP(cfg server.AdminConfig) error {
	tc := d.cfg.AdminTCP
	if tc == nil {
		return nil
	}
	tls := server.AdminTLSConfig{TrustDomain: d.cfg.TrustDomain, AllowedIDs: tc.AllowedIDs}
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
		bundle, err := x509bundle.Load(d.cfg.TrustDomain, tc.BundleFile)
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
	d.i7.tcp = lis
	d.log.Info("admin API on TCP with mTLS", slog.String("addr", lis.Addr().String()), slog.Int("allowed_ids", len(tc.AllowedIDs)))
	d.runners = append(d.runners, func(ctx context.Context) error {
		if closeSource != nil {
			defer closeSource()
		}
		return grpcx.Serve(ctx, srv, lis, 5*time.Second)
	})
	return nil
}

// closeI7 writes what the audit log still holds before the stores close.
func (d *daemon) closeI7() {
	if d.i7.tcp != nil {
		_ = d.i7.tcp.Close()
	}
	if d.i7.audit != nil {
		if err := d.i7.audit.Close(); err != nil && !errors.Is(err, context.Canceled) {
			d.log.Error("close audit log", slog.Any("error", err))
		}
	}
}
