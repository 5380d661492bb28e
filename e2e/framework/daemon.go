package framework

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"
)

const daemonReadyTimeout = 30 * time.Second

// DaemonOptions configures StartDaemon.
type DaemonOptions struct {
	// Config is the daemon's YAML configuration, a text/template executed
	// with DaemonEnv, e.g. `tokenFile: {{.TokenFile}}`.
	Config string
	// Kube is the cluster the daemon's own ServiceAccount lives in; required.
	Kube *Kube
	// Namespace and ServiceAccount of the daemon; default "keywarden-system"
	// (created when missing) and "keywarden".
	Namespace, ServiceAccount string
	// TokenAudiences of the daemon's own token. Default: the apiserver's
	// API audiences (so the kubeconfig works) plus "vault" (so the same
	// token logs in to Vault roles bound to that audience), like a
	// projected token with two audiences.
	TokenAudiences []string
	// ClusterRoles bound to the daemon's ServiceAccount; default
	// system:auth-delegator (TokenReview for workload tokens).
	ClusterRoles []string
	// Args are extra command-line arguments after `serve --config <file>`.
	Args []string
	// Env is extra environment, KEY=VALUE.
	Env []string
}

// DaemonEnv is the data the Config template is executed with.
type DaemonEnv struct {
	// Dir is the daemon's private temp dir (state, sockets).
	Dir string
	// TokenFile holds the daemon's ServiceAccount token (mode 0600).
	TokenFile string
	// KubeconfigFile points at the apiserver with TokenFile and the CA.
	KubeconfigFile string
	// CAFile is the cluster CA; APIServerURL and Issuer as in Kube.
	CAFile, APIServerURL, Issuer string
	// HealthAddr is a free 127.0.0.1 port for /readyz (also passed as
	// --health-addr).
	HealthAddr string
	// CSISocket is a suggested path for the CSI socket: <Dir>/csi.sock.
	CSISocket string
}

// Daemon is a running `keywarden serve`.
type Daemon struct {
	DaemonEnv
	ConfigFile string
	// Process is the current daemon process; Restart replaces it.
	Process *Process
	// Previous are the processes Restart replaced, oldest first (their logs stay readable
	// until the test ends).
	Previous []*Process

	bin  string
	args []string
	proc procOptions
}

var (
	buildMu  sync.Mutex
	builtBin = map[string]string{} // package → binary, per test process
)

// DaemonBinary builds ./cmd/keywarden from this checkout once per test
// process (the Go build cache keeps it quick) and returns its path.
func DaemonBinary(t testing.TB) string {
	t.Helper()
	return BuildBinary(t, "./cmd/keywarden", "keywarden-e2e")
}

