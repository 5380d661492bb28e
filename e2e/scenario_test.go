//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	corev1 "k8s.io/api/core/v1"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/client"
	"github.com/keywarden/keywarden/e2e/framework"
)

// The node-scale scenario: N pods on one node, each with a CSI volume of 10 secrets — 6 KV v2
// secrets shared by every pod, 3 KV v2 secrets of the pod's namespace, one database credential
// (share: ServiceAccount, so one lease per namespace and service account) — and a third of them
// with a gRPC watch stream, against the real apiserver, Vault and PostgreSQL.
// BenchmarkScenario_node measures it (make bench); TestScenario_node runs it small in the e2e
// suite and checks correctness only.
const (
	scenShared   = 6 // KV secrets every pod reads
	scenTeam     = 3 // KV secrets of the pod's namespace
	scenPerPod   = scenShared + scenTeam + 1
	scenWatched  = 3 // shared-0..2 are watched and rotated
	scenDirectKV = "scen/shared/s0"
)

var scenSAs = []string{"app", "web"}

type scenarioConfig struct {
	pods       int
	namespaces int
	poll       time.Duration // rotation.pollInterval, and the baseline's
	window     time.Duration // each audit-counted window
	rotations  int
	// bench adds the timed figures: the tmpfs floor, GetSecret against direct reads, the
	// per-pod baseline, profiles.
	bench      bool
	getFor     time.Duration // each GetSecret / direct-read phase
	profileDir string        // where the daemon's pprof profiles go ("" keeps none)
}

type scenPod struct {
	pod    *corev1.Pod
	ns     int
	sa     string
	target string
	tok    framework.Token // audience keywarden
	client *client.Client
	watch  *scenWatcher
}

// scenWatcher records when each value first arrived on one pod's watch stream.
type scenWatcher struct {
	mu sync.Mutex
	at map[string]time.Time // value → first delivery
}

func (w *scenWatcher) deliver(s *client.Secret) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	v := string(s.Data["value"])
	if _, ok := w.at[v]; !ok {
		w.at[v] = time.Now()
	}
	return nil
}

func (w *scenWatcher) seen(v string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	at, ok := w.at[v]
	return at, ok
}

type scenario struct {
	tb     testing.TB
	cfg    scenarioConfig
	e      *csiVaultEnv
	nss    []string
	pods   []*scenPod
	shared []string   // current value of shared-i
	team   [][]string // [namespace][i]
	names  string     // the volume's secrets attribute
	run    string     // random per run, in every value
	audits int
	// retries counts publishes kubelet would have retried (see addPods).
	retries int

	wctx    context.Context
	wstop   context.CancelFunc
	wg      sync.WaitGroup
	metrics map[string]float64 // figure → value, reported at the end
	order   []string
}

func (s *scenario) report(unit string, v float64) {
	if _, ok := s.metrics[unit]; !ok {
		s.order = append(s.order, unit)
	}
	s.metrics[unit] = v
	s.tb.Logf("figure %s = %.4g", unit, v)
}

func sharedValue(run string, i, ver int) string {
	return fmt.Sprintf("shared-%d-v%d-%s", i, ver, run)
}

func teamValue(run, ns string, i, ver int) string {
	return fmt.Sprintf("team-%s-%d-v%d-%s", ns, i, ver, run)
}

func startScenario(tb testing.TB, cfg scenarioConfig) *scenario {
	tb.Helper()
	e := startCSIVault(tb, csiVaultOptions{
		withPostgres: true, dbTTL: 30 * time.Minute, dbMaxTTL: time.Hour,
		pollInterval: cfg.poll, logLevel: "info", tokenTTL: time.Hour,
		extraConfig: "health: {pprof: true}\n",
	})
	s := &scenario{tb: tb, cfg: cfg, e: e, run: strings.ToLower(rand.Text()[:10]), metrics: map[string]float64{}}
	s.wctx, s.wstop = context.WithCancel(context.Background())
	tb.Cleanup(func() { s.wstop(); s.wg.Wait() })
	for range cfg.namespaces {
		s.nss = append(s.nss, e.kube.CreateNamespace(tb, "scen"))
	}
	var names []string
	for i := range scenShared {
		names = append(names, fmt.Sprintf("shared-%d", i))
		s.shared = append(s.shared, sharedValue(s.run, i, 1))
		e.putKV(tb, fmt.Sprintf("scen/shared/s%d", i), map[string]any{"value": s.shared[i]})
	}
	for i := range scenTeam {
		names = append(names, fmt.Sprintf("team-%d", i))
	}
	names = append(names, "db")
	s.names = strings.Join(names, ",")
	s.team = make([][]string, len(s.nss))
	for n, ns := range s.nss {
		for i := range scenTeam {
			s.team[n] = append(s.team[n], teamValue(s.run, ns, i, 1))
			e.putKV(tb, fmt.Sprintf("scen/team/%s/t%d", ns, i), map[string]any{"value": s.team[n][i]})
		}
	}
	writeFile(tb, e.grants, s.grants())
	return s
}

