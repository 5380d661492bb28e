//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keywarden/keywarden/client"
	"github.com/keywarden/keywarden/e2e/framework"
)

// csiVaultEnv is the production shape of a node: a daemon with the CSI driver (tmpfs volumes
// when the tests run as root), Kubernetes identity (OIDC discovery + node binding), Vault as
// the source (Kubernetes auth with the daemon's own token, no static credential) and,
// optionally, PostgreSQL behind Vault's database engine.
type csiVaultEnv struct {
	kube        *framework.Kube
	vault       *framework.Vault
	pg          *framework.Postgres
	kl          *framework.Kubelet
	d           *framework.Daemon
	ns          string
	node        string
	kubeletRoot string
	csiSock     string
	grants      string
}

type csiVaultOptions struct {
	withPostgres    bool
	dbTTL, dbMaxTTL time.Duration
	pollInterval    time.Duration // KV metadata polls; default 1s
	maxStale        time.Duration // rotation.maxStale; default the daemon's (24h)
	requestTimeout  time.Duration // vault.limits.requestTimeout; default the daemon's (10s)
	logLevel        string        // default debug
	tokenTTL        time.Duration // of pod tokens; default the framework's (10m, the minimum)
	orphanGrace     time.Duration // vault.leases.orphanGrace; default the daemon's (5m)
	// extraGrants returns more grant documents (each starting with "---") for namespace ns,
	// appended to the grants file.
	extraGrants func(ns string) string
	// vaultAddress, when set, maps the real Vault's address to the one the daemon is given
	// (a proxy in front of it).
	vaultAddress func(t testing.TB, real string) string
	// extraConfig is appended to the daemon's configuration (top-level keys the default
	// configuration does not set, e.g. "health: {pprof: true}").
	extraConfig string
}

// csiVaultGrant lets namespace ns / service account app read secret/app/api (KV v2) as "api"
// and a database credential as "db".
func csiVaultGrant(ns string) string {
	return fmt.Sprintf(`apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: app-vault}
spec:
  subjects: [{namespace: %s, serviceAccount: app}]
  secrets:
    - name: api
      source: {vault: {mount: secret, path: app/api}}
    - name: db
      source: {vault: {mount: database, engine: database, role: app}}
`, ns)
}

func startCSIVault(t testing.TB, o csiVaultOptions) *csiVaultEnv {
	t.Helper()
	e := &csiVaultEnv{kube: framework.StartKube(t, framework.KubeOptions{}), vault: framework.StartVault(t), node: "e2e-csi-vault-node"}
	if o.withPostgres {
		e.pg = framework.StartPostgres(t)
		e.vault.EnableDatabase(t, e.pg, framework.DatabaseOptions{DefaultTTL: o.dbTTL, MaxTTL: o.dbMaxTTL})
	}
	createPodReaderRoleTB(t, e.kube)
	e.vault.PutPolicy(t, "keywarden", daemonPolicy)
	e.vault.EnableKubernetesAuth(t, e.kube, framework.KubernetesAuthOptions{
		Role: "keywarden", ServiceAccounts: []string{"keywarden"}, Namespaces: []string{"keywarden-system"},
		Audience: "vault", Policies: []string{"keywarden"},
	})
	e.ns = e.kube.CreateNamespace(t, "csivault")
	e.kubeletRoot = filepath.Join(t.TempDir(), "kubelet")
	sockDir, err := os.MkdirTemp("", "kw-csiv-") // short: holds a Unix socket
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	e.csiSock = filepath.Join(sockDir, "csi.sock")
	e.grants = filepath.Join(t.TempDir(), "grants.yaml")
	extra := ""
	if o.extraGrants != nil {
		extra = o.extraGrants(e.ns)
	}
	writeFile(t, e.grants, csiVaultGrant(e.ns)+extra)
	e.kl = framework.NewKubelet(t, e.kube, framework.KubeletOptions{NodeName: e.node, Socket: e.csiSock, PodsDir: filepath.Join(e.kubeletRoot, "pods"), TokenTTL: o.tokenTTL})
	if o.pollInterval == 0 {
		o.pollInterval = time.Second
	}
	rotation := fmt.Sprintf("pollInterval: %s", o.pollInterval)
	if o.maxStale > 0 {
		rotation += fmt.Sprintf(", maxStale: %s", o.maxStale)
	}
	limits := ""
	if o.requestTimeout > 0 {
		limits = fmt.Sprintf("\n  limits: {requestTimeout: %s}", o.requestTimeout)
	}
	leases := "grace: 500ms"
	if o.orphanGrace > 0 {
		leases += ", orphanGrace: " + o.orphanGrace.String()
	}
	vaultAddr := e.vault.Addr
	if o.vaultAddress != nil {
		vaultAddr = o.vaultAddress(t, vaultAddr)
	}
	cfg := fmt.Sprintf(`dataDir: {{.Dir}}/data
socket: {path: {{.Dir}}/kw.sock}
adminSocket: {path: {{.Dir}}/admin.sock}
nodeName: %s
kubernetes: {kubeconfig: {{.KubeconfigFile}}}
identity:
  issuer: {{.Issuer}}
  discoveryURL: {{.Issuer}}
  caFile: {{.CAFile}}
grants: {file: %s, reloadInterval: 1s}
rotation: {%s}
vault:
  address: %s
  auth: {method: kubernetes, role: keywarden, tokenFile: {{.TokenFile}}}
  leases: {%s}%s
csi: {socket: %s, kubeletRoot: %s, tmpfsSize: 1Mi}
log: {level: %s}
`, e.node, e.grants, rotation, vaultAddr, leases, limits, e.csiSock, e.kubeletRoot, or(o.logLevel, "debug")) + o.extraConfig
	// Runs after the daemon stopped: whatever a failed test left mounted is detached so the
	// temp dirs can go.
	t.Cleanup(func() { unmountUnder(t, e.kubeletRoot) })
	e.d = framework.StartDaemon(t, framework.DaemonOptions{Kube: e.kube, Config: cfg, ClusterRoles: []string{"system:auth-delegator", nodeReaderRole}})
	t.Cleanup(func() { e.assertNoSecretsInLogs(t) })
	return e
}

