package main

// The hash-chained audit log, kept in state.db.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/crypto"
)

// rawAudit is `audit:`.
type rawAudit struct {
	MaxEntries    int            `json:"maxEntries"`
	FlushInterval string         `json:"flushInterval"`
	Anchor        rawAuditAnchor `json:"anchor"`
}

// rawAuditAnchor is `audit.anchor:`: signed checkpoints of the log's head published off the node.
type rawAuditAnchor struct {
	Enabled  bool   `json:"enabled"`
	Interval string `json:"interval"`
	KeyFile  string `json:"keyFile"`
	// Log writes each anchor to the daemon's log (default true when anchoring is on).
	Log    *bool           `json:"log"`
	Events rawAnchorEvents `json:"events"`
}

// rawAnchorEvents is `audit.anchor.events:`: publish anchors as Kubernetes Events.
type rawAnchorEvents struct {
	Namespace string `json:"namespace"`
}

// auditConfig is the typed audit section; zero values take the audit package's defaults.
type auditConfig struct {
	MaxEntries    int
	FlushInterval time.Duration
	Anchor        *anchorConfig // nil: no anchors
}

// anchorConfig is the typed audit.anchor section.
type anchorConfig struct {
	Interval        time.Duration
	KeyFile         string
	Log             bool
	EventsNamespace string // empty: no Events
}

// Bounds of audit.anchor.interval: often enough to matter, rarely enough not to flood the
// apiserver with Events.
const (
	minAnchorInterval = 10 * time.Second
	maxAnchorInterval = 24 * time.Hour
)

func (r rawConfig) typedAudit(c *config, fail func(field, format string, args ...any)) {
	c.Audit.MaxEntries = r.Audit.MaxEntries
	if c.Audit.MaxEntries != 0 && c.Audit.MaxEntries < 10 {
		fail("audit.maxEntries", "want 0 (default %d) or at least 10; got %d", audit.DefaultMaxEntries, c.Audit.MaxEntries)
	}
	if r.Audit.FlushInterval != "" {
		v, err := time.ParseDuration(r.Audit.FlushInterval)
		if err != nil || v <= 0 || v > 10*time.Second {
			fail("audit.flushInterval", "want a positive duration of at most 10s such as \"100ms\"; got %q", r.Audit.FlushInterval)
		}
		c.Audit.FlushInterval = v
	}
	r.typedAuditAnchor(c, fail)
}

func (r rawConfig) typedAuditAnchor(c *config, fail func(field, format string, args ...any)) {
	ra := r.Audit.Anchor
	if !ra.Enabled {
		if ra.Interval != "" || ra.KeyFile != "" || ra.Log != nil || ra.Events.Namespace != "" {
			fail("audit.anchor", "set enabled: true to publish anchors, or remove the section")
		}
		return
	}
	a := &anchorConfig{Interval: audit.DefaultAnchorInterval, KeyFile: ra.KeyFile, Log: ra.Log == nil || *ra.Log, EventsNamespace: ra.Events.Namespace}
	if ra.Interval != "" {
		v, err := time.ParseDuration(ra.Interval)
		if err != nil || v < minAnchorInterval || v > maxAnchorInterval {
			fail("audit.anchor.interval", "want a duration from %s to %s such as \"5m\"; got %q", minAnchorInterval, maxAnchorInterval, ra.Interval)
		}
		a.Interval = v
	}
	if a.KeyFile == "" {
		a.KeyFile = filepath.Join(c.DataDir, "audit-anchor-key.json")
	}
	switch {
	case !filepath.IsAbs(a.KeyFile):
		fail("audit.anchor.keyFile", "must be an absolute path; got %q", a.KeyFile)
	case a.KeyFile == c.KEK.File:
		fail("audit.anchor.keyFile", "must not be the KEK's file: the anchor key is a separate key")
	}
	if c.NodeName == "" {
		fail("audit.anchor", "needs nodeName (or --node-name): every anchor names its node")
	}
	if ns := a.EventsNamespace; ns != "" {
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			fail("audit.anchor.events.namespace", "want a namespace name; got %q", ns)
		}
		if c.Kubernetes.Kubeconfig == "" && !c.Kubernetes.InCluster {
			fail("audit.anchor.events", "needs the kubernetes section: set kubernetes.kubeconfig or kubernetes.inCluster: true")
		}
	}
	if !a.Log && a.EventsNamespace == "" {
		fail("audit.anchor", "no sink: set events.namespace, or leave log on")
	}
	c.Audit.Anchor = a
}

// openAuditLog opens the audit log in the state store; the broker records into it and Run
// (a runner) writes batches.
func (d *daemon) openAuditLog(log *slog.Logger) error {
	l, err := audit.Open(audit.Config{
		DB: d.state, Logger: log.With(slog.String("component", "audit")),
		MaxEntries: d.cfg.Audit.MaxEntries, FlushInterval: d.cfg.Audit.FlushInterval,
	})
	if err != nil {
		return err
	}
	d.auditLog = l
	d.runners = append(d.runners, l.Run)
	return d.setupAnchorer(log)
}

// setupAnchorer adds the Anchorer (audit.anchor) to the runners: it signs the log's head with
// the anchor key and publishes it to the daemon's log and, when configured, as Events.
func (d *daemon) setupAnchorer(log *slog.Logger) error {
	ac := d.cfg.Audit.Anchor
	if ac == nil {
		return nil
	}
	key, err := crypto.LoadOrCreateSigningKey(ac.KeyFile)
	if err != nil {
		return fmt.Errorf("audit anchor key: %w", err)
	}
	alog := log.With(slog.String("component", "audit-anchor"))
	var sinks []audit.AnchorSink
	if ac.Log {
		sinks = append(sinks, audit.LogSink{Logger: alog})
	}
	if ac.EventsNamespace != "" {
		kc, err := d.kubeClient()
		if err != nil {
			return err
		}
		sinks = append(sinks, &audit.EventSink{Events: kc.EventsV1().Events(ac.EventsNamespace), Namespace: ac.EventsNamespace})
	}
	an, err := audit.NewAnchorer(audit.AnchorerConfig{
		Log: d.auditLog, Signer: key, Node: d.cfg.NodeName, Sinks: sinks, Interval: ac.Interval, Logger: alog,
	})
	if err != nil {
		return err
	}
	// The fingerprint is what operators pin (`audit verify --anchor-key`): record it off the
	// node when the node is first installed.
	alog.Info("audit anchor key", slog.String("fingerprint", key.Fingerprint()), slog.String("key_file", ac.KeyFile),
		slog.Duration("interval", ac.Interval))
	if err := d.metrics.Register(newAnchorCollector(an)); err != nil { // metrics.go
		return err
	}
	d.anchorer = an
	d.runners = append(d.runners, an.Run)
	return nil
}

// closeAuditLog writes what the audit log still holds; called before the stores close.
func (d *daemon) closeAuditLog() {
	if d.auditLog == nil {
		return
	}
	if err := d.auditLog.Close(); err != nil && !errors.Is(err, context.Canceled) {
		d.log.Error("close audit log", slog.Any("error", err))
	}
	if d.anchorer != nil {
		// Anchor the final head, after the last flush: a restart leaves no unanchored tail
		// behind. Failures are logged by the Anchorer.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = d.anchorer.Publish(ctx)
		cancel()
	}
}