// grants: one grant for the shared secrets and the database credential (every namespace of the
// scenario), one per namespace for its own secrets under the same names.
func (s *scenario) grants() string {
	var b strings.Builder
	b.WriteString("apiVersion: keywarden.io/v1alpha1\nkind: AccessGrant\nmetadata: {name: scen-shared}\nspec:\n  subjects:\n")
	for _, ns := range s.nss {
		fmt.Fprintf(&b, "    - {namespace: %s, serviceAccount: \"*\"}\n", ns)
	}
	b.WriteString("  secrets:\n")
	for i := range scenShared {
		fmt.Fprintf(&b, "    - {name: shared-%d, source: {vault: {mount: secret, path: scen/shared/s%d}}}\n", i, i)
	}
	b.WriteString("    - {name: db, source: {vault: {mount: database, engine: database, role: app}}, share: ServiceAccount}\n")
	for n, ns := range s.nss {
		fmt.Fprintf(&b, "---\napiVersion: keywarden.io/v1alpha1\nkind: AccessGrant\nmetadata: {name: scen-team-%d}\nspec:\n  subjects: [{namespace: %s, serviceAccount: \"*\"}]\n  secrets:\n", n, ns)
		for i := range scenTeam {
			fmt.Fprintf(&b, "    - {name: team-%d, source: {vault: {mount: secret, path: scen/team/%s/t%d}}}\n", i, ns, i)
		}
	}
	return b.String()
}

// newPod creates pod i: namespace i mod namespaces, then the service accounts in turn.
func (s *scenario) newPod(i int) *scenPod {
	n := i % len(s.nss)
	sa := scenSAs[(i/len(s.nss))%len(scenSAs)]
	pod := s.e.kl.CreatePod(s.tb, s.nss[n], sa)
	return &scenPod{pod: pod, ns: n, sa: sa, target: s.e.kl.TargetPath(pod, "secrets"), tok: s.e.kl.PodToken(s.tb, pod, framework.DefaultAudience)}
}

// publish times one NodePublishVolume of p's volume through the CSI socket.
func (s *scenario) publish(ctx context.Context, p *scenPod) (time.Duration, error) {
	req := framework.PublishRequest{Pod: framework.PodInfoOf(p.pod), Tokens: map[string]framework.Token{framework.DefaultAudience: p.tok},
		Attributes: map[string]string{"secrets": s.names}, TargetPath: p.target, Driver: "keywarden.dev"}
	start := time.Now()
	_, err := s.e.kl.CSI().Publish(ctx, req)
	return time.Since(start), err
}

// addPods creates and publishes pods until there are n; a publish whose namespace and service
// account had no volume yet fetches from Vault (cold), the others find every secret cached
// (warm). The first publish waits for the grants file to be loaded.
func (s *scenario) addPods(n int) (cold, warm []time.Duration) {
	s.tb.Helper()
	seen := map[string]bool{}
	for _, p := range s.pods {
		seen[s.nss[p.ns]+"/"+p.sa] = true
	}
	for i := len(s.pods); i < n; i++ {
		p := s.newPod(i)
		c, cancel := context.WithTimeout(context.Background(), time.Minute)
		d, err := s.publish(c, p)
		// Kubelet retries a failed mount. The first publish waits for the grants file (re-read
		// every second); any publish can come before the daemon's pod informer has seen the
		// new pod ("pod is not running on this node"). Only the successful attempt is timed;
		// the retries are counted.
		for err != nil && c.Err() == nil && (len(s.pods) == 0 || status.Code(err) == codes.Unauthenticated) {
			s.retries++
			time.Sleep(200 * time.Millisecond)
			d, err = s.publish(c, p)
		}
		cancel()
		if err != nil {
			s.tb.Fatalf("publish pod %d: %v", i, err)
		}
		key := s.nss[p.ns] + "/" + p.sa
		if seen[key] {
			warm = append(warm, d)
		} else {
			cold = append(cold, d)
			seen[key] = true
		}
		s.pods = append(s.pods, p)
		if i%3 == 0 {
			s.startWatch(p)
		}
	}
	return cold, warm
}

func (s *scenario) clientOf(p *scenPod) *client.Client {
	if p.client == nil {
		c, err := client.New(filepath.Join(s.e.d.Dir, "kw.sock"), client.WithToken(p.tok.Token))
		if err != nil {
			s.tb.Fatal(err)
		}
		p.client = c
	}
	return p.client
}

// startWatch opens p's watch stream on the rotated shared secrets.
func (s *scenario) startWatch(p *scenPod) {
	c := s.clientOf(p)
	p.watch = &scenWatcher{at: map[string]time.Time{}}
	names := make([]string, scenWatched)
	for i := range names {
		names[i] = fmt.Sprintf("shared-%d", i)
	}
	s.wg.Go(func() { _ = c.Watch(s.wctx, names, p.watch.deliver) })
}

