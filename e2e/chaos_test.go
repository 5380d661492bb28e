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
	// Tokens of an hour (kubelet's default for CSI token requests): the 10-minute minimum
	// would expire during the long outage and pause the volumes' rotation until a republish.
	e := startCSIVault(t, csiVaultOptions{pollInterval: poll, logLevel: "info", tokenTTL: time.Hour})
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
	// A generous ceiling, not the target: after an outage longer than the daemon's Vault
	// token, recovery waits for the next login attempt, whose backoff grew during the outage.
	const ceiling = 3 * time.Minute
	var slowestFile time.Duration
	for _, target := range targets {
		waitFor(t, ceiling, "the value written after the outage in "+target, func() bool {
			return readFile(filepath.Join(target, "api/token")) == "outage-kv-value-2"
		})
		slowestFile = max(slowestFile, time.Since(written))
	}
	var slowestWatch time.Duration
	repeats := 0
	for i, w := range watchers {
		waitFor(t, ceiling, fmt.Sprintf("watch %d delivers the value written after the outage", i), func() bool {
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
	chaos.Report(t, chaos.Result{Campaign: fmt.Sprintf("Vault frozen %v, %d pods (e2e)", outage, pods), Trials: 1, Faults: 1,
		Losses: lost, WrongAllows: wrongAllows,
		Notes: fmt.Sprintf("%d file checks, %d GetSecret (%d cached, %d Unavailable), %d stream reconnects; new value in files %v, streams %v after the write (poll %v)",
			fileChecks, gets, served, unavailable, repeats, slowestFile.Round(time.Millisecond), slowestWatch.Round(time.Millisecond), poll)})
}

// TestChaos_apiserverDown stops etcd and the apiserver while pods use the daemon, in both
// identity modes, for 5 s (or 11 minutes with KEYWARDEN_CHAOS_LONG=1, longer than the pods'
// 10-minute tokens). Identities verified before the outage are served until their token's
// exp and refused after it; a token the daemon has not verified gets Unavailable in
// tokenreview mode (JWT mode verifies it offline with the cached keys, for a pod its informer
// knows); tokens that must be refused (a service account without a grant, a pod on another
// node) are never allowed.
func TestChaos_apiserverDown(t *testing.T) {
	pods, outage := 5, 5*time.Second
	if chaos.Long() {
		pods, outage = 25, 11*time.Minute
	}
	const skew = 30 * time.Second // the verifier's allowance on exp
	kube := framework.StartKube(t, framework.KubeOptions{})
	createPodReaderRole(t, kube)
	here := framework.NewKubelet(t, kube, framework.KubeletOptions{})
	there := framework.NewKubelet(t, kube, framework.KubeletOptions{})
	ns := kube.CreateNamespace(t, "chaos-api")
	modes := []string{"jwt", "tokenreview"}
	daemons := map[string]*framework.Daemon{}
	for _, m := range modes {
		daemons[m] = identityDaemon(t, kube, here.NodeName, ns, m)
	}
	type tok struct {
		token string
		exp   time.Time
	}
	used := map[string][]tok{}
	fresh := map[string]tok{} // per mode: a token of a known pod, never presented before the outage
	var refused []string      // tokens every answer must refuse
	for range pods {
		pod := here.CreatePod(t, ns, "app")
		for _, m := range modes {
			tk := here.PodToken(t, pod, framework.DefaultAudience)
			used[m] = append(used[m], tok{tk.Token, tk.ExpirationTimestamp})
		}
	}
	p0 := here.CreatePod(t, ns, "app")
	for _, m := range modes {
		tk := here.PodToken(t, p0, framework.DefaultAudience)
		fresh[m] = tok{tk.Token, tk.ExpirationTimestamp}
	}
	refused = append(refused, here.PodToken(t, here.CreatePod(t, ns, "other"), framework.DefaultAudience).Token,
		there.PodToken(t, there.CreatePod(t, ns, "app"), framework.DefaultAudience).Token)
	for _, m := range modes {
		for _, tk := range used[m] {
			waitAccepted(t, daemons[m], tk.token)
		}
		for _, tk := range refused {
			if err := getSecret(t, daemons[m], tk); err == nil {
				t.Fatalf("%s: a token that must be refused was allowed before the outage", m)
			}
		}
	}

	kube.APIServer.Stop()
	kube.Etcd.Stop()
	stoppedAt := time.Now()
	var rounds, served, servedFresh, unavailable, expiredRefused, lost, wrongAllows int
	for time.Since(stoppedAt) < outage {
		rounds++
		for _, m := range modes {
			d := daemons[m]
			for _, tk := range used[m] {
				err := getSecret(t, d, tk.token)
				now := time.Now()
				switch {
				case err == nil && now.After(tk.exp.Add(skew)):
					wrongAllows++
					t.Errorf("%s: a token expired at %v was served at %v", m, tk.exp, now)
				case err == nil:
					served++
				case now.Before(tk.exp):
					lost++
					t.Errorf("%s: an identity verified before the outage, token valid until %v: %v", m, tk.exp, err)
				default:
					expiredRefused++
				}
			}
			err := getSecret(t, d, fresh[m].token)
			switch code := status.Code(err); {
			case err == nil && m == "jwt" && time.Now().Before(fresh[m].exp.Add(skew)):
				servedFresh++
			case err == nil:
				wrongAllows++
				t.Errorf("%s: a token never verified was allowed with the apiserver down", m)
			case code == codes.Unavailable:
				unavailable++
			case time.Now().After(fresh[m].exp):
				expiredRefused++
			default:
				t.Errorf("%s: a token never verified: %v, want Unavailable", m, err)
			}
			for _, tk := range refused {
				if err := getSecret(t, d, tk); err == nil {
					wrongAllows++
					t.Errorf("%s: a token that must be refused was allowed during the outage", m)
				}
			}
		}
		time.Sleep(time.Second)
	}
	t.Logf("apiserver and etcd down %v, %d pods, jwt and tokenreview daemons: %d rounds; cached identities served %d times, "+
		"%d lost; %d answers refused an expired token; tokens never verified: %d served offline (jwt), %d Unavailable; %d wrong allows",
		outage, pods, rounds, served, lost, expiredRefused, servedFresh, unavailable, wrongAllows)
	chaos.Report(t, chaos.Result{Campaign: fmt.Sprintf("apiserver+etcd down %v, %d pods (e2e)", outage, pods), Trials: 1, Faults: 1,
		Losses: lost, WrongAllows: wrongAllows,
		Notes: fmt.Sprintf("cached identities served %d times; %d expired refused; never-verified tokens: %d served offline (jwt), %d Unavailable (tokenreview)",
			served, expiredRefused, servedFresh, unavailable)})
}