// BuildBinary builds the main package pkg (relative to the repository root) of this checkout
// once per test process as name and returns its path. The binary goes to a directory of this
// checkout's own under the system temp dir: a shared tools dir would let a test process of
// another checkout replace it between a daemon's start and its Restart.
func BuildBinary(t testing.TB, pkg, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if bin, ok := builtBin[pkg]; ok {
		return bin
	}
	root := RepoRoot(t)
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(os.TempDir(), "keywarden-e2e-bin-"+hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name)
	// Build to a private name and rename: another test process may be
	// running the previous binary (writing over it fails with ETXTBSY).
	tmp := fmt.Sprintf("%s.%d.tmp", out, os.Getpid())
	cmd := exec.Command("go", "build", "-o", tmp, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	if err := os.Rename(tmp, out); err != nil {
		t.Fatalf("install %s: %v", name, err)
	}
	builtBin[pkg] = out
	return out
}

// StartDaemon builds and starts the Keywarden daemon under test with its own
// ServiceAccount token (from the TokenRequest API, in DaemonEnv.TokenFile),
// waits (30 s bound) for GET /readyz on --health-addr to answer 200 and
// dumps its log if the test fails.
//
// Contract with cmd/keywarden: `keywarden serve --config <file>
// --health-addr <host:port>` serves /readyz and returns 200 once ready.
func StartDaemon(t testing.TB, o DaemonOptions) *Daemon {
	t.Helper()
	if o.Kube == nil {
		t.Fatal("StartDaemon: DaemonOptions.Kube is required")
	}
	if o.Namespace == "" {
		o.Namespace = "keywarden-system"
	}
	if o.ServiceAccount == "" {
		o.ServiceAccount = "keywarden"
	}
	if len(o.TokenAudiences) == 0 {
		o.TokenAudiences = append(append([]string(nil), o.Kube.APIAudiences...), "vault")
	}
	if o.ClusterRoles == nil {
		o.ClusterRoles = []string{"system:auth-delegator"}
	}
	bin := DaemonBinary(t)
	k := o.Kube
	ctx := ctxT(t)

	if _, err := k.Client.CoreV1().Namespaces().Get(ctx, o.Namespace, metav1GetOptions); err != nil {
		if err := createNamespaceNamed(ctx, k, o.Namespace); err != nil {
			t.Fatalf("create namespace %s: %v", o.Namespace, err)
		}
	}
	if _, err := k.Client.CoreV1().ServiceAccounts(o.Namespace).Get(ctx, o.ServiceAccount, metav1GetOptions); err != nil {
		k.CreateServiceAccount(t, o.Namespace, o.ServiceAccount)
	}
	for _, role := range o.ClusterRoles {
		k.BindClusterRole(t, "keywarden-e2e-"+o.Namespace+"-"+o.ServiceAccount+"-"+sanitize(role), role,
			ServiceAccountSubject(o.Namespace, o.ServiceAccount))
	}

	dir, err := os.MkdirTemp("", "keywarden-e2e-daemon-") // short: holds a Unix socket
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	tok, _ := k.TokenRequest(t, o.Namespace, o.ServiceAccount, o.TokenAudiences, time.Hour, nil)
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &Daemon{DaemonEnv: DaemonEnv{
		Dir: dir, TokenFile: tokenFile, CAFile: k.CAFile, APIServerURL: k.URL, Issuer: k.Issuer,
		CSISocket: filepath.Join(dir, "csi.sock"),
	}}
	d.KubeconfigFile = k.WriteKubeconfig(t, dir, tokenFile)

	err = retryOnAddrInUse(func() error {
		port, err := freePorts(1)
		if err != nil {
			return err
		}
		d.HealthAddr = "127.0.0.1:" + strconv.Itoa(port)
		tmpl, err := template.New("config").Option("missingkey=error").Parse(o.Config)
		if err != nil {
			return fmt.Errorf("config template: %w", err)
		}
		var cfg bytes.Buffer
		if err := tmpl.Execute(&cfg, d.DaemonEnv); err != nil {
			return fmt.Errorf("config template: %w", err)
		}
		d.ConfigFile = filepath.Join(dir, "config.yaml")
		if err := os.WriteFile(d.ConfigFile, cfg.Bytes(), 0o600); err != nil {
			return err
		}
		d.bin = bin
		d.args = append([]string{"serve", "--config", d.ConfigFile, "--health-addr", d.HealthAddr}, o.Args...)
		d.proc = procOptions{Dir: dir, Env: o.Env}
		p, err := d.startReady(t)
		if err != nil {
			return err
		}
		d.Process = p
		return nil
	})
	if err != nil {
		t.Fatalf("start keywarden: %v", err)
	}
	return d
}

func (d *Daemon) startReady(t testing.TB) (*Process, error) {
	p, err := startProcess(t, "keywarden", d.bin, d.args, d.proc)
	if err != nil {
		return nil, err
	}
	if err := p.waitReady(daemonReadyTimeout, func() error { return httpOK("http://" + d.HealthAddr + "/readyz") }); err != nil {
		return nil, err
	}
	return p, nil
}

// Restart starts the daemon again with the same command line: the same config file, data
// directory, sockets, token file and health address — like kubelet restarting a DaemonSet pod
// after a crash or an upgrade. The current process must have exited (Process.Kill or
// Process.Stop); it moves to Previous. Restart waits (30 s bound) for /readyz as StartDaemon
// does. The health port is reused: if another process took it meanwhile, Restart fails rather
// than change the daemon's address under the test.
func (d *Daemon) Restart(t testing.TB) {
	t.Helper()
	if exited, _ := d.Process.Exited(); !exited {
		t.Fatal("Daemon.Restart: the daemon is still running; call Process.Kill or Process.Stop first")
	}
	p, err := d.startReady(t)
	if err != nil {
		t.Fatalf("restart keywarden: %v", err)
	}
	d.Previous = append(d.Previous, d.Process)
	d.Process = p
}

// Logs returns the logs of every process of this daemon, the current one last.
func (d *Daemon) Logs() string {
	var b strings.Builder
	for _, p := range append(append([]*Process(nil), d.Previous...), d.Process) {
		b.WriteString(p.Log())
	}
	return b.String()
}

func httpOK(url string) error {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			b[i] = '-'
		}
	}
	return string(b)
}
