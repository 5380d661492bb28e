//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/client"
	"github.com/keywarden/keywarden/e2e/framework"
	"github.com/keywarden/keywarden/internal/chaos"
)

// The misbehaviours of hostileVault, one per campaign phase.
const (
	hostileNone      = "none"
	hostileLatency   = "latency"    // every answer 0–1.5 s late
	hostile5xx       = "5xx"        // 60% answered 500, 502 or 503 without reaching Vault
	hostileTruncated = "truncated"  // 60% of bodies cut short of their Content-Length
	hostileOversized = "oversized"  // 60% of JSON bodies padded past 3 MiB
	hostileTTL       = "wrong-ttls" // lease_duration of 60% of answers set to 0, 1, -1 or 2^40 s
)

// hostileVault is a reverse proxy on loopback in front of the real Vault that misbehaves the
// way its mode says, and counts the requests reaching it per second.
type hostileVault struct {
	target *url.URL
	url    string // the proxy's own address
	rt     http.RoundTripper
	mode   atomic.Value // string

	mu        sync.Mutex
	rng       *rand.Rand
	perSecond map[int64]int
	byMode    map[string]int
	tampered  map[string]int
}

func startHostileVault(t testing.TB, real string) *hostileVault {
	t.Helper()
	u, err := url.Parse(real)
	if err != nil {
		t.Fatal(err)
	}
	h := &hostileVault{target: u, rt: http.DefaultTransport, rng: rand.New(rand.NewPCG(uint64(os.Getpid()), 14)),
		perSecond: map[int64]int{}, byMode: map[string]int{}, tampered: map[string]int{}}
	h.mode.Store(hostileNone)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	h.url = srv.URL
	return h
}

func (h *hostileVault) srvURL() string { return h.url }

func (h *hostileVault) set(mode string) { h.mode.Store(mode) }

// roll reports true with probability p, and the random int in [0, n) it drew.
func (h *hostileVault) roll(p float64, n int) (bool, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rng.Float64() < p, h.rng.IntN(max(n, 1))
}

func (h *hostileVault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	mode := h.mode.Load().(string)
	h.mu.Lock()
	h.perSecond[time.Now().Unix()]++
	h.byMode[mode]++
	h.mu.Unlock()
	tamper := func() {
		h.mu.Lock()
		h.tampered[mode]++
		h.mu.Unlock()
	}
	switch mode {
	case hostileLatency:
		_, ms := h.roll(1, 1500)
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
			tamper()
		case <-r.Context().Done():
			return
		}
	case hostile5xx:
		if hit, i := h.roll(0.6, 3); hit {
			tamper()
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader([]int{http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable}[i])
			_, _ = w.Write([]byte(`{"errors":["hostile proxy"]}`))
			return
		}
	}
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host, out.Host, out.RequestURI = h.target.Scheme, h.target.Host, h.target.Host, ""
	resp, err := h.rt.RoundTrip(out)
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	switch mode {
	case hostileTruncated:
		if hit, _ := h.roll(0.6, 1); hit && len(body) > 2 {
			tamper()
			_, cut := h.roll(1, len(body)-1)
			copyHeader(w, resp)
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.WriteHeader(resp.StatusCode)
			_, _ = w.Write(body[:cut]) // the server closes the connection short of Content-Length
			return
		}
	case hostileOversized:
		if hit, _ := h.roll(0.6, 1); hit && bytes.HasPrefix(body, []byte("{")) {
			tamper()
			pad := append([]byte(`{"hostile_padding":"`), bytes.Repeat([]byte("x"), 3<<20)...)
			body = append(append(pad, `",`...), body[1:]...)
		}
	case hostileTTL:
		var doc map[string]any
		if hit, i := h.roll(0.6, 4); hit && json.Unmarshal(body, &doc) == nil {
			ttl := []int64{0, 1, -1, 1 << 40}[i]
			if _, ok := doc["lease_duration"]; ok {
				doc["lease_duration"] = ttl
			}
			if auth, ok := doc["auth"].(map[string]any); ok {
				auth["lease_duration"] = ttl
			}
			if b, err := json.Marshal(doc); err == nil {
				tamper()
				body = b
			}
		}
	}
	copyHeader(w, resp)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body)
}

func copyHeader(w http.ResponseWriter, resp *http.Response) {
	for k, vs := range resp.Header {
		if k == "Content-Length" {
			continue
		}
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
}

// peak is the most requests that reached Vault in one wall-clock second.
func (h *hostileVault) peak() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := 0
	for _, n := range h.perSecond {
		p = max(p, n)
	}
	return p
}

func (h *hostileVault) counts() (byMode, tampered map[string]int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	byMode, tampered = map[string]int{}, map[string]int{}
	for k, v := range h.byMode {
		byMode[k] = v
	}
	for k, v := range h.tampered {
		tampered[k] = v
	}
	return byMode, tampered
}

