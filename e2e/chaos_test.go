//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/client"
	"github.com/keywarden/keywarden/e2e/framework"
	"github.com/keywarden/keywarden/internal/chaos"
)

// chaosWatcher is one pod's watch stream: what it received and when.
type chaosWatcher struct {
	mu         sync.Mutex
	version    string // of the last value
	value      string
	deliveries int
	// repeats counts values delivered again with the version already held: a watch sends the
	// current value first, so a repeat means the stream broke and the client reconnected.
	repeats int
	at      map[string]time.Time // first delivery of each value
}

func (w *chaosWatcher) deliver(s *client.Secret) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.deliveries++
	if s.Version == w.version {
		w.repeats++
	}
	w.version, w.value = s.Version, string(s.Data["token"])
	if _, ok := w.at[w.value]; !ok {
		w.at[w.value] = time.Now()
	}
	return nil
}

func (w *chaosWatcher) snapshot() (value string, repeats int, at map[string]time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	at = map[string]time.Time{}
	for k, v := range w.at {
		at[k] = v
	}
	return w.value, w.repeats, at
}

// TestChaos_vaultDown freezes Vault (SIGSTOP: the dev server keeps its in-memory state, and
// every request to it hangs) while pods hold volumes and watch streams: 5 pods and 5 poll
// intervals, or 25 pods and 10 minutes with KEYWARDEN_CHAOS_LONG=1. During the outage every
// volume keeps its files, no watch stream breaks, and every GetSecret answers the cached
// value unexpired or Unavailable. After Vault returns, a new value written to it reaches
// every volume and stream; the time that takes is printed against the poll interval.
func TestChaos_vaultDown(t *testing.T) {
	pods, outage, poll := 5, 5*time.Second, time.Second
	if chaos.Long() {
		pods, outage = 25, 10*time.Minute
	}
	e := startCSIVault(t, csiVaultOptions{pollInterval: poll, logLevel: "info"})
	e.putKV(t, "app/api", map[string]any{"token": "outage-kv-value-1"})
	podList, targets := e.publishPods(t, pods, map[string]string{"secrets": "api"})
	for _, target := range targets {
		waitFile(t, filepath.Join(target, "api/token"), "outage-kv-value-1")
	}
	sock := filepath.Join(e.d.Dir, "kw.sock")
	wctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { stop(); wg.Wait() })
	watchers := make([]*chaosWatcher, pods)
	clients := make([]*client.Client, pods)
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
	for i, w := range watchers {
		waitFor(t, 30*time.Second, fmt.Sprintf("watch %d delivers the first value", i), func() bool {
			v, _, _ := w.snapshot()
			return v == "outage-kv-value-1"
		})
	}

	if err := e.vault.Process.Pause(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = e.vault.Process.Resume()
		}
	})
	pausedAt := time.Now()
	var rounds, fileChecks, gets, served, unavailable, lost, wrongAllows int
	for i := 0; time.Since(pausedAt) < outage; i++ {
		rounds++
		for _, target := range targets {
			fileChecks++
			if got := readFile(filepath.Join(target, "api/token")); got != "outage-kv-value-1" {
				lost++
				t.Errorf("during the outage a volume holds %q, want the last value", got)
			}
		}
		gctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := clients[i%pods].Get(gctx, "api")
		cancel()
		gets++
		switch {
		case err == nil && (s.ExpiresAt.IsZero() || s.ExpiresAt.After(time.Now())) && string(s.Data["token"]) == "outage-kv-value-1":
			served++
		case err == nil:
			wrongAllows++
			t.Errorf("during the outage GetSecret served %v expiring %v", s, s.ExpiresAt)
		case status.Code(err) == codes.Unavailable:
			unavailable++
		default:
			wrongAllows++
			t.Errorf("during the outage GetSecret: %v, want the cached value or Unavailable", err)
		}
		time.Sleep(poll)
	}
	repeatsBefore := 0
	for _, w := range watchers {
		_, r, _ := w.snapshot()
		repeatsBefore += r
	}

	if err := e.vault.Process.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	resumedAt := time.Now()
	e.putKV(t, "app/api", map[string]any{"token": "outage-kv-value-2"})
	written := time.Now()
	var slowestFile time.Duration
	for _, target := range targets {
		waitFile(t, filepath.Join(target, "api/token"), "outage-kv-value-2")
		slowestFile = max(slowestFile, time.Since(written))
	}
	var slowestWatch time.Duration
	repeats := 0
	for i, w := range watchers {
		waitFor(t, 60*time.Second, fmt.Sprintf("watch %d delivers the value written after the outage", i), func() bool {
			v, _, _ := w.snapshot()
			return v == "outage-kv-value-2"
		})
		_, r, at := w.snapshot()
		repeats += r
		slowestWatch = max(slowestWatch, at["outage-kv-value-2"].Sub(written))
	}
	if repeatsBefore > 0 {
		t.Errorf("%d watch streams reconnected during the outage, want none", repeatsBefore)
	}
	t.Logf("Vault down %v with %d pods: %d rounds, %d file checks (%d lost), %d GetSecret (%d cached and unexpired, %d Unavailable, %d wrong), "+
		"%d watch reconnects; after Vault returned (%v to write the new value): every volume had it %v after the write, every stream %v (poll interval %v)",
		outage, pods, rounds, fileChecks, lost, gets, served, unavailable, wrongAllows, repeats, written.Sub(resumedAt).Round(time.Millisecond),
		slowestFile.Round(time.Millisecond), slowestWatch.Round(time.Millisecond), poll)
	chaos.Report(t, chaos.Result{Campaign: fmt.Sprintf("Vault frozen %v, %d pods (e2e)", outage, pods), Trials: pods, Faults: 1,
		Losses: lost, WrongAllows: wrongAllows,
		Notes: fmt.Sprintf("%d file checks, %d GetSecret (%d cached, %d Unavailable), %d stream reconnects; new value in files %v, streams %v after the write (poll %v)",
			fileChecks, gets, served, unavailable, repeats, slowestFile.Round(time.Millisecond), slowestWatch.Round(time.Millisecond), poll)})
}
