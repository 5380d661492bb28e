package vault

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/keywarden/keywarden/broker/source"
)

func TestGate_acquire_foregroundBeforeBackground(t *testing.T) {
	g := newGate(testingclock.NewFakeClock(time.Now()), 1, 1000, 1000, time.Second, time.Minute)
	ctx := context.Background()
	if err := g.acquire(ctx); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 2)
	go func() {
		if g.acquire(source.Background(ctx)) == nil {
			order <- "background"
			g.release()
		}
	}()
	waitFor(t, func() bool { g.mu.Lock(); defer g.mu.Unlock(); return len(g.bg) == 1 })
	go func() {
		if g.acquire(ctx) == nil {
			order <- "foreground"
			g.release()
		}
	}()
	waitFor(t, func() bool { g.mu.Lock(); defer g.mu.Unlock(); return len(g.fg) == 1 })
	g.release()
	if first := <-order; first != "foreground" {
		t.Fatalf("%s served first", first)
	}
	<-order
}

func TestGate_acquire_canceledWaiterGivesUp(t *testing.T) {
	g := newGate(testingclock.NewFakeClock(time.Now()), 1, 1000, 1000, time.Second, time.Minute)
	if err := g.acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() { errc <- g.acquire(ctx) }()
	waitFor(t, func() bool { g.mu.Lock(); defer g.mu.Unlock(); return len(g.fg) == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	g.release()
	if g.inUse != 0 {
		t.Fatalf("slot leaked: inUse = %d", g.inUse)
	}
}

func TestSource_send_rateLimitedPausesBackgroundOnly(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, func(c *Config) { c.Registerer = reg })
	e.f.putKV2("a", map[string]any{"k": "s3cr3t"})
	if err := e.s.Login(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	e.f.mu.Lock()
	e.f.fault = func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Retry-After", "30")
		vaultError(w, http.StatusTooManyRequests)
		return true
	}
	e.f.mu.Unlock()
	r := ref(t, kv2("a"))
	if _, err := e.s.Fetch(ctxT(t), r); !errors.Is(err, source.ErrUnavailable) {
		t.Fatal(err)
	}
	e.f.mu.Lock()
	e.f.fault = nil
	e.f.mu.Unlock()
	before := e.f.count("GET secret/data/a")
	if _, err := e.s.Fetch(source.Background(ctxT(t)), r); !errors.Is(err, source.ErrUnavailable) {
		t.Fatalf("background fetch during the pause: %v", err)
	}
	if e.f.count("GET secret/data/a") != before {
		t.Fatal("background fetch reached Vault during the pause")
	}
	if _, err := e.s.Fetch(ctxT(t), r); err != nil {
		t.Fatalf("foreground fetch during the pause: %v", err)
	}
	e.clock.Step(31 * time.Second) // Retry-After honoured
	if _, err := e.s.Fetch(source.Background(ctxT(t)), r); err != nil {
		t.Fatalf("background fetch after the pause: %v", err)
	}
	if got := counterValue(e.s.metrics.requests.WithLabelValues("kv-read", "rate_limited")); got != 1 {
		t.Fatalf("rate_limited = %v", got)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		b, _ := json.Marshal(mf)
		if strings.Contains(string(b), "secret/") || strings.Contains(string(b), "hvs.") {
			t.Fatalf("metric %s carries a path or token: %s", mf.GetName(), b)
		}
	}
}

func FuzzDecodeData(f *testing.F) {
	for _, s := range []string{`{"a":"b"}`, `{"n":1.5,"b":true,"z":null,"l":["x","y"],"m":{"k":[1,2]}}`, `null`, `[]`, `{"../x":"y"}`, `{"a":`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		data, _, err := decodeData(raw)
		if err != nil {
			return
		}
		for k := range data {
			if strings.ContainsAny(k, "/\x00") || strings.HasPrefix(k, "..") {
				t.Fatalf("unsafe key %q accepted", k)
			}
		}
	})
}

func FuzzResponse(f *testing.F) {
	// Whatever a (compromised or broken) Vault answers to a KV v2 read, Fetch returns a value
	// or a source error, never a panic.
	for _, s := range []string{
		`{"data":{"data":{"a":"b"},"metadata":{"version":1}}}`,
		`{"data":{"data":null,"metadata":{"deletion_time":"x"}}}`,
		`{"data":null}`, `{}`, `garbage`, `{"data":{"data":{"a":"b"},"metadata":{"version":"x"}}}`,
	} {
		f.Add([]byte(s), 200)
	}
	f.Add([]byte(`{"data":{"metadata":{"destroyed":true}}}`), 404)
	e := newEnv(f, func(c *Config) { c.RequestsPerSecond, c.Burst = 1e9, 1e9 })
	var body []byte
	var status int
	e.f.fault = func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "secret/") {
			return false
		}
		w.WriteHeader(status)
		_, _ = w.Write(body)
		return true
	}
	r := ref(f, kv2("fz"))
	f.Fuzz(func(t *testing.T, b []byte, st int) {
		if st < 200 || st > 599 {
			st = 200
		}
		e.f.mu.Lock()
		body, status = b, st
		e.f.mu.Unlock()
		e.s.dropKV(r)
		_, err := e.s.Fetch(context.Background(), r)
		if err != nil && !errors.Is(err, source.ErrNotFound) && !errors.Is(err, source.ErrDeleted) &&
			!errors.Is(err, source.ErrForbidden) && !errors.Is(err, source.ErrUnavailable) {
			t.Fatalf("unclassified error: %v", err)
		}
	})
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
