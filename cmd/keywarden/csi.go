package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/csi"
	"github.com/keywarden/keywarden/internal/grpcx"
)

// rawCSI is the csi section. The driver is off unless socket is set.
type rawCSI struct {
	Socket      string `json:"socket"`      // the CSI socket kubelet dials, e.g. /var/lib/kubelet/plugins/keywarden.dev/csi.sock
	KubeletRoot string `json:"kubeletRoot"` // default /var/lib/kubelet
	DriverName  string `json:"driverName"`  // default keywarden.dev
	TmpfsSize   string `json:"tmpfsSize"`   // per-volume tmpfs size, a quantity such as 16Mi (default)
	// InsecurePlainDirectories writes volumes as plain directories when tmpfs cannot be
	// mounted (not root): secret files then reach the node's disk. Tests only.
	InsecurePlainDirectories bool `json:"insecurePlainDirectories"`
}

// csiConfig is the typed csi section.
type csiConfig struct {
	Socket      string // empty: the driver is off
	KubeletRoot string
	DriverName  string
	TmpfsBytes  int64
	PlainDirs   bool
}

const (
	defaultKubeletRoot = "/var/lib/kubelet"
	defaultTmpfsSize   = "16Mi"
)

func (r rawConfig) typedCSI(c *config, fail func(field, format string, args ...any)) {
	c.CSI.Socket = r.CSI.Socket
	c.CSI.KubeletRoot = or(r.CSI.KubeletRoot, defaultKubeletRoot)
	c.CSI.DriverName = or(r.CSI.DriverName, csi.DefaultDriverName)
	c.CSI.PlainDirs = r.CSI.InsecurePlainDirectories
	if c.CSI.Socket == "" {
		return
	}
	if !filepath.IsAbs(c.CSI.Socket) {
		fail("csi.socket", "must be an absolute path; got %q", c.CSI.Socket)
	}
	if !filepath.IsAbs(c.CSI.KubeletRoot) || filepath.Clean(c.CSI.KubeletRoot) != c.CSI.KubeletRoot {
		fail("csi.kubeletRoot", "must be a clean absolute path such as /var/lib/kubelet; got %q", c.CSI.KubeletRoot)
	}
	q, err := resource.ParseQuantity(or(r.CSI.TmpfsSize, defaultTmpfsSize))
	if err != nil || q.Value() < 64<<10 || q.Value() > 1<<30 {
		fail("csi.tmpfsSize", "want a size from 64Ki to 1Gi such as \"16Mi\"; got %q", r.CSI.TmpfsSize)
	} else {
		c.CSI.TmpfsBytes = q.Value()
	}
	if c.CSI.Socket == c.Socket.Path || c.CSI.Socket == c.AdminSocket.Path {
		fail("csi.socket", "must differ from socket.path and adminSocket.path")
	}
	if c.NodeName == "" {
		fail("nodeName", "is required with csi.socket: NodeGetInfo reports it")
	}
}

// csiParts is the running CSI driver.
type csiParts struct {
	driver *csi.Driver
	lis    net.Listener
	// recovered is closed once the volumes of the previous run are recovered: the daemon
	// reports ready only after that.
	recovered chan struct{}
}

// setupCSI builds the driver and listens on its socket (so the socket exists once the daemon
// is ready). Volumes are tmpfs mounts, which need root; plain directories (files on the
// node's disk) only when csi.insecurePlainDirectories says so, for tests.
func (d *daemon) setupCSI(log *slog.Logger, pods *identity.PodIndex) error {
	if d.cfg.CSI.Socket == "" {
		return nil
	}
	log = log.With(slog.String("component", "csi"))
	metrics, err := csi.NewMetrics(d.metrics)
	if err != nil {
		return err
	}
	tmpfs := csi.NewTmpfsMounter(d.cfg.CSI.TmpfsBytes)
	var mounter csi.Mounter = tmpfs
	if os.Geteuid() == 0 && !tmpfs.ReadOnlyView() {
		log.Warn("this kernel has no mount_setattr (Linux < 5.12): pods see their secrets volumes read-write; set readOnly: true on their volumeMounts")
	}
	if os.Geteuid() != 0 {
		// Secret files must never reach the node's disk: without tmpfs, refuse unless a
		// test explicitly asked for plain directories.
		if !d.cfg.CSI.PlainDirs {
			return errors.New("csi: tmpfs volumes need root (CAP_SYS_ADMIN); run the daemon as root, or set csi.insecurePlainDirectories for tests")
		}
		log.Warn("csi.insecurePlainDirectories: CSI volumes are plain directories on disk, not tmpfs")
		mounter = csi.DirMounter{}
	}
	cfg := csi.Config{
		Broker: d.broker, Store: d.volumes, LegacyStore: d.node, Mounter: mounter, KubeletRoot: d.cfg.CSI.KubeletRoot, NodeID: d.cfg.NodeName,
		DriverName: d.cfg.CSI.DriverName, APISocket: d.cfg.Socket.Path, Metrics: metrics, Logger: log,
		Audience: csiAudience(d.cfg.Identity.Audiences), MaxBackoff: retryBackoffCap(d.cfg.Rotation.PollInterval),
	}
	if pods != nil {
		cfg.Pods = pods
	}
	drv, err := csi.New(cfg)
	if err != nil {
		return err
	}
	lis, err := grpcx.ListenUnix(d.cfg.CSI.Socket, 0o600)
	if err != nil {
		return fmt.Errorf("csi socket: %w", err)
	}
	d.csi = &csiParts{driver: drv, lis: lis, recovered: make(chan struct{})}
	return nil
}

// run recovers the volumes of the previous run, then serves the CSI socket and checks pods
// until ctx is done. Publishes wait in the socket's backlog while recovery runs.
func (c *csiParts) run(ctx context.Context) error {
	if err := c.driver.Recover(); err != nil {
		_ = c.lis.Close()
		c.driver.Close()
		return fmt.Errorf("csi: recover volumes: %w", err)
	}
	close(c.recovered)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.driver.Run(gctx) })
	g.Go(func() error { return grpcx.Serve(gctx, csi.NewGRPCServer(c.driver), c.lis, 5*time.Second) })
	return g.Wait()
}

// csiAudience is the audience of the pod token the driver takes from kubelet's token map: the
// first of identity.audiences, the one the CSIDriver object's tokenRequests names (the chart
// renders both from the same value). Empty means the driver's default.
func csiAudience(audiences []string) string {
	if len(audiences) == 0 {
		return ""
	}
	return audiences[0]
}