// checkFiles verifies every pod's files: the current shared values, its own namespace's
// values (never another's), and a database credential that is the same for every pod of one
// namespace and service account and differs between them. It returns the first problem.
func (s *scenario) checkFiles() error {
	users := map[string]string{}  // ns/sa → username
	owners := map[string]string{} // username → ns/sa
	for i, p := range s.pods {
		for k, want := range s.shared {
			if got := readFile(filepath.Join(p.target, fmt.Sprintf("shared-%d/value", k))); got != want {
				return fmt.Errorf("pod %d: shared-%d holds %q, want %q", i, k, got, want)
			}
		}
		for k := range scenTeam {
			got := readFile(filepath.Join(p.target, fmt.Sprintf("team-%d/value", k)))
			if got != s.team[p.ns][k] {
				for n := range s.nss {
					if n != p.ns && got == s.team[n][k] {
						return fmt.Errorf("pod %d of namespace %s holds team-%d of namespace %s", i, s.nss[p.ns], k, s.nss[n])
					}
				}
				return fmt.Errorf("pod %d: team-%d holds %q, want %q", i, k, got, s.team[p.ns][k])
			}
		}
		u, pw := readFile(filepath.Join(p.target, "db/username")), readFile(filepath.Join(p.target, "db/password"))
		if u == "" || pw == "" {
			return fmt.Errorf("pod %d: no database credential", i)
		}
		key := s.nss[p.ns] + "/" + p.sa
		if prev, ok := users[key]; ok && prev != u {
			return fmt.Errorf("pod %d: two database users for %s (share: ServiceAccount)", i, key)
		}
		if o, ok := owners[u]; ok && o != key {
			return fmt.Errorf("pod %d: the database user of %s was also given to %s", i, o, key)
		}
		users[key], owners[u] = u, key
	}
	return nil
}

// auditCount is one window of Vault's own audit log: request entries by who made them.
type auditCount struct {
	elapsed time.Duration
	daemon  int // the daemon's Vault token (kubernetes auth role keywarden)
	// daemonSame counts the daemon's requests for the secrets pod 0 reads (the shared ones and
	// its namespace's), so that a window with N pods compares with one with pod 0 alone.
	daemonSame int
	baseline   int // the per-pod baseline's tokens (role perpod)
	other      int // logins and anything else without the harness's root token
	byPath     map[string]int
}

func perMin(n int, d time.Duration) float64 { return float64(n) / d.Minutes() }

// auditWindow enables a file audit device for d (an audit device costs Vault time, so it is
// on only while counting) and counts its request entries.
func (s *scenario) auditWindow(d time.Duration) auditCount {
	s.tb.Helper()
	s.audits++
	name := fmt.Sprintf("scen%d", s.audits)
	file := filepath.Join(s.tb.TempDir(), name+".log")
	sys := s.e.vault.Client.Sys()
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sys.EnableAuditWithOptionsWithContext(c, name, &vaultapi.EnableAuditOptions{Type: "file", Options: map[string]string{"file_path": file}}); err != nil {
		s.tb.Fatalf("enable audit: %v", err)
	}
	start := time.Now()
	time.Sleep(d)
	c, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sys.DisableAuditWithContext(c, name); err != nil {
		s.tb.Fatalf("disable audit: %v", err)
	}
	ac := auditCount{elapsed: time.Since(start), byPath: map[string]int{}}
	f, err := os.Open(file)
	if err != nil {
		s.tb.Fatal(err)
	}
	defer f.Close()
	ownTeam := "scen/team/" + s.nss[0] + "/"
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 4<<20)
	for sc.Scan() {
		var en struct {
			Type string `json:"type"`
			Auth struct {
				Policies []string          `json:"policies"`
				Metadata map[string]string `json:"metadata"`
			} `json:"auth"`
			Request struct {
				Path string `json:"path"`
			} `json:"request"`
		}
		if json.Unmarshal(sc.Bytes(), &en) != nil || en.Type != "request" || slices.Contains(en.Auth.Policies, "root") {
			continue
		}
		path := en.Request.Path
		switch en.Auth.Metadata["role"] {
		case "keywarden":
			ac.daemon++
			if !strings.Contains(path, "scen/team/") || strings.Contains(path, ownTeam) {
				ac.daemonSame++
			}
			ac.byPath[scenPathClass(path)]++
		case "perpod":
			ac.baseline++
		default:
			ac.other++
		}
	}
	if err := sc.Err(); err != nil {
		s.tb.Fatalf("read audit log: %v", err)
	}
	return ac
}

// scenPathClass folds a Vault path into a class for the log (no namespace names).
func scenPathClass(p string) string {
	switch {
	case strings.HasPrefix(p, "secret/metadata/"):
		return "kv-metadata"
	case strings.HasPrefix(p, "secret/data/"):
		return "kv-data"
	case strings.HasPrefix(p, "database/creds/"):
		return "db-creds"
	case strings.HasPrefix(p, "sys/leases/"):
		return p
	default:
		return p
	}
}

// metric reads one unlabelled sample from the daemon's /metrics.
func scenMetric(tb testing.TB, d *framework.Daemon, name string) float64 {
	tb.Helper()
	resp, err := http.Get("http://" + d.HealthAddr + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				tb.Fatalf("metric %s: %v", name, err)
			}
			return v
		}
	}
	tb.Fatalf("metric %s missing", name)
	return 0
}

