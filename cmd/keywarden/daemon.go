package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"k8s.io/utils/clock"

	"google.golang.org/grpc"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/keyrot"
	"github.com/keywarden/keywarden/broker/revoke"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/server"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/local"
	"github.com/keywarden/keywarden/broker/source/vault"
	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/internal/grpcx"
)

// daemon is a running Keywarden daemon, built from a config. It is the composition root.
type daemon struct {
	cfg   config
	log   *slog.Logger
	state *store.DB
	node  *store.DB // node.db: this node's Vault leases and last values (stores.go)
	// volumes is volumes.db, the CSI volume records (stores.go); nil without the CSI driver.
	volumes *store.DB
	local   *local.Store
	broker  *broker.Broker
	engine  *rotate.Engine
	files   *grant.FileSource
	grants  *grant.StoreSource
	dev     *identity.DevIssuer
	// metrics is the daemon's Prometheus registry, served on /metrics.
	metrics *prometheus.Registry
	// runners are long-lived parts started with the servers (key refresh, pod watch, …).
	runners  []func(context.Context) error
	kube     kubeClients     // kubernetes.go
	auditLog *audit.Log      // auditlog.go
	anchorer *audit.Anchorer // auditlog.go; nil without audit.anchor
	revoker  *revoke.Manager // revocations.go
	keys     *keyrot.Manager // keys.go
	vault    *vault.Source   // vault.go; nil without Vault
	adminTCP net.Listener    // admin_api.go; nil unless admin.tcp is set
	csi      *csiParts       // csi.go; nil when csi.socket is unset
	ready    atomic.Bool
	closed   atomic.Bool
}

