package main

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestHealthMux_pprof(t *testing.T) {
	tests := []struct {
		name   string
		pprof  bool
		remote string
		want   int
	}{
		{"off by default", false, "127.0.0.1:5000", http.StatusNotFound},
		{"loopback v4", true, "127.0.0.1:5000", http.StatusOK},
		{"loopback v6", true, "[::1]:5000", http.StatusOK},
		{"pod network peer", true, "10.1.2.3:5000", http.StatusForbidden},
		{"unparsable peer", true, "nonsense", http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &daemon{cfg: config{HealthPprof: tt.pprof}}
			mux := d.healthMux(prometheus.NewRegistry())
			req := httptest.NewRequest(http.MethodGet, "/debug/pprof/cmdline", nil)
			req.RemoteAddr = tt.remote
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Fatalf("GET /debug/pprof/cmdline from %s with pprof=%v: %d, want %d", tt.remote, tt.pprof, rec.Code, tt.want)
			}
		})
	}
	// The index (heap, allocs, goroutine profiles) is behind the same check.
	d := &daemon{cfg: config{HealthPprof: true}}
	req := httptest.NewRequest(http.MethodGet, "/debug/pprof/heap", nil)
	req.RemoteAddr = "192.168.0.9:1"
	rec := httptest.NewRecorder()
	d.healthMux(prometheus.NewRegistry()).ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Fatalf("heap profile to a non-loopback peer: %d, want 403", rec.Code)
	}
}