// rssBytes is the resident set of process pid, from /proc.
func rssBytes(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read the daemon's memory: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/<pid>/status")
	return 0
}

// TestChaos_hostileVault puts a misbehaving proxy between the daemon and the real Vault and
// runs one phase per misbehaviour (latency, 5xx, truncated bodies, oversized bodies, wrong
// lease TTLs) while pods hold CSI volumes with a KV secret and a database credential, watch
// the KV secret, and call GetSecret; a new KV value is written at the start of each phase.
// Through every phase: every file and every answer holds a value Vault really held, nothing
// is served past the expiry it was delivered with, every error is Unavailable (or the
// caller's own deadline), the requests reaching Vault per second stay within the daemon's
// token bucket (50/s, burst 20), and the daemon's memory stays bounded. After each phase the
// proxy behaves and the latest value must reach every volume and stream. 5 pods and 8 s per
// phase, or 25 pods and 2 minutes with KEYWARDEN_CHAOS_LONG=1.
func TestChaos_hostileVault(t *testing.T) {
	pods, phase := 5, 8*time.Second
	if chaos.Long() {
		pods, phase = 25, 2*time.Minute
	}
	var proxy *hostileVault
	// More traffic to misbehave on: ten more KV secrets polled every second, and a database
	// credential per pod (share: Pod) renewed every ~13 s. "a-hostile" sorts before the
	// environment's "app-vault" grant, so its "db" (share: Pod) is the one chosen.
	const kvSecrets = 10
	var names, grantSecrets []string
	for i := range kvSecrets {
		names = append(names, fmt.Sprintf("kv-%d", i))
		grantSecrets = append(grantSecrets, fmt.Sprintf("    - name: kv-%d\n      source: {vault: {mount: secret, path: app/kv-%d}}", i, i))
	}
	e := startCSIVault(t, csiVaultOptions{withPostgres: true, dbTTL: 20 * time.Second, dbMaxTTL: time.Hour, pollInterval: time.Second,
		logLevel: "info", tokenTTL: time.Hour,
		extraGrants: func(ns string) string {
			return fmt.Sprintf(`---
apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: a-hostile}
spec:
  subjects: [{namespace: %s, serviceAccount: app}]
  secrets:
    - name: db
      source: {vault: {mount: database, engine: database, role: app}}
      share: Pod
%s
`, ns, strings.Join(grantSecrets, "\n"))
		},
		vaultAddress: func(t testing.TB, real string) string {
			proxy = startHostileVault(t, real)
			return proxy.srvURL()
		}})
	written := []string{"hostile-kv-start"}
	e.putKV(t, "app/api", map[string]any{"token": written[0]})
	for i := range kvSecrets {
		e.putKV(t, fmt.Sprintf("app/kv-%d", i), map[string]any{"token": fmt.Sprintf("hostile-kv-fixed-%d", i)})
	}
	podList, targets := e.publishPods(t, pods, map[string]string{"secrets": "api,db," + strings.Join(names, ",")})
	for _, target := range targets {
		waitFile(t, filepath.Join(target, "api/token"), written[0])
	}
	sock := filepath.Join(e.d.Dir, "kw.sock")
	wctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { stop(); wg.Wait() })
	clients := make([]*client.Client, pods)
	watchers := make([]*chaosWatcher, pods)
	for i, pod := range podList {
		c, err := client.New(sock, client.WithToken(e.kl.PodToken(t, pod, framework.DefaultAudience).Token))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		clients[i] = c
		w := &chaosWatcher{at: map[string]time.Time{}}
		watchers[i] = w
		wg.Go(func() { _ = c.Watch(wctx, []string{"api"}, w.deliver) })
	}
	pid := e.d.Process.Pid()
	baseRSS := rssBytes(t, pid)
	var maxRSS int64
	var fileChecks, gets, served, inFlight, unavailable, deadlines, wrong, lost int
	var recoveries []string
	modes := []string{hostileLatency, hostile5xx, hostileTruncated, hostileOversized, hostileTTL}
	for _, mode := range modes {
		value := "hostile-kv-" + mode
		proxy.set(mode)
		e.putKV(t, "app/api", map[string]any{"token": value})
		written = append(written, value)
		start := time.Now()
		for round := 0; time.Since(start) < phase; round++ {
			for _, target := range targets {
				fileChecks++
				if got := readFile(filepath.Join(target, "api/token")); !slices.Contains(written, got) {
					lost++
					t.Errorf("%s: a volume holds %q, not a value Vault held", mode, got)
				}
				if readFile(filepath.Join(target, "db/username")) == "" {
					lost++
					t.Errorf("%s: a volume lost its database username", mode)
				}
				for i, name := range names {
					if got := readFile(filepath.Join(target, name, "token")); got != fmt.Sprintf("hostile-kv-fixed-%d", i) {
						lost++
						t.Errorf("%s: %s holds %q", mode, name, got)
					}
				}
			}
			for _, name := range []string{"api", "db"} {
				asked := time.Now()
				gctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				s, err := clients[round%pods].Get(gctx, name)
				cancel()
				gets++
				now := time.Now()
				switch {
				case err == nil && !s.ExpiresAt.IsZero() && !s.ExpiresAt.After(asked):
					wrong++
					t.Errorf("%s: GetSecret(%s) served a value that had expired at %v, before it was asked for at %v", mode, name, s.ExpiresAt, asked)
				case err == nil && !s.ExpiresAt.IsZero() && !s.ExpiresAt.After(now):
					// Valid when the daemon sent it (1 s leases in the wrong-TTL phase), past
					// expiry on arrival: the answer's own latency, counted, not a wrong allow.
					inFlight++
				case err == nil && name == "api" && !slices.Contains(written, string(s.Data["token"])):
					wrong++
					t.Errorf("%s: GetSecret(api) served %q, not a value Vault held", mode, s.Data["token"])
				case err == nil && name == "db" && (len(s.Data["username"]) == 0 || s.ExpiresAt.IsZero()):
					wrong++
					t.Errorf("%s: GetSecret(db) served a credential without username or expiry", mode)
				case err == nil:
					served++
				case status.Code(err) == codes.Unavailable:
					unavailable++
				case status.Code(err) == codes.DeadlineExceeded:
					deadlines++
				default:
					wrong++
					t.Errorf("%s: GetSecret(%s): %v, want a value or Unavailable", mode, name, err)
				}
			}
			maxRSS = max(maxRSS, rssBytes(t, pid))
			time.Sleep(250 * time.Millisecond)
		}
		proxy.set(hostileNone)
		healed := time.Now()
		for _, target := range targets {
			waitFor(t, 2*time.Minute, mode+": the phase's value in "+target+" once Vault behaves", func() bool {
				return readFile(filepath.Join(target, "api/token")) == value
			})
		}
		for i, w := range watchers {
			waitFor(t, 2*time.Minute, fmt.Sprintf("%s: watch %d delivers the phase's value once Vault behaves", mode, i), func() bool {
				v, _, _ := w.snapshot()
				return v == value
			})
		}
		recoveries = append(recoveries, fmt.Sprintf("%s %v", mode, time.Since(healed).Round(10*time.Millisecond)))
		if t.Failed() {
			break
		}
	}
	peak := proxy.peak()
	const rateLimit, burst = 50, 20 // broker/source/vault defaults
	if peak > rateLimit+burst {
		t.Errorf("%d requests reached Vault in one second: the token bucket (%d/s, burst %d) did not hold", peak, rateLimit, burst)
	}
	// Bounded, not small: 3 MiB bodies are cut at the 1 MiB response limit and never kept.
	const bound = 96 << 20
	if maxRSS > baseRSS+bound {
		t.Errorf("the daemon's memory grew from %d MiB to %d MiB under a hostile Vault (bound +%d MiB)", baseRSS>>20, maxRSS>>20, bound>>20)
	}
	byMode, tampered := proxy.counts()
	var perMode []string
	for _, m := range modes {
		perMode = append(perMode, fmt.Sprintf("%s %d/%d", m, tampered[m], byMode[m]))
	}
	t.Logf("hostile Vault, %d pods, %v per phase: %d file checks (%d lost), %d GetSecret (%d served, %d expired while the answer travelled, %d Unavailable, %d caller deadlines, %d wrong); "+
		"requests tampered/reaching the proxy per phase: %s; peak %d requests/s; RSS %d MiB before, %d MiB at most; back to the latest value after each phase: %s",
		pods, phase, fileChecks, lost, gets, served, inFlight, unavailable, deadlines, wrong, strings.Join(perMode, ", "), peak, baseRSS>>20, maxRSS>>20,
		strings.Join(recoveries, ", "))
	chaos.Report(t, chaos.Result{Campaign: fmt.Sprintf("hostile Vault proxy, 5 phases of %v, %d pods (e2e)", phase, pods), Trials: len(recoveries),
		Faults: tampered[hostileLatency] + tampered[hostile5xx] + tampered[hostileTruncated] + tampered[hostileOversized] + tampered[hostileTTL],
		Losses: lost, WrongAllows: wrong,
		Notes: fmt.Sprintf("%d GetSecret (%d served, %d Unavailable); peak %d req/s (bucket 50/s+20); RSS %d->%d MiB max; recovery %s",
			gets, served, unavailable, peak, baseRSS>>20, maxRSS>>20, strings.Join(recoveries, ", "))})
}
