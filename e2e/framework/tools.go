package framework

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Tool names, as used by e2e/tools/build.sh and the cache file names.
const (
	ToolKubeAPIServer = "kube-apiserver"
	ToolEtcd          = "etcd"
	ToolVault         = "vault"
	ToolCSISanity     = "csi-sanity"
	ToolHelm          = "helm"
	// ToolPrometheusOperatorCRDs is a YAML file (ServiceMonitor and PrometheusRule CRDs), not
	// a program: see ToolFile.
	ToolPrometheusOperatorCRDs = "prometheus-operator-crds"
)

// versionKeys maps a tool to its key in e2e/tools/versions.env.
var versionKeys = map[string]string{
	ToolKubeAPIServer:          "KUBE_APISERVER_VERSION",
	ToolEtcd:                   "ETCD_VERSION",
	ToolVault:                  "VAULT_VERSION",
	ToolCSISanity:              "CSI_SANITY_VERSION",
	ToolHelm:                   "HELM_VERSION",
	ToolPrometheusOperatorCRDs: "PROMETHEUS_OPERATOR_VERSION",
}

const modulePath = "github.com/keywarden/keywarden"

var (
	repoRootOnce sync.Once
	repoRootDir  string
	repoRootErr  error
)

// RepoRoot returns the root of the Keywarden checkout: the nearest ancestor
// of the working directory whose go.mod declares the main module.
func RepoRoot(t testing.TB) string {
	t.Helper()
	repoRootOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			repoRootErr = fmt.Errorf("getwd: %w", err)
			return
		}
		for {
			b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
			if err == nil && moduleLine(b) == modulePath {
				repoRootDir = dir
				return
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				repoRootErr = fmt.Errorf("no go.mod for module %s above the working directory", modulePath)
				return
			}
			dir = parent
		}
	})
	if repoRootErr != nil {
		t.Fatalf("find repository root: %v", repoRootErr)
	}
	return repoRootDir
}

func moduleLine(gomod []byte) string {
	s := bufio.NewScanner(bytes.NewReader(gomod))
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if rest, ok := strings.CutPrefix(line, "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// ToolsDir returns $KEYWARDEN_TOOLS_DIR, or <repo>/.bin when it is unset.
func ToolsDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("KEYWARDEN_TOOLS_DIR"); d != "" {
		abs, err := filepath.Abs(d)
		if err != nil {
			t.Fatalf("KEYWARDEN_TOOLS_DIR: %v", err)
		}
		return abs
	}
	return filepath.Join(RepoRoot(t), ".bin")
}

// ToolVersion returns the pinned version of a tool from e2e/tools/versions.env.
func ToolVersion(t testing.TB, name string) string {
	t.Helper()
	key, ok := versionKeys[name]
	if !ok {
		t.Fatalf("unknown tool %q", name)
	}
	path := filepath.Join(RepoRoot(t), "e2e", "tools", "versions.env")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read tool versions: %v", err)
	}
	v, err := parseVersions(b, key)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return v
}

func parseVersions(b []byte, key string) (string, error) {
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if ok && strings.TrimSpace(k) == key {
			return strings.Trim(strings.TrimSpace(v), `"'`), nil
		}
	}
	return "", fmt.Errorf("no %s line", key)
}

// ToolFile returns a cached data file of the tools dir (<name>-<version>.yaml), failing the
// test when e2e/tools/build.sh has not fetched it.
func ToolFile(t testing.TB, name string) string {
	t.Helper()
	version := ToolVersion(t, name)
	p := filepath.Join(ToolsDir(t), name+"-"+version+".yaml")
	if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
		t.Fatalf("%v: %s %s not found at %s (e2e/tools/build.sh %s)", ErrToolMissing, name, version, p, name)
	}
	return p
}

// ToolPath returns the cached binary of a tool, failing the test (never
// skipping it) when the binary has not been built.
func ToolPath(t testing.TB, name string) string {
	t.Helper()
	version := ToolVersion(t, name)
	p := filepath.Join(ToolsDir(t), name+"-"+version)
	st, err := os.Stat(p)
	if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		t.Fatalf("%v: %s %s not found at %s (e2e/tools/build.sh %s)", ErrToolMissing, name, version, p, name)
	}
	return p
}
