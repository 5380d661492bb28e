package main

// Revocations: an admin withdraws a secret or an identity on this node at once, without
// editing grants. They are kept in state.db and re-applied before the daemon serves.

import (
	"log/slog"

	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/revoke"
)

// setupRevocations builds the revocation manager once the broker and the cache exist, and
// applies the revocations of the previous run.
func (d *daemon) setupRevocations(log *slog.Logger) error {
	var err error
	d.revoker, err = revoke.New(revoke.Config{
		Broker: d.broker, Purger: d.engine, Logger: log.With(slog.String("component", "revoke")),
		Apply: func(s *grant.Set) error { return d.broker.UpdateGrantSource(revoke.SourceName, s) },
		DB:    d.state, // revocations survive a restart; loaded and applied here, before serving
	})
	if err != nil {
		return err
	}
	d.runners = append(d.runners, d.revoker.Run)
	return nil
}