// createPodReaderRoleTB is createPodReaderRole for benchmarks too.
func createPodReaderRoleTB(t testing.TB, kube *framework.Kube) {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := kube.Client.RbacV1().ClusterRoles().Create(c, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: nodeReaderRole},
		Rules:      nodeReaderRules,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func (e *csiVaultEnv) assertNoSecretsInLogs(t testing.TB) {
	logs := e.d.Logs()
	secretsSeen.Range(func(k, _ any) bool {
		if strings.Contains(logs, k.(string)) {
			t.Errorf("daemon log contains a secret or token (%d bytes long)", len(k.(string)))
		}
		return true
	})
	if strings.Contains(logs, "hvs.") {
		t.Error("daemon log contains a Vault token")
	}
}

func (e *csiVaultEnv) putKV(t testing.TB, path string, data map[string]any) {
	t.Helper()
	for _, v := range data {
		if s, ok := v.(string); ok {
			remember(s)
		}
	}
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.vault.Client.KVv2("secret").Put(c, path, data); err != nil {
		t.Fatalf("kv put %s: %v", path, err)
	}
}

// publishPods creates n pods on the node and publishes a volume with attrs for each.
func (e *csiVaultEnv) publishPods(t *testing.T, n int, attrs map[string]string) ([]*corev1.Pod, []string) {
	t.Helper()
	var pods []*corev1.Pod
	var targets []string
	for range n {
		pod := e.kl.CreatePod(t, e.ns, "app")
		_, target, err := e.kl.PublishRetrying(ctx(t), pod, "secrets", attrs)
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		pods, targets = append(pods, pod), append(targets, target)
		t.Cleanup(func() { _ = e.kl.Unpublish(context.Background(), pod, "secrets") }) // like kubelet on pod deletion
	}
	return pods, targets
}

// unmountUnder lazily unmounts every mount below dir, deepest first (the API socket's bind
// mount before its volume's tmpfs).
func unmountUnder(t testing.TB, dir string) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mounts []string
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mounts = append(mounts, f[4])
		}
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		if err := syscall.Unmount(mounts[i], syscall.MNT_DETACH); err != nil {
			t.Logf("unmount %s: %v", mounts[i], err)
		}
	}
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(b)
}

// waitChanged polls path until it holds a non-empty value other than old, and returns it.
func waitChanged(t *testing.T, path, old string, bound time.Duration) string {
	t.Helper()
	var got string
	waitFor(t, bound, path+" to change", func() bool {
		got = readFile(path)
		return got != "" && got != old
	})
	return got
}

// pairReader reads db/username and db/password of a volume again and again, each time through
// one resolution of "..data" (an os.Root on the data directory it points to at that moment),
// the way a consumer that must read several files together does. Vault issues a new username
// with every credential, so a username seen with two passwords is a torn read: files of two
// rotations mixed.
type pairReader struct {
	target string
	stop   chan struct{}
	done   chan struct{}

	reads, retries, torn atomic.Int64
	mu                   sync.Mutex
	pairs                map[string]string // username → password
	order                []string          // usernames in the order first seen
}