// profile fetches a pprof profile of the daemon into the profile directory, in the
// background; wait for it with the returned function.
func (s *scenario) profile(name, query string) (wait func()) {
	if s.cfg.profileDir == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.Get("http://" + s.e.d.HealthAddr + "/debug/pprof/" + query)
		if err != nil {
			s.tb.Errorf("profile %s: %v", name, err)
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			s.tb.Errorf("profile %s: %s %v", name, resp.Status, err)
			return
		}
		if err := os.WriteFile(filepath.Join(s.cfg.profileDir, "scenario-"+name+".pprof"), b, 0o644); err != nil {
			s.tb.Errorf("profile %s: %v", name, err)
		}
	}()
	return func() { <-done }
}

// pct is the p-th percentile of samples (sorted in place).
func pct(samples []time.Duration, p int) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	slices.Sort(samples)
	return samples[min(len(samples)-1, len(samples)*p/100)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// rotate writes a new value of shared-k and waits until every volume's file and every watch
// stream has it; it returns each one's delay after the write returned.
func (s *scenario) rotate(k, ver int) []time.Duration {
	s.tb.Helper()
	v := sharedValue(s.run, k, ver)
	s.e.putKV(s.tb, fmt.Sprintf("scen/shared/s%d", k), map[string]any{"value": v})
	written := time.Now()
	s.shared[k] = v
	file := fmt.Sprintf("shared-%d/value", k)
	pendingFiles := slices.Clone(s.pods)
	var pendingStreams []*scenPod
	for _, p := range s.pods {
		if p.watch != nil && k < scenWatched {
			pendingStreams = append(pendingStreams, p)
		}
	}
	var delays []time.Duration
	deadline := written.Add(3*s.cfg.poll + time.Minute) // a ceiling that ends a hung run, not a target
	for len(pendingFiles)+len(pendingStreams) > 0 {
		if time.Now().After(deadline) {
			s.tb.Fatalf("rotation of shared-%d: %d files and %d streams still old after %v", k, len(pendingFiles), len(pendingStreams), time.Since(written))
		}
		now := time.Now()
		pendingFiles = slices.DeleteFunc(pendingFiles, func(p *scenPod) bool {
			if readFile(filepath.Join(p.target, file)) == v {
				delays = append(delays, now.Sub(written))
				return true
			}
			return false
		})
		pendingStreams = slices.DeleteFunc(pendingStreams, func(p *scenPod) bool {
			if at, ok := p.watch.seen(v); ok {
				delays = append(delays, at.Sub(written))
				return true
			}
			return false
		})
		time.Sleep(20 * time.Millisecond)
	}
	return delays
}

// floor times a plain tmpfs mount and a write of the same files as a volume (10 directories of
// one file each, the values' sizes), in the same harness: the physical floor of a publish.
func (s *scenario) floor(n int) []time.Duration {
	s.tb.Helper()
	dir := filepath.Join(s.e.kubeletRoot, "floor")
	files := map[string][]byte{}
	for k, v := range s.shared {
		files[fmt.Sprintf("shared-%d/value", k)] = []byte(v)
	}
	for k, v := range s.team[0] {
		files[fmt.Sprintf("team-%d/value", k)] = []byte(v)
	}
	files["db/username"] = []byte("v-kubernetes-app-xxxxxxxxxxxxxxxxxxxx-1700000000")
	files["db/password"] = []byte("xxxxxxxxxxxxxxxxxxxx")
	var out []time.Duration
	for i := range n {
		target := filepath.Join(dir, strconv.Itoa(i))
		if err := os.MkdirAll(target, 0o750); err != nil {
			s.tb.Fatal(err)
		}
		start := time.Now()
		if err := syscall.Mount("tmpfs", target, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, "size=1m,mode=0750"); err != nil {
			s.tb.Fatalf("tmpfs mount (the scenario runs as root): %v", err)
		}
		for name, b := range files {
			if err := os.MkdirAll(filepath.Join(target, filepath.Dir(name)), 0o750); err != nil {
				s.tb.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(target, name), b, 0o440); err != nil {
				s.tb.Fatal(err)
			}
		}
		out = append(out, time.Since(start))
		if err := syscall.Unmount(target, 0); err != nil {
			s.tb.Fatal(err)
		}
	}
	return out
}

// getSecrets runs callers goroutines, each calling get in a loop for d, and returns every
// call's latency.
func getSecrets(tb testing.TB, callers int, d time.Duration, get func(i int) error) []time.Duration {
	var mu sync.Mutex
	var all []time.Duration
	var wg sync.WaitGroup
	var failed error
	end := time.Now().Add(d)
	for i := range callers {
		wg.Go(func() {
			var mine []time.Duration
			for time.Now().Before(end) {
				start := time.Now()
				if err := get(i); err != nil {
					mu.Lock()
					failed = err
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(start))
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if failed != nil {
		tb.Fatalf("a read failed: %v", failed)
	}
	return all
}

// teardown removes every pod like kubelet does (watch streams end, volumes unpublished, pods
// deleted) and checks nothing is left: no volume, record, mount or stream, goroutines back
// near the count before the first pod, and no database lease in Vault but the daemon's own,
// at most one per namespace and service account.
func (s *scenario) teardown(goroutinesBefore float64) {
	s.tb.Helper()
	s.wstop()
	s.wg.Wait()
	for _, p := range s.pods {
		if p.client != nil {
			_ = p.client.Close()
		}
		c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := s.e.kl.Unpublish(c, p.pod, "secrets"); err != nil {
			s.tb.Errorf("unpublish: %v", err)
		}
		cancel()
		s.e.kl.DeletePod(s.tb, p.pod)
	}
	d := s.e.d
	ids := map[string]bool{}
	for _, p := range s.pods {
		ids[s.nss[p.ns]+"/"+p.sa] = true
	}
	identities := len(ids)
	deadline := time.Now().Add(2*time.Minute + 3*s.cfg.poll)
	var volumes, streams, leases, goroutines float64
	var vaultLeases, mounts int
	for {
		volumes = scenMetric(s.tb, d, "keywarden_csi_volumes")
		streams = scenMetric(s.tb, d, "keywarden_grpc_watch_streams")
		leases = scenMetric(s.tb, d, "keywarden_vault_leases")
		goroutines = scenMetric(s.tb, d, "go_goroutines")
		vaultLeases = s.vaultLeases()
		mounts = mountsUnder(filepath.Join(s.e.kubeletRoot, "pods"))
		// A database lease is not revoked when its last consumer goes: the daemon keeps it,
		// unrenewed, until its TTL ends (one per namespace and service account, never one
		// per pod); every lease in Vault must be one of those.
		if volumes == 0 && streams == 0 && leases <= float64(identities) && float64(vaultLeases) == leases && mounts == 0 && goroutines <= goroutinesBefore+20 {
			break
		}
		if time.Now().After(deadline) {
			s.tb.Errorf("after every pod went: %v volumes, %v watch streams, %v daemon leases (at most %d), %d leases in Vault, %d mounts, %v goroutines (%v before the first pod)",
				volumes, streams, leases, identities, vaultLeases, mounts, goroutines, goroutinesBefore)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	records, err := os.ReadDir(filepath.Join(s.e.kubeletRoot, "pods"))
	if err == nil {
		for _, r := range records {
			if entries, _ := os.ReadDir(filepath.Join(s.e.kubeletRoot, "pods", r.Name(), "volumes", "kubernetes.io~csi", "secrets", "mount")); len(entries) > 0 {
				s.tb.Errorf("pod %s: its target path still holds %d entries", r.Name(), len(entries))
			}
		}
	}
	s.tb.Logf("after every pod went: 0 volumes, 0 streams, 0 mounts, %v goroutines (%v before the first pod); %v database leases left to expire, all held by the daemon (%d in Vault; %d namespace/service-account pairs)",
		goroutines, goroutinesBefore, leases, vaultLeases, identities)
}

// vaultLeases counts the database leases Vault holds (every one, the baseline's included).
func (s *scenario) vaultLeases() int {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sec, err := s.e.vault.Client.Logical().ListWithContext(c, "sys/leases/lookup/database/creds/app/")
	if err != nil {
		s.tb.Fatalf("list leases: %v", err)
	}
	if sec == nil || sec.Data == nil {
		return 0
	}
	keys, _ := sec.Data["keys"].([]any)
	return len(keys)
}

func mountsUnder(dir string) int {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return -1
	}
	n := 0
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			n++
		}
	}
	return n
}

// perPodBaseline runs e2e/perpod: every pod logs in to Vault with its own projected token and
// reads its own secrets, polling at the same interval.
type perPodBaseline struct {
	cmd    *exec.Cmd
	out    *bufio.Scanner
	stderr strings.Builder
}

type perPodReport struct {
	Pods                                             int
	Logins, Reads, Renewals, Errors, Leases, Revoked int64
	ReadP50us, ReadP99us                             float64
	FirstError                                       string
}

const perPodPolicy = `
path "secret/data/scen/*"  { capabilities = ["read"] }
path "database/creds/app"  { capabilities = ["read"] }
path "sys/leases/renew"    { capabilities = ["update"] }
path "sys/leases/revoke"   { capabilities = ["update"] }
`

func (s *scenario) startPerPod() *perPodBaseline {
	s.tb.Helper()
	v := s.e.vault
	v.PutPolicy(s.tb, "perpod", perPodPolicy)
	v.Write(s.tb, "auth/kubernetes/role/perpod", map[string]any{
		"bound_service_account_names": scenSAs, "bound_service_account_namespaces": s.nss,
		"token_policies": []string{"perpod"}, "token_ttl": 3600, "audience": "vault",
	})
	type pod struct {
		JWT     string   `json:"jwt"`
		KV      []string `json:"kv"`
		Dynamic []string `json:"dynamic"`
	}
	cfg := struct {
		VaultAddr string `json:"vaultAddr"`
		AuthPath  string `json:"authPath"`
		Role      string `json:"role"`
		Interval  string `json:"interval"`
		Pods      []pod  `json:"pods"`
	}{VaultAddr: v.Addr, AuthPath: "kubernetes", Role: "perpod", Interval: s.cfg.poll.String()}
	for _, p := range s.pods {
		var kv []string
		for i := range scenShared {
			kv = append(kv, fmt.Sprintf("secret/data/scen/shared/s%d", i))
		}
		for i := range scenTeam {
			kv = append(kv, fmt.Sprintf("secret/data/scen/team/%s/t%d", s.nss[p.ns], i))
		}
		tok := s.e.kl.PodToken(s.tb, p.pod, "vault")
		remember(tok.Token)
		cfg.Pods = append(cfg.Pods, pod{JWT: tok.Token, KV: kv, Dynamic: []string{"database/creds/app"}})
	}
	in, err := json.Marshal(cfg)
	if err != nil {
		s.tb.Fatal(err)
	}
	b := &perPodBaseline{cmd: exec.Command(framework.BuildBinary(s.tb, "./e2e/perpod", "keywarden-perpod"))}
	b.cmd.Stdin = strings.NewReader(string(in))
	b.cmd.Stderr = &b.stderr
	out, err := b.cmd.StdoutPipe()
	if err != nil {
		s.tb.Fatal(err)
	}
	if err := b.cmd.Start(); err != nil {
		s.tb.Fatal(err)
	}
	s.tb.Cleanup(func() {
		if b.cmd.ProcessState == nil {
			_ = b.cmd.Process.Kill()
			_ = b.cmd.Wait()
		}
	})
	b.out = bufio.NewScanner(out)
	b.out.Buffer(make([]byte, 1<<16), 1<<20)
	if !b.out.Scan() || !strings.Contains(b.out.Text(), `"ready":true`) {
		_ = b.cmd.Wait()
		s.tb.Fatalf("per-pod baseline did not start: %s", b.stderr.String())
	}
	return b
}

func (b *perPodBaseline) stop(tb testing.TB) perPodReport {
	tb.Helper()
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	var r perPodReport
	if !b.out.Scan() || json.Unmarshal(b.out.Bytes(), &r) != nil {
		_ = b.cmd.Wait()
		tb.Fatalf("per-pod baseline report missing: %s", b.stderr.String())
	}
	if err := b.cmd.Wait(); err != nil {
		tb.Fatalf("per-pod baseline: %v: %s", err, b.stderr.String())
	}
	return r
}

// runScenario plays the whole scenario; in bench mode it reports every figure.
func runScenario(tb testing.TB, cfg scenarioConfig) *scenario {
	s := startScenario(tb, cfg)
	d := s.e.d
	goroutinesBefore := scenMetric(tb, d, "go_goroutines")

	if cfg.bench {
		fl := s.floor(cfg.pods)
		s.report("floor-p50-ms", ms(pct(fl, 50)))
		s.report("floor-p99-ms", ms(pct(fl, 99)))
	}

	// One pod alone: the Vault requests it causes in steady state.
	cold, warm := s.addPods(1)
	time.Sleep(cfg.poll) // past the first poll
	one := s.auditWindow(cfg.window)
	tb.Logf("1 pod: %d daemon requests to Vault in %v (%v), %d others", one.daemon, one.elapsed.Round(time.Millisecond), one.byPath, one.other)

	// Every pod: publishes (cold and warm), then steady state.
	wait := s.profile("cpu-publish", fmt.Sprintf("profile?seconds=%d", max(5, min(30, cfg.pods/10))))
	c2, w2 := s.addPods(cfg.pods)
	wait()
	cold, warm = append(cold, c2...), append(warm, w2...)
	if err := s.checkFiles(); err != nil {
		tb.Fatal(err)
	}
	time.Sleep(cfg.poll)
	all := s.auditWindow(cfg.window)
	tb.Logf("%d pods: %d daemon requests to Vault in %v (%d for pod 0's secrets; %v), %d others", cfg.pods, all.daemon, all.elapsed.Round(time.Millisecond), all.daemonSame, all.byPath, all.other)
	rss := float64(rssBytes(tb, d.Process.Pid())) / (1 << 20)
	goroutines := scenMetric(tb, d, "go_goroutines")
	// Where the RSS goes: anonymous memory (Go heap, stacks, runtime) against file pages
	// (the bbolt files' mappings, the binary), and what the Go runtime says it holds.
	anon, file := rssParts(tb, d.Process.Pid())
	heapInuse := scenMetric(tb, d, "go_memstats_heap_inuse_bytes") / (1 << 20)
	heapIdle := scenMetric(tb, d, "go_memstats_heap_idle_bytes") / (1 << 20)
	heapReleased := scenMetric(tb, d, "go_memstats_heap_released_bytes") / (1 << 20)
	stacks := scenMetric(tb, d, "go_memstats_stack_inuse_bytes") / (1 << 20)
	goSys := scenMetric(tb, d, "go_memstats_sys_bytes") / (1 << 20)
	tb.Logf("RSS %.1f MiB: anonymous %.1f, file-backed %.1f; Go heap in use %.1f, idle %.1f (released to the OS %.1f), stacks %.1f, runtime total %.1f MiB",
		rss, anon, file, heapInuse, heapIdle, heapReleased, stacks, goSys)
	streams := scenMetric(tb, d, "keywarden_grpc_watch_streams")
	if want := float64((cfg.pods + 2) / 3); streams != want {
		tb.Errorf("%v watch streams open, want %v", streams, want)
	}
	s.profile("heap", "heap")()
	s.profile("allocs", "allocs")()

	onePerMin, samePerMin := perMin(one.daemon, one.elapsed), perMin(all.daemonSame, all.elapsed)
	if !cfg.bench {
		// Flat in pods: pod 0's secrets cost Vault the same with every pod on the node. A
		// window can catch one poll more or less of each secret (9 requests), hence the slack.
		if float64(all.daemonSame) > 1.5*float64(one.daemon)*float64(all.elapsed)/float64(one.elapsed)+scenShared+scenTeam {
			tb.Errorf("Vault requests for pod 0's secrets: %d with %d pods vs %d with 1 pod (same window): not flat in pods", all.daemonSame, cfg.pods, one.daemon)
		}
	}

	// Warm GetSecret (16 callers) and the direct vault/api read, one after the other.
	if cfg.bench {
		callers := min(16, len(s.pods))
		clients := make([]*client.Client, callers)
		for i := range callers {
			clients[i] = s.clientOf(s.pods[i])
		}
		gctx, cancel := context.WithTimeout(context.Background(), cfg.getFor+time.Minute)
		defer cancel()
		for _, c := range clients {
			if _, err := c.Get(gctx, "shared-0"); err != nil {
				tb.Fatal(err)
			}
		}
		wait := s.profile("cpu-getsecret", fmt.Sprintf("profile?seconds=%d", int(cfg.getFor/time.Second)))
		gs := getSecrets(tb, 16, cfg.getFor, func(i int) error { _, err := clients[i%callers].Get(gctx, "shared-0"); return err })
		wait()
		kv := s.e.vault.Client.KVv2("secret")
		if _, err := kv.Get(gctx, scenDirectKV); err != nil {
			tb.Fatal(err)
		}
		dr := getSecrets(tb, 16, cfg.getFor, func(int) error { _, err := kv.Get(gctx, scenDirectKV); return err })
		s.report("getsecret-p50-µs", us(pct(gs, 50)))
		s.report("getsecret-p99-µs", us(pct(gs, 99)))
		s.report("getsecret-reads/s", float64(len(gs))/cfg.getFor.Seconds())
		s.report("vaultkv-p50-µs", us(pct(dr, 50)))
		s.report("vaultkv-p99-µs", us(pct(dr, 99)))
		s.report("vaultkv-reads/s", float64(len(dr))/cfg.getFor.Seconds())
	}

	// Rotation: a KV write reaches every file and every watch stream.
	var rot []time.Duration
	for r := range cfg.rotations {
		rot = append(rot, s.rotate(r%scenWatched, 2+r/scenWatched)...)
	}
	if err := s.checkFiles(); err != nil {
		tb.Fatal(err)
	}

	// The per-pod baseline, counted by the same audit device.
	if cfg.bench {
		b := s.startPerPod()
		time.Sleep(cfg.poll) // every pod past its first poll (start times spread over one interval)
		base := s.auditWindow(cfg.window)
		baseRSS := float64(rssBytes(tb, b.cmd.Process.Pid)) / (1 << 20)
		r := b.stop(tb)
		tb.Logf("per-pod baseline: %+v; %d requests in %v", r, base.baseline, base.elapsed.Round(time.Millisecond))
		if r.Errors > 0 || r.Revoked != r.Leases {
			tb.Errorf("per-pod baseline: %d errors (first: %s), %d of %d leases revoked", r.Errors, r.FirstError, r.Revoked, r.Leases)
		}
		s.report("baseline-vault-req/min", perMin(base.baseline, base.elapsed))
		s.report("baseline-rss-MiB", baseRSS)
		s.report("baseline-read-p50-µs", r.ReadP50us)
		s.report("baseline-read-p99-µs", r.ReadP99us)
	}

	// Restart with every volume: kill -9, start again, time until /readyz.
	d.Process.Kill()
	start := time.Now()
	d.Restart(tb)
	restart := time.Since(start)
	if err := s.checkFiles(); err != nil {
		tb.Fatalf("after the restart: %v", err)
	}
	if v := scenMetric(tb, d, "keywarden_csi_volumes"); v != float64(len(s.pods)) {
		tb.Errorf("after the restart the daemon manages %v volumes, want %d", v, len(s.pods))
	}

	if cfg.bench {
		s.report("pods", float64(cfg.pods))
		s.report("secrets/pod", scenPerPod)
		s.report("publish-cold-p50-ms", ms(pct(cold, 50)))
		s.report("publish-cold-p99-ms", ms(pct(cold, 99)))
		s.report("publish-warm-p50-ms", ms(pct(warm, 50)))
		s.report("publish-warm-p99-ms", ms(pct(warm, 99)))
		s.report("rotation-p50-ms", ms(pct(rot, 50)))
		s.report("rotation-p99-ms", ms(pct(rot, 99)))
		s.report("rotation-max-ms", ms(pct(rot, 100)))
		s.report("poll-s", cfg.poll.Seconds())
		s.report("vault-req/min-1pod", onePerMin)
		s.report("vault-req/min-samesecrets", samePerMin)
		s.report("vault-req/min", perMin(all.daemon, all.elapsed))
		s.report("rss-MiB", rss)
		s.report("rss-anon-MiB", anon)
		s.report("rss-file-MiB", file)
		s.report("heap-inuse-MiB", heapInuse)
		s.report("goroutines", goroutines)
		s.report("restart-ms", ms(restart))
		s.report("publish-retries", float64(s.retries))
	}
	tb.Logf("%d pods: publish cold p50 %v p99 %v (%d), warm p50 %v p99 %v (%d); rotation p50 %v p99 %v max %v (%d deliveries, poll %v); "+
		"Vault req/min: 1 pod %.1f, %d pods %.1f for the same secrets (%.1f in all); RSS %.1f MiB, %v goroutines; restart %v",
		cfg.pods, pct(cold, 50), pct(cold, 99), len(cold), pct(warm, 50), pct(warm, 99), len(warm), pct(rot, 50), pct(rot, 99), pct(rot, 100), len(rot), cfg.poll,
		onePerMin, cfg.pods, samePerMin, perMin(all.daemon, all.elapsed), rss, goroutines, restart.Round(time.Millisecond))

	s.teardown(goroutinesBefore)
	return s
}

// TestScenario_node is the CI-sized scenario (25 pods, 5 namespaces, a 2 s poll): every pod
// gets the right files and none another namespace's or service account's values, the Vault
// requests for one pod's secrets (counted by Vault's audit device) are flat from 1 to 25 pods,
// a rotation reaches every file and stream, a kill -9 restart keeps every volume, and nothing
// is left after all pods go. No timing is asserted.
func TestScenario_node(t *testing.T) {
	runScenario(t, scenarioConfig{pods: 25, namespaces: 5, poll: 2 * time.Second, window: 10 * time.Second, rotations: 1})
}

// BenchmarkScenario_node is the node-scale scenario with every figure (b.ReportMetric), run
// once per invocation: `make bench`, or
//
//	KEYWARDEN_SCENARIO_PODS=250 go test -tags e2e -run '^$' -bench BenchmarkScenario_node -benchtime 1x ./e2e/
//
// KEYWARDEN_SCENARIO_PODS (default 250) sets the pods, 25 per namespace;
// KEYWARDEN_SCENARIO_POLL (default 10s) the poll interval of the daemon and the baseline;
// KEYWARDEN_SCENARIO_WINDOW (default the longer of 1m and 3 polls) each audit-counted window;
// KEYWARDEN_SCENARIO_PROFILES a directory for the daemon's CPU and allocation profiles.
// `go run ./internal/benchtable` turns the output into one table.
func BenchmarkScenario_node(b *testing.B) {
	pods := 250
	if v := os.Getenv("KEYWARDEN_SCENARIO_PODS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			b.Fatalf("KEYWARDEN_SCENARIO_PODS=%q: want 1 to 1000", v)
		}
		pods = n
	}
	poll := 10 * time.Second
	if v := os.Getenv("KEYWARDEN_SCENARIO_POLL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second {
			b.Fatalf("KEYWARDEN_SCENARIO_POLL=%q: want a duration of at least 1s", v)
		}
		poll = d
	}
	window := max(time.Minute, 3*poll)
	if v := os.Getenv("KEYWARDEN_SCENARIO_WINDOW"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < poll {
			b.Fatalf("KEYWARDEN_SCENARIO_WINDOW=%q: want a duration of at least the poll interval", v)
		}
		window = d
	}
	dir := os.Getenv("KEYWARDEN_SCENARIO_PROFILES")
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	for range b.N {
		s := runScenario(b, scenarioConfig{pods: pods, namespaces: max(1, min(64, (pods+24)/25)), poll: poll, window: window,
			rotations: 3, bench: true, getFor: 10 * time.Second, profileDir: dir})
		b.StopTimer()
		for _, unit := range s.order {
			b.ReportMetric(s.metrics[unit], unit)
		}
	}
	b.ReportMetric(0, "ns/op") // one run of many phases: the figures are the result
}

// rssParts is the process's resident memory split into anonymous and file-backed pages, in MiB.
func rssParts(tb testing.TB, pid int) (anon, file float64) {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatalf("read the daemon's memory: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		for prefix, dst := range map[string]*float64{"RssAnon:": &anon, "RssFile:": &file} {
			if rest, ok := strings.CutPrefix(line, prefix); ok {
				kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
				if err != nil {
					tb.Fatalf("%s %q: %v", prefix, rest, err)
				}
				*dst = kb / 1024
			}
		}
	}
	return anon, file
}
