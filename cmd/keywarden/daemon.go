package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"k8s.io/utils/clock"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/server"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/local"
	"github.com/keywarden/keywarden/broker/store"
	"github.com/keywarden/keywarden/internal/grpcx"
)

// Files inside the data directory.
const (
	stateFile = "state.db" // the embedded secret store and admin grants: the only copy
	cacheFile = "cache.db" // rebuildable from the sources
)

// daemon is a running Keywarden daemon, built from a config. It is the composition root.
type daemon struct {
	cfg    config
	log    *slog.Logger
	state  *store.DB
	cache  *store.DB
	local  *local.Store
	broker *broker.Broker
	engine *rotate.Engine
	files  *grant.FileSource
	grants *grant.StoreSource
	dev    *identity.DevIssuer
	// metrics is the daemon's Prometheus registry, served on /metrics.
	metrics *prometheus.Registry
	// runners are long-lived parts started with the servers (key refresh, pod watch, …).
	runners []func(context.Context) error
	i7      i7State   // admin_wiring.go
	csi     *csiParts // csi.go; nil when csi.socket is unset
	ready   atomic.Bool
	closed  atomic.Bool
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
	statePath := filepath.Join(cfg.DataDir, stateFile)
	d.state, err = store.Open(store.Config{Path: statePath, KEK: kek, LockTimeout: cfg.LockTimeout, Logger: log, OnCommit: commits.onCommit(storeState)})
	switch {
	case errors.Is(err, store.ErrUnreadable), errors.Is(err, store.ErrCorrupt):
		// This file is the only copy of the embedded secrets and admin grants: never
		// replace it behind the operator's back.
		return nil, fmt.Errorf("%w\nthe state store %s holds the only copy of the embedded secrets and admin grants, so it is not replaced automatically; restore it from a backup, or move it aside (mv %s %s.broken) to start with an empty store", err, statePath, statePath, statePath)
	case err != nil:
		return nil, kekUnavailable(err, statePath, cfg.KEKProvider) // kek.go
	}
	d.cache, _, err = store.OpenOrQuarantine(store.Config{Path: filepath.Join(cfg.DataDir, cacheFile), KEK: kek, LockTimeout: cfg.LockTimeout, Logger: log, OnCommit: commits.onCommit(storeCache)})
	if err != nil {
		return nil, kekUnavailable(err, filepath.Join(cfg.DataDir, cacheFile), cfg.KEKProvider) // kek.go
	}

	idMetrics, err := identity.NewMetrics(d.metrics)
	if err != nil {
		return nil, err
	}
	kube, err := d.kubeClient()
	if err != nil {
		return nil, err
	}
	vp, err := buildVerifier(cfg, log, kube, idMetrics)
	if err != nil {
		return nil, err
	}
	d.dev = vp.dev
	d.runners = append(d.runners, vp.runners...)

	sources := map[string]source.Source{}
	if cfg.LocalSource {
		if d.local, err = local.New(local.Config{DB: d.state, Logger: log.With(slog.String("component", "local-source"))}); err != nil {
			return nil, err
		}
		sources["local"] = d.local
	}
	if err := d.addVaultSource(sources); err != nil { // vault.go
		return nil, fmt.Errorf("vault source: %w", err)
	}
	if len(sources) == 0 {
		return nil, errors.New("no secret source is enabled: set sources.local.enabled or the vault section")
	}
	if d.engine, err = rotate.New(rotate.Config{Sources: sources, Logger: log.With(slog.String("component", "rotate")), PollInterval: cfg.PollInterval}); err != nil {
		return nil, err
	}
	if err := d.metrics.Register(newFreshnessCollector(d.engine)); err != nil { // metrics.go
		return nil, err
	}
	rec, err := d.auditRecorder(log) // admin_wiring.go: the hash-chained audit log in state.db
	if err != nil {
		return nil, err
	}
	if err := d.metrics.Register(newAuditCollector(d.i7.audit)); err != nil { // metrics.go
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
		Audit:    rec,
		Logger:   log.With(slog.String("component", "broker")),
		Metrics:  brokerMetrics,
	}); err != nil {
		return nil, err
	}

	// Grant sources: the admin store always, the file when configured. Both feed the broker,
	// which merges them; a conflicting update is refused and the previous grants stay.
	if d.grants, err = grant.NewStoreSource(grant.StoreSourceConfig{DB: d.state, OnChange: d.grantsChanged("store")}); err != nil {
		return nil, fmt.Errorf("admin grant store: %w", err)
	}
	if err := d.broker.UpdateGrantSource("store", d.grants.Current()); err != nil {
		return nil, err
	}
	if cfg.GrantsFile != "" {
		d.files, err = grant.NewFileSource(grant.FileSourceConfig{
			Path: cfg.GrantsFile, Interval: cfg.GrantsInterval,
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
	if err := d.setupI7(log); err != nil { // admin_wiring.go: revocations, AccessGrant informer
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

// run serves until ctx is done. onReady is called once every listener is up.
func (d *daemon) run(ctx context.Context, version string, onReady func()) error {
	reg := d.metrics
	metrics, err := server.NewMetrics(reg)
	if err != nil {
		return err
	}
	if err := registerBuildInfo(reg, version); err != nil { // metrics.go
		return err
	}
	limits := server.Limits{MaxRecvMsgSize: d.cfg.MaxRecvMsgSize, MaxConcurrentStreams: d.cfg.MaxConcurrentStreams}
	workload, err := server.NewWorkloadServer(server.WorkloadConfig{Broker: d.broker, Logger: d.log.With(slog.String("component", "workload-api")), Metrics: metrics, Limits: limits})
	if err != nil {
		return err
	}
	var secrets server.SecretWriter
	if d.local != nil {
		secrets = d.local
	}
	adminCfg := d.withI7(server.AdminConfig{ // admin_wiring.go adds audit, rotation, revocation
		Broker: d.broker, Grants: d.grants, Secrets: secrets, Cache: d.engine, TrustDomain: d.cfg.TrustDomain,
		Version: version, StartedAt: time.Now(), Logger: d.log.With(slog.String("component", "admin-api")), Metrics: metrics,
	})
	admin, err := server.NewAdminServer(adminCfg)
	if err != nil {
		return err
	}
	if err := d.listenAdminTCP(adminCfg); err != nil { // admin_wiring.go: admin.tcp with mTLS
		return err
	}
	wl, err := grpcx.ListenUnix(d.cfg.Socket, d.cfg.SocketMode)
	if err != nil {
		return err
	}
	al, err := grpcx.ListenUnix(d.cfg.AdminSocket, d.cfg.AdminSocketMode)
	if err != nil {
		_ = wl.Close()
		return err
	}
	// Only root and the daemon's own user may talk to the admin API.
	al = grpcx.PeerFilter(al, []uint32{0, uint32(os.Getuid())}, func(uid uint32) {
		d.log.Warn("admin socket connection refused: peer is not root or the daemon's user", slog.Uint64("uid", uint64(uid)))
	})
	var hl net.Listener
	if d.cfg.HealthAddr != "off" {
		if hl, err = net.Listen("tcp", d.cfg.HealthAddr); err != nil {
			_ = wl.Close()
			_ = al.Close()
			return fmt.Errorf("health listener: %w", err)
		}
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.engine.Run(gctx) })
	if d.csi != nil {
		g.Go(func() error { return d.csi.run(gctx) }) // csi.go
	}
	for _, run := range d.runners {
		g.Go(func() error { return run(gctx) })
	}
	if d.files != nil {
		g.Go(func() error { return d.files.Run(gctx) })
	}
	g.Go(func() error { return grpcx.Serve(gctx, workload, wl, 5*time.Second) })
	g.Go(func() error { return grpcx.Serve(gctx, admin, al, 5*time.Second) })
	if hl != nil {
		hs := &http.Server{Handler: d.healthMux(reg), ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			if err := hs.Serve(hl); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), 5*time.Second)
			defer cancel()
			return hs.Shutdown(sctx)
		})
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
	d.log.Info("keywarden ready", slog.String("socket", d.cfg.Socket), slog.String("admin_socket", d.cfg.AdminSocket), slog.String("health", d.cfg.HealthAddr))
	if onReady != nil {
		onReady()
	}
	err = g.Wait()
	d.ready.Store(false)
	return err
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
	return mux
}

// close releases the stores. It is idempotent.
func (d *daemon) close() {
	if d.closed.Swap(true) {
		return
	}
	d.closeI7() // admin_wiring.go: flush the audit log before the stores close
	for _, db := range []*store.DB{d.cache, d.state} {
		if db != nil {
			if err := db.Close(); err != nil {
				d.log.Error("close store", slog.String("path", db.Path()), slog.Any("error", err))
			}
		}
	}
}

// setUmask makes every file and socket the daemon creates private unless it chmods it.
func setUmask() { syscall.Umask(0o077) }