func startPairReader(target string) *pairReader {
	r := &pairReader{target: target, stop: make(chan struct{}), done: make(chan struct{}), pairs: map[string]string{}}
	go func() {
		defer close(r.done)
		for {
			select {
			case <-r.stop:
				return
			default:
			}
			r.readOnce()
			time.Sleep(time.Millisecond)
		}
	}()
	return r
}

func (r *pairReader) readOnce() {
	root, err := os.OpenRoot(filepath.Join(r.target, "..data"))
	if err != nil {
		r.retries.Add(1)
		return
	}
	defer root.Close()
	u, uerr := root.ReadFile("db/username")
	p, perr := root.ReadFile("db/password")
	if uerr != nil || perr != nil {
		// The data directory was removed after a swap while we read it: not a mix, retry.
		r.retries.Add(1)
		return
	}
	r.reads.Add(1)
	if len(u) == 0 || len(p) == 0 {
		r.torn.Add(1)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if prev, ok := r.pairs[string(u)]; ok {
		if prev != string(p) {
			r.torn.Add(1)
		}
		return
	}
	r.pairs[string(u)] = string(p)
	r.order = append(r.order, string(u))
}

func (r *pairReader) Stop() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	<-r.done
}

// TestCSI_vault: three pods on the node mount a KV v2 secret and a database credential from
// Vault; a KV update reaches every volume; the database credential is re-issued before max_ttl,
// every volume changes atomically (readers going through "..data" never see a mix of old and
// new files) and the new credential logs in to PostgreSQL.
func TestCSI_vault(t *testing.T) {
	const ttl, maxTTL = 6 * time.Second, 15 * time.Second
	e := startCSIVault(t, csiVaultOptions{withPostgres: true, dbTTL: ttl, dbMaxTTL: maxTTL})
	e.putKV(t, "app/api", map[string]any{"token": "csi-kv-value-1"})
	_, targets := e.publishPods(t, 3, map[string]string{"secrets": "api,db"})
	var firstUser, firstPass string
	for i, target := range targets {
		waitFile(t, filepath.Join(target, "api/token"), "csi-kv-value-1")
		u, p := readFile(filepath.Join(target, "db/username")), readFile(filepath.Join(target, "db/password"))
		remember(p)
		if u == "" || p == "" {
			t.Fatalf("volume %d: database credential files are empty", i)
		}
		if i == 0 {
			firstUser, firstPass = u, p
		} else if u != firstUser {
			// share defaults to ServiceAccount: one credential for the three pods.
			t.Fatalf("volume %d got another database user than volume 0 (share ServiceAccount)", i)
		}
		fi, err := os.Stat(filepath.Join(target, "db/password"))
		if err != nil || fi.Mode().Perm() != 0o400 {
			t.Fatalf("file mode = %v, %v; want 0400", fi, err)
		}
	}
	if err := e.pg.CanLogin(ctx(t), firstUser, firstPass); err != nil {
		t.Fatalf("the credential in the volume does not log in: %v", err)
	}
	readers := make([]*pairReader, len(targets))
	for i, target := range targets {
		readers[i] = startPairReader(target)
		defer readers[i].Stop()
	}

	// A KV update reaches every volume (the next metadata poll, 1 s).
	e.putKV(t, "app/api", map[string]any{"token": "csi-kv-value-2"})
	for _, target := range targets {
		waitFile(t, filepath.Join(target, "api/token"), "csi-kv-value-2")
	}

	// The database credential is re-issued before max_ttl; every volume follows.
	var newUser, newPass string
	for i, target := range targets {
		u := waitChanged(t, filepath.Join(target, "db/username"), firstUser, maxTTL+20*time.Second)
		if i == 0 {
			newUser = u
		} else if u != newUser {
			t.Fatalf("volume %d has user #%d, volume 0 another", i, i)
		}
	}
	waitFor(t, 10*time.Second, "the new password in volume 0", func() bool {
		newPass = readFile(filepath.Join(targets[0], "db/password"))
		return newPass != "" && newPass != firstPass
	})
	remember(newPass)
	if err := e.pg.CanLogin(ctx(t), newUser, newPass); err != nil {
		t.Fatalf("the re-issued credential in the volume does not log in: %v", err)
	}
	// Let the readers run over the swap for a little while longer, then count.
	time.Sleep(200 * time.Millisecond)
	for i, r := range readers {
		r.Stop()
		r.mu.Lock()
		n := len(r.pairs)
		r.mu.Unlock()
		t.Logf("volume %d: %d consistent reads, %d retries (data directory swapped mid-read), %d credentials seen, %d torn",
			i, r.reads.Load(), r.retries.Load(), n, r.torn.Load())
		if r.torn.Load() != 0 {
			t.Errorf("volume %d: %d torn reads (username and password of different rotations)", i, r.torn.Load())
		}
		if n < 2 || r.reads.Load() < 100 {
			t.Errorf("volume %d: the reader saw %d credentials in %d reads; want both sides of the rotation", i, n, r.reads.Load())
		}
	}
	for _, target := range targets {
		if got := readFile(filepath.Join(target, "api/token")); got != "csi-kv-value-2" {
			t.Fatalf("the database rotation changed the KV file")
		}
	}
}

