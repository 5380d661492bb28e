package main

// The hash-chained audit log, kept in state.db.

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/keywarden/keywarden/broker/audit"
)

// rawAudit is `audit:`.
type rawAudit struct {
	MaxEntries    int    `json:"maxEntries"`
	FlushInterval string `json:"flushInterval"`
}

// auditConfig is the typed audit section; zero values take the audit package's defaults.
type auditConfig struct {
	MaxEntries    int
	FlushInterval time.Duration
}

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
}
