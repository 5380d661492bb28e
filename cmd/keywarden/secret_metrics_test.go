package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/source"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

const metricSecret = "s3cr3t-metric-value"

// valueSource serves a value that must never reach a metric, and fails with an error that
// quotes it when told to.
type valueSource struct {
	mu   sync.Mutex
	fail bool
}

func (v *valueSource) Fetch(context.Context, string) (*source.Secret, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.fail {
		return nil, fmt.Errorf("%w: upstream said password=%s", source.ErrUnavailable, metricSecret)
	}
	return &source.Secret{Data: map[string]source.Value{"password": source.Value(metricSecret)}, Version: "v1",
		ExpiresAt: time.Now().Add(time.Hour)}, nil
}

func exposition(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

func TestMetrics_perSecretLabelsOnlyWhenOn(t *testing.T) {
	src := &valueSource{}
	e, err := rotate.New(rotate.Config{Sources: map[string]source.Source{"vault": src}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ref := source.Ref{Source: "vault", Path: "engine=kv-v2&mount=secret&path=app%2Fdb"}
	if _, err := e.Get(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	src.mu.Lock()
	src.fail = true
	src.mu.Unlock()
	if err := e.Refresh(context.Background(), ref); !errors.Is(err, source.ErrUnavailable) {
		t.Fatal(err)
	}

	off := prometheus.NewRegistry()
	off.MustRegister(newFreshnessCollector(e))
	if got := exposition(t, off); strings.Contains(got, "path=") || !strings.Contains(got, "keywarden_secrets_stale 1") {
		t.Fatalf("aggregates only by default:\n%s", got)
	}

	on := prometheus.NewRegistry()
	on.MustRegister(newFreshnessCollector(e), newSecretCollector(e))
	got := exposition(t, on)
	for _, want := range []string{
		`keywarden_secret_stale{path="engine=kv-v2&mount=secret&path=app%2Fdb",source="vault"} 1`,
		`keywarden_secret_refresh_failures{path="engine=kv-v2&mount=secret&path=app%2Fdb",source="vault"} 1`,
		`keywarden_secret_age_seconds{path=`, `keywarden_secret_expiry_seconds{path=`, `keywarden_secret_next_refresh_seconds{path=`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %s in:\n%s", want, got)
		}
	}
	if strings.Contains(got, metricSecret) {
		t.Fatalf("a value reached the metrics:\n%s", got)
	}
}

func TestPrintCachedSecrets_freshnessColumns(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	var b strings.Builder
	err := printCachedSecrets(&b, []*keywardenv1.CachedSecret{
		{Source: "vault", Path: "engine=kv-v2&mount=secret&path=a", Version: "hmac-1", FetchedAt: timestamppb.New(now.Add(-90 * time.Second)),
			ExpiresAt: timestamppb.New(now.Add(time.Hour)), NextRefreshAt: timestamppb.New(now.Add(30 * time.Second)),
			RefreshFailures: 3, LastError: "source unavailable", Stale: true, Subscribers: 2},
		{Source: "local", Path: "db", Version: "2", FetchedAt: timestamppb.New(now)},
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("got:\n%s", b.String())
	}
	for i, want := range [][]string{
		{"SOURCE", "AGE", "EXPIRES", "NEXT REFRESH", "FAILURES", "LAST ERROR"},
		{"vault", "1m30s", "in 1h0m0s", "in 30s", " 3 ", "source unavailable"},
		{"local", "0s", "never", " - "},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q lacks %q", i, lines[i], w)
			}
		}
	}
}