// TestCSI_vaultKillRestart: the daemon is killed with SIGKILL (no shutdown), started again on
// the same data directory and sockets; the volumes keep their files, keep rotating, their API
// socket works again, and unpublish after the restart removes everything.
func TestCSI_vaultKillRestart(t *testing.T) {
	e := startCSIVault(t, csiVaultOptions{})
	e.putKV(t, "app/api", map[string]any{"token": "kill-kv-value-1"})
	pods, targets := e.publishPods(t, 3, map[string]string{"secrets": "api"})
	for _, target := range targets {
		waitFile(t, filepath.Join(target, "api/token"), "kill-kv-value-1")
	}
	e.putKV(t, "app/api", map[string]any{"token": "kill-kv-value-2"})
	for _, target := range targets {
		waitFile(t, filepath.Join(target, "api/token"), "kill-kv-value-2")
	}

	e.d.Process.Kill()
	if exited, err := e.d.Process.Exited(); !exited || err == nil {
		t.Fatalf("the daemon did not die of SIGKILL: exited=%v %v", exited, err)
	}
	for _, target := range targets {
		if got := readFile(filepath.Join(target, "api/token")); got != "kill-kv-value-2" {
			t.Fatalf("kill -9 lost a volume's file: %q", got)
		}
	}
	// Written while the daemon is down: the restarted daemon must notice it.
	e.putKV(t, "app/api", map[string]any{"token": "kill-kv-value-3"})
	e.d.Restart(t)
	if !strings.Contains(e.d.Process.Log(), "volumes recovered") {
		t.Error("the restarted daemon did not log the recovered volumes")
	}
	for _, target := range targets {
		waitFile(t, filepath.Join(target, "api/token"), "kill-kv-value-3")
	}
	e.putKV(t, "app/api", map[string]any{"token": "kill-kv-value-4"})
	for _, target := range targets {
		waitFile(t, filepath.Join(target, "api/token"), "kill-kv-value-4")
	}
	// The republish kubelet does every period still works after the restart.
	if _, _, err := e.kl.Publish(ctx(t), pods[0], "secrets", map[string]string{"secrets": "api"}); err != nil {
		t.Fatalf("republish after restart: %v", err)
	}

	for i, pod := range pods {
		if err := e.kl.Unpublish(ctx(t), pod, "secrets"); err != nil {
			t.Fatalf("unpublish after restart: %v", err)
		}
		if _, err := os.Lstat(targets[i]); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("unpublish after restart left the target: %v", err)
		}
		if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), targets[i]) {
			t.Fatalf("unpublish after restart left a mount under %s", targets[i])
		}
	}
	// Nothing to recover next time: a second restart finds no volume.
	e.d.Process.Kill()
	e.d.Restart(t)
	if strings.Contains(e.d.Process.Log(), "volumes recovered") {
		t.Fatal("unpublished volumes were recovered after another restart")
	}
}