// newDaemon opens the stores and builds every part, without starting anything.
func newDaemon(cfg config, log *slog.Logger) (_ *daemon, err error) {
	d := &daemon{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	kek, err := d.loadKEK(context.Background()) // vault.go: local keyset file or Vault Transit
	if err != nil {
		return nil, err
	}
	// Metrics are registered here, before anything that records them is built.
	d.metrics = prometheus.NewRegistry()
	d.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	commits, err := newStoreMetrics(d.metrics) // metrics.go
	if err != nil {
		return nil, err
	}
	if err := d.openStores(kek, commits); err != nil { // stores.go
		return nil, err
	}
	if err := d.newKeyRotation(kek); err != nil { // keys.go
		return nil, err
	}

	idMetrics, err := identity.NewMetrics(d.metrics)
	if err != nil {
		return nil, err
	}
	kube, err := d.kubeClient()
	if err != nil {
		return nil, err
	}
	meta, err := d.kubeMetadataClient()
	if err != nil {
		return nil, err
	}
	vp, err := buildVerifier(cfg, log, kubeAPI{typed: kube, meta: meta}, idMetrics)
	if err != nil {
		return nil, err
	}
	d.dev = vp.dev
	d.runners = append(d.runners, vp.runners...)

	sources := map[string]source.Source{}
	if cfg.Sources.Local {
		if d.local, err = local.New(local.Config{DB: d.state, Logger: log.With(slog.String("component", "local-source"))}); err != nil {
			return nil, err
		}
		sources["local"] = d.local
	}
	if err := d.addVaultSource(context.Background(), sources); err != nil { // vault.go
		return nil, fmt.Errorf("vault source: %w", err)
	}
	d.vault, _ = sources[broker.VaultSourceName].(*vault.Source)
	if len(sources) == 0 {
		return nil, errors.New("no secret source is enabled: set sources.local.enabled or the vault section")
	}
	// node.db keeps the last values (sealed), so a restart during a Vault outage serves them
	// until they expire. A restored value nobody claims is dropped before the Vault source
	// revokes the restored lease behind it as an orphan.
	unclaimed := rotate.DefaultUnclaimedTTL
	if cfg.Vault != nil && cfg.Vault.OrphanGrace > 0 {
		unclaimed = min(unclaimed, cfg.Vault.OrphanGrace/2)
	}
	if d.engine, err = rotate.New(rotate.Config{Sources: sources, Logger: log.With(slog.String("component", "rotate")), PollInterval: cfg.Rotation.PollInterval,
		MaxBackoff: retryBackoffCap(cfg.Rotation.PollInterval), Store: d.node, MaxStale: cfg.Rotation.MaxStale, UnclaimedTTL: unclaimed}); err != nil {
		return nil, err
	}
	if err := d.metrics.Register(newFreshnessCollector(d.engine)); err != nil { // metrics.go
		return nil, err
	}
	if cfg.Metrics.PerSecretLabels {
		if err := d.metrics.Register(newSecretCollector(d.engine)); err != nil { // metrics.go
			return nil, err
		}
	}
	if err := d.openAuditLog(log); err != nil { // auditlog.go: the hash-chained audit log in state.db
		return nil, err
	}
	if err := d.metrics.Register(newAuditCollector(d.auditLog)); err != nil { // metrics.go
		return nil, err
	}
	brokerMetrics, err := broker.NewMetrics(d.metrics)
	if err != nil {
		return nil, err
	}
	if d.broker, err = broker.New(broker.Config{
		Verifier: vp.verifier,
		Binding:  bindingChecker(vp.binding),
		Cache:    d.engine,
		Audit:    d.auditLog,
		Logger:   log.With(slog.String("component", "broker")),
		Metrics:  brokerMetrics,
		Leases:   newLeaseReleaser(d.engine, sources), // leases.go
	}); err != nil {
		return nil, err
	}
	if vp.pods != nil {
		if err := d.releaseOnPodDeletion(log.With(slog.String("component", "broker")), vp.pods); err != nil {
			return nil, err
		}
	}

	// Grant sources: the admin store always, the file when configured. Both feed the broker,
	// which merges them; a conflicting update is refused and the previous grants stay.
	if d.grants, err = grant.NewStoreSource(grant.StoreSourceConfig{DB: d.state, OnChange: d.grantsChanged("store")}); err != nil {
		return nil, fmt.Errorf("admin grant store: %w", err)
	}
	if err := d.broker.UpdateGrantSource("store", d.grants.Current()); err != nil {
		return nil, err
	}
	if cfg.Grants.File != "" {
		d.files, err = grant.NewFileSource(grant.FileSourceConfig{
			Path: cfg.Grants.File, Interval: cfg.Grants.ReloadInterval,
			Logger: log.With(slog.String("component", "grants-file")), Clock: clock.RealClock{},
			OnChange: func(s *grant.Set) { _ = d.grantsChanged("file")(s) },
		})
		if err != nil {
			return nil, fmt.Errorf("grants file: %w", err)
		}
		if err := d.broker.UpdateGrantSource("file", d.files.Current()); err != nil {
			return nil, err
		}
	}
	if err := d.setupCSI(log, vp.pods); err != nil { // csi.go: the CSI node driver
		return nil, err
	}
	if err := d.setupRevocations(log); err != nil { // revocations.go
		return nil, err
	}
	if err := d.setupGrantInformer(log); err != nil { // kubernetes.go: AccessGrant objects
		return nil, err
	}
	return d, nil
}

func (d *daemon) grantsChanged(src string) func(*grant.Set) error {
	return func(s *grant.Set) error {
		if err := d.broker.UpdateGrantSource(src, s); err != nil {
			d.log.Error("grant update refused; the previous grants stay in force", slog.String("source", src), slog.Any("error", err))
			return err
		}
		return nil
	}
}

// servers are the daemon's gRPC servers, built from its parts.
type servers struct {
	workload *grpc.Server
	admin    *grpc.Server
	adminCfg server.AdminConfig // also served on admin.tcp
}

func (d *daemon) buildServers(version string) (servers, error) {
	metrics, err := server.NewMetrics(d.metrics)
	if err != nil {
		return servers{}, err
	}
	if err := registerBuildInfo(d.metrics, version); err != nil { // metrics.go
		return servers{}, err
	}
	s := servers{adminCfg: d.adminAPIConfig(version, metrics)} // admin_api.go
	if s.workload, err = server.NewWorkloadServer(server.WorkloadConfig{Broker: d.broker, Logger: d.log.With(slog.String("component", "workload-api")), Metrics: metrics, Limits: d.cfg.Limits.workload()}); err != nil {
		return servers{}, err
	}
	if s.admin, err = server.NewAdminServer(s.adminCfg); err != nil {
		return servers{}, err
	}
	return s, nil
}

// workload returns the workload server's limits; zero fields take the server's defaults.
func (l limitsConfig) workload() server.Limits {
	return server.Limits{MaxRecvMsgSize: l.MaxRecvMsgSize, MaxConcurrentStreams: l.MaxConcurrentStreams,
		MaxWatchesPerWorkload: l.MaxWatchesPerWorkload, MaxWatches: l.MaxWatches}
}

// listeners are the daemon's local sockets and its health port (nil when health.addr is off).
type listeners struct {
	workload, admin, health net.Listener
}

func (l listeners) close() {
	for _, x := range []net.Listener{l.workload, l.admin, l.health} {
		if x != nil {
			_ = x.Close()
		}
	}
}

func (d *daemon) listen() (_ listeners, err error) {
	var l listeners
	defer func() {
		if err != nil {
			l.close()
		}
	}()
	if l.workload, err = grpcx.ListenUnix(d.cfg.Socket.Path, d.cfg.Socket.Mode); err != nil {
		return l, err
	}
	if l.admin, err = grpcx.ListenUnix(d.cfg.AdminSocket.Path, d.cfg.AdminSocket.Mode); err != nil {
		return l, err
	}
	// Only root and the daemon's own user may talk to the admin API.
	l.admin = grpcx.PeerFilter(l.admin, []uint32{0, uint32(os.Getuid())}, func(uid uint32) {
		d.log.Warn("admin socket connection refused: peer is not root or the daemon's user", slog.Uint64("uid", uint64(uid)))
	})
	if d.cfg.HealthAddr != "off" {
		if l.health, err = net.Listen("tcp", d.cfg.HealthAddr); err != nil {
			return l, fmt.Errorf("health listener: %w", err)
		}
	}
	return l, nil
}

// run serves until ctx is done. onReady is called once every listener is up and the volumes
// of the previous run are back under management.
func (d *daemon) run(ctx context.Context, version string, onReady func()) error {
	srv, err := d.buildServers(version)
	if err != nil {
		return err
	}
	if err := d.listenAdminTCP(srv.adminCfg); err != nil { // admin_api.go: admin.tcp with mTLS
		return err
	}
	lis, err := d.listen()
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	d.startRunners(g, gctx)
	g.Go(func() error { return grpcx.Serve(gctx, srv.workload, lis.workload, 5*time.Second) })
	g.Go(func() error { return grpcx.Serve(gctx, srv.admin, lis.admin, 5*time.Second) })
	if lis.health != nil {
		d.serveHealth(g, gctx, lis.health)
	}
	if d.csi != nil {
		// Not ready before the volumes of the previous run are back under management.
		select {
		case <-d.csi.recovered:
		case <-gctx.Done():
			return g.Wait()
		}
	}
	d.ready.Store(true)
	d.log.Info("keywarden ready", slog.String("socket", d.cfg.Socket.Path), slog.String("admin_socket", d.cfg.AdminSocket.Path), slog.String("health", d.cfg.HealthAddr))
	if onReady != nil {
		onReady()
	}
	err = g.Wait()
	d.ready.Store(false)
	return err
}

// startRunners starts the long-lived parts: rotation, the CSI driver, the grant file and
// every runner the parts registered.
func (d *daemon) startRunners(g *errgroup.Group, ctx context.Context) {
	g.Go(func() error { return d.engine.Run(ctx) })
	if d.csi != nil {
		g.Go(func() error { return d.csi.run(ctx) }) // csi.go
	}
	for _, run := range d.runners {
		g.Go(func() error { return run(ctx) })
	}
	if d.files != nil {
		g.Go(func() error { return d.files.Run(ctx) })
	}
}

// serveHealth serves /healthz, /readyz and /metrics on lis until ctx is done.
func (d *daemon) serveHealth(g *errgroup.Group, ctx context.Context, lis net.Listener) {
	hs := &http.Server{Handler: d.healthMux(d.metrics), ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error {
		if err := hs.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		return hs.Shutdown(sctx)
	})
}

func (d *daemon) healthMux(reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !d.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if d.cfg.HealthPprof {
		mux.Handle("/debug/pprof/", loopbackOnly(http.HandlerFunc(pprof.Index)))
		mux.Handle("/debug/pprof/cmdline", loopbackOnly(http.HandlerFunc(pprof.Cmdline)))
		mux.Handle("/debug/pprof/profile", loopbackOnly(http.HandlerFunc(pprof.Profile)))
		mux.Handle("/debug/pprof/symbol", loopbackOnly(http.HandlerFunc(pprof.Symbol)))
		mux.Handle("/debug/pprof/trace", loopbackOnly(http.HandlerFunc(pprof.Trace)))
	}
	return mux
}

// loopbackOnly refuses requests whose peer is not a loopback address: profiles name code
// paths and (heap, goroutine) may hold fragments of the daemon's memory, so they are for an
// operator on the node, never for whatever else can reach the health port (the chart binds it
// on the pod's IP for probes and scrapes).
func loopbackOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			http.Error(w, "pprof is served to loopback peers only", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// close releases the stores. It is idempotent.
func (d *daemon) close() {
	if d.closed.Swap(true) {
		return
	}
	if d.engine != nil {
		d.engine.Close() // no fetch may write the lease store after it is closed
	}
	d.closeAdminTCP() // admin_api.go
	d.closeAuditLog() // auditlog.go: flush the audit log before the stores close
	for _, db := range []*store.DB{d.volumes, d.node, d.state} {
		if db != nil {
			if err := db.Close(); err != nil {
				d.log.Error("close store", slog.String("path", db.Path()), slog.Any("error", err))
			}
		}
	}
}

// setUmask makes every file and socket the daemon creates private unless it chmods it.
func setUmask() { syscall.Umask(0o077) }