// TestCSI_grantDeletedRemovesFiles: removing the grant from the grants file removes the pod's
// CSI files within seconds (the volume's watch ends with PermissionDenied); putting it back and
// the next republish restore them.
func TestCSI_grantDeletedRemovesFiles(t *testing.T) {
	e := startCSIVault(t, csiVaultOptions{})
	e.putKV(t, "app/api", map[string]any{"token": "grant-kv-value-1"})
	attrs := map[string]string{"secrets": "api"}
	pods, targets := e.publishPods(t, 2, attrs)
	for _, target := range targets {
		waitFile(t, filepath.Join(target, "api/token"), "grant-kv-value-1")
	}
	// The grant now covers only another service account.
	writeFile(t, e.grants, strings.Replace(csiVaultGrant(e.ns), "serviceAccount: app}", "serviceAccount: other}", 1))
	gone := func(target string) bool {
		_, err1 := os.Lstat(filepath.Join(target, "api"))
		_, err2 := os.Lstat(filepath.Join(target, "..data"))
		return errors.Is(err1, os.ErrNotExist) && errors.Is(err2, os.ErrNotExist)
	}
	for _, target := range targets {
		waitFor(t, 20*time.Second, "the withdrawn grant to remove "+target+"'s files", func() bool { return gone(target) })
		entries, _ := os.ReadDir(target)
		for _, en := range entries {
			switch en.Name() {
			case "keywarden.sock": // the workload socket stays bound
			case "..volume": // the marker naming the volume ID stays: no secret in it
				if b, _ := os.ReadFile(filepath.Join(target, en.Name())); !strings.HasPrefix(string(b), "csi-") {
					t.Fatalf("the volume marker holds %q; want the volume ID", b)
				}
			default:
				t.Fatalf("a revoked volume still holds %q", en.Name())
			}
		}
	}
	// A republish without a grant is refused and writes nothing.
	if _, _, err := e.kl.Publish(ctx(t), pods[0], "secrets", attrs); err == nil {
		t.Fatal("republish without a grant succeeded")
	}
	if !gone(targets[0]) {
		t.Fatal("a refused republish wrote files")
	}
	// The grant is back: the next republish restores the files.
	writeFile(t, e.grants, csiVaultGrant(e.ns))
	waitFor(t, 20*time.Second, "the restored grant to let the republish write files", func() bool {
		_, _, err := e.kl.Publish(ctx(t), pods[0], "secrets", attrs)
		return err == nil && readFile(filepath.Join(targets[0], "api/token")) == "grant-kv-value-1"
	})
	if !gone(targets[1]) {
		t.Fatal("a volume that was not republished got its files back")
	}
}

// TestCSI_apiSocketInVolume: a volume carries keywarden.sock (apiSocket defaults to true); the
// application dials it and reads and watches secrets with its pod token, before and after a
// daemon restart. apiSocket "false" leaves it out.
func TestCSI_apiSocketInVolume(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the API socket is a bind mount: run the e2e tests as root (as CI does)")
	}
	e := startCSIVault(t, csiVaultOptions{})
	e.putKV(t, "app/api", map[string]any{"token": "sock-kv-value-1"})
	pods, targets := e.publishPods(t, 1, map[string]string{"secrets": "api"})
	// The host-side path is longer than a Unix socket address may be (108 bytes; kubelet's is
	// /var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount, 113+ with the
	// socket). A container dials it at its short mountPath; a short symlink plays that part
	// (connect(2) follows it).
	linkDir, err := os.MkdirTemp("", "kw-pod-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(linkDir) })
	if err := os.Symlink(targets[0], filepath.Join(linkDir, "secrets")); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(linkDir, "secrets", "keywarden.sock")
	get := func() (string, error) {
		c, err := client.New(sock, client.WithToken(e.kl.PodToken(t, pods[0], framework.DefaultAudience).Token))
		if err != nil {
			return "", err
		}
		defer c.Close()
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := c.Get(cctx, "api")
		if err != nil {
			return "", err
		}
		return string(s.Data["token"]), nil
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("the volume has no API socket: %v %v", fi, err)
	}
	if v, err := get(); err != nil || v != "sock-kv-value-1" {
		t.Fatalf("GetSecret through the volume's socket: %q, %v", v, err)
	}
	// The socket is not a secret file: the token from another pod is still checked.
	other := e.kl.CreatePod(t, e.ns, "other")
	c, err := client.New(sock, client.WithToken(e.kl.PodToken(t, other, framework.DefaultAudience).Token))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx(t), "api"); err == nil {
		t.Fatal("service account other read api through the volume's socket")
	}
	_ = c.Close()

	// After a crash and restart the socket in the volume reaches the new daemon.
	e.d.Process.Kill()
	e.putKV(t, "app/api", map[string]any{"token": "sock-kv-value-2"})
	e.d.Restart(t)
	waitFor(t, 30*time.Second, "GetSecret through the volume's socket after a restart", func() bool {
		v, err := get()
		return err == nil && v == "sock-kv-value-2"
	})

	// apiSocket: "false" leaves the socket out.
	_, plain := e.publishPods(t, 1, map[string]string{"secrets": "api", "apiSocket": "false"})
	waitFile(t, filepath.Join(plain[0], "api/token"), "sock-kv-value-2")
	if _, err := os.Lstat(filepath.Join(plain[0], "keywarden.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("apiSocket false: the socket is in the volume (%v)", err)
	}
	if err := e.kl.Unpublish(ctx(t), pods[0], "secrets"); err != nil {
		t.Fatalf("unpublish: %v", err)
	}
	if _, err := os.Lstat(targets[0]); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unpublish left the target (socket bind mount?): %v", err)
	}
}
