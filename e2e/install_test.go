//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/keywarden/keywarden/e2e/framework"
)

// The release the install tests render: the names docs/install.md uses.
const (
	chartRelease   = "keywarden"
	chartNamespace = "keywarden-system"
	chartSAUser    = "system:serviceaccount:" + chartNamespace + ":keywarden"
)

func chartDir(t testing.TB) string {
	return filepath.Join(framework.RepoRoot(t), "deploy", "helm", "keywarden")
}

func allValuesFile(t testing.TB) string { return filepath.Join(chartDir(t), "ci", "all-values.yaml") }

func kindsOf(objs []*unstructured.Unstructured) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.GetKind())
	}
	sort.Strings(out)
	return out
}

func findObject(t testing.TB, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && (name == "" || o.GetName() == name) {
			return o
		}
	}
	t.Fatalf("the chart rendered no %s %q (kinds: %v)", kind, name, kindsOf(objs))
	return nil
}

func toTyped[T any](t testing.TB, u *unstructured.Unstructured) *T {
	t.Helper()
	var out T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &out); err != nil {
		t.Fatalf("convert %s: %v", framework.ObjectKey(u), err)
	}
	return &out
}

// renderedConfig is the daemon's config file from the chart's ConfigMap.
func renderedConfig(t testing.TB, objs []*unstructured.Unstructured) string {
	t.Helper()
	cm := toTyped[corev1.ConfigMap](t, findObject(t, objs, "ConfigMap", chartRelease))
	cfg, ok := cm.Data["config.yaml"]
	if !ok {
		t.Fatalf("the chart's ConfigMap has no config.yaml (keys: %v)", cm.Data)
	}
	return cfg
}

// TestInstall_chartLintTemplateAndSchema: helm lint and helm template pass for the defaults
// and for every option on; a bad value is refused with the schema's message; the rendered
// config passes the daemon's own validation; the RBAC follows the identity mode.
func TestInstall_chartLintTemplateAndSchema(t *testing.T) {
	chart := chartDir(t)
	for _, tc := range []struct {
		name   string
		values []string
		kinds  []string
	}{
		{"defaults", nil, []string{"CSIDriver", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition", "DaemonSet", "NetworkPolicy", "Role", "RoleBinding", "ServiceAccount"}},
		{"every option on", []string{allValuesFile(t)}, []string{"CSIDriver", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "ConfigMap", "CustomResourceDefinition", "DaemonSet", "NetworkPolicy", "PrometheusRule", "Role", "RoleBinding", "Service", "ServiceAccount", "ServiceMonitor"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"lint", "--strict", chart}
			for _, f := range tc.values {
				args = append(args, "-f", f)
			}
			out, _, err := framework.Helm(t, args...)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, "1 chart(s) linted, 0 chart(s) failed") {
				t.Fatalf("helm lint:\n%s", out)
			}
			objs := framework.RenderChart(t, framework.ChartOptions{Chart: chart, ValuesFiles: tc.values})
			if got := kindsOf(objs); !slices.Equal(got, tc.kinds) {
				t.Fatalf("rendered kinds %v, want %v", got, tc.kinds)
			}
			// The ConfigMap holds a config `keywarden serve` accepts, node name from the
			// command line as the DaemonSet passes it.
			cfgFile := filepath.Join(t.TempDir(), "config.yaml")
			writeFile(t, cfgFile, renderedConfig(t, objs))
			cmd := exec.Command(framework.DaemonBinary(t), "serve", "--check", "--config", cfgFile, "--node-name", "node-1")
			if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "is valid") {
				t.Fatalf("keywarden serve --check on the rendered config: %v\n%s", err, out)
			}
		})
	}

	t.Run("bad values are refused with the schema message", func(t *testing.T) {
		for _, tc := range []struct {
			set  []string
			want string
		}{
			{[]string{"config.log.level=loud"}, "at '/config/log/level': value must be one of 'debug', 'info', 'warn', 'error'"},
			{[]string{"config.identity.mode=oidc"}, "at '/config/identity/mode': value must be one of 'jwt', 'tokenreview'"},
			{[]string{"vault.address=vault:8200"}, "at '/vault/address': 'vault:8200' does not match pattern"},
			{[]string{"vault.auth.tokenExpirationSeconds=60"}, "at '/vault/auth/tokenExpirationSeconds': minimum: got 60, want 600"},
			{[]string{"config.rotation.pollInterval=often"}, "at '/config/rotation/pollInterval': 'often' does not match pattern"},
			{[]string{"image.digest=latest"}, "at '/image/digest': 'latest' does not match pattern"},
			{[]string{"tolerance=1"}, "additional properties 'tolerance' not allowed"},
			{[]string{"config.identity.leeway=90s"}, "at '/config/identity/leeway': '90s' does not match pattern"},
			{[]string{"config.identity.discoveryURL=http://kubernetes.default.svc"}, "at '/config/identity/discoveryURL'"},
			{[]string{"config.csi.tmpfsSize=4Gi"}, "at '/config/csi/tmpfsSize'"},
		} {
			args := []string{"template", chartRelease, chart, "--namespace", chartNamespace}
			for _, s := range tc.set {
				args = append(args, "--set", s)
			}
			_, stderr, err := framework.Helm(t, args...)
			if err == nil {
				t.Errorf("--set %v: helm template succeeded, want a schema error", tc.set)
				continue
			}
			if !strings.Contains(stderr, "values don't meet the specifications of the schema") || !strings.Contains(stderr, tc.want) {
				t.Errorf("--set %v: stderr\n%s\nwant %q", tc.set, stderr, tc.want)
			}
		}
	})

	t.Run("a typo in extraConfig is refused by the daemon's validation", func(t *testing.T) {
		objs := framework.RenderChart(t, framework.ChartOptions{Chart: chart, Set: []string{"extraConfig.rotaton.pollInterval=1s"}})
		cfgFile := filepath.Join(t.TempDir(), "config.yaml")
		writeFile(t, cfgFile, renderedConfig(t, objs))
		out, err := exec.Command(framework.DaemonBinary(t), "serve", "--check", "--config", cfgFile, "--node-name", "n").CombinedOutput()
		if err == nil || !strings.Contains(string(out), `unknown field "rotaton"`) {
			t.Fatalf("serve --check: %v\n%s\nwant the unknown-field error", err, out)
		}
	})

	t.Run("the daemon's token goes only to the in-cluster apiserver's key endpoints", func(t *testing.T) {
		for _, tc := range []struct {
			set  []string
			want string // bearerTokenFile in the rendered config; empty: none
		}{
			{nil, "/var/run/secrets/kubernetes.io/serviceaccount/token"},
			{[]string{"config.identity.discoveryURL=", "config.identity.jwksURL=https://kubernetes.default.svc.cluster.local:443/openid/v1/jwks"}, "/var/run/secrets/kubernetes.io/serviceaccount/token"},
			{[]string{"config.identity.discoveryURL=https://oidc.eks.example.com/id/ABC"}, ""},
			{[]string{"config.identity.discoveryURL=https://kubernetes.default.svc.attacker.example"}, ""},
			{[]string{"config.identity.discoveryURL=https://oidc.example.com", "config.identity.bearerTokenFile=/etc/keywarden/oidc/token"}, "/etc/keywarden/oidc/token"},
		} {
			var cfg struct {
				Identity struct {
					BearerTokenFile string `json:"bearerTokenFile"`
				} `json:"identity"`
			}
			objs := framework.RenderChart(t, framework.ChartOptions{Chart: chart, Set: tc.set})
			if err := yaml.Unmarshal([]byte(renderedConfig(t, objs)), &cfg); err != nil {
				t.Fatal(err)
			}
			if cfg.Identity.BearerTokenFile != tc.want {
				t.Errorf("--set %v: identity.bearerTokenFile = %q, want %q", tc.set, cfg.Identity.BearerTokenFile, tc.want)
			}
		}
	})

	t.Run("RBAC follows the identity mode and grant source", func(t *testing.T) {
		rules := func(set ...string) []rbacv1.PolicyRule {
			objs := framework.RenderChart(t, framework.ChartOptions{Chart: chart, Set: set})
			return toTyped[rbacv1.ClusterRole](t, findObject(t, objs, "ClusterRole", "")).Rules
		}
		pods := rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list", "watch"}}
		sas := rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"serviceaccounts"}, Verbs: []string{"list", "watch"}}
		grants := rbacv1.PolicyRule{APIGroups: []string{"keywarden.io"}, Resources: []string{"accessgrants"}, Verbs: []string{"list", "watch"}}
		reviews := rbacv1.PolicyRule{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}}
		for _, tc := range []struct {
			set  []string
			want []rbacv1.PolicyRule
		}{
			{nil, []rbacv1.PolicyRule{pods, sas, grants}},
			{[]string{"config.identity.mode=tokenreview"}, []rbacv1.PolicyRule{pods, sas, grants, reviews}},
			{[]string{"config.grants.kubernetes=false", "config.grants.file=/etc/keywarden/grants/grants.yaml"}, []rbacv1.PolicyRule{pods, sas}},
		} {
			got := rules(tc.set...)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("--set %v: ClusterRole rules\n%v\nwant\n%v", tc.set, got, tc.want)
			}
		}
	})

	t.Run("audit anchors get create on events in the release namespace, nothing more", func(t *testing.T) {
		objs := framework.RenderChart(t, framework.ChartOptions{Chart: chart})
		role := toTyped[rbacv1.Role](t, findObject(t, objs, "Role", ""))
		want := []rbacv1.PolicyRule{{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create"}}}
		if fmt.Sprint(role.Rules) != fmt.Sprint(want) {
			t.Errorf("Role rules\n%v\nwant\n%v", role.Rules, want)
		}
		binding := toTyped[rbacv1.RoleBinding](t, findObject(t, objs, "RoleBinding", ""))
		if binding.RoleRef.Name != role.Name || len(binding.Subjects) != 1 || binding.Subjects[0].Kind != "ServiceAccount" {
			t.Errorf("RoleBinding %+v does not bind the Role to the chart's ServiceAccount", binding)
		}
		for _, set := range [][]string{{"config.audit.anchor.events=false"}, {"config.audit.anchor.enabled=false"}} {
			objs := framework.RenderChart(t, framework.ChartOptions{Chart: chart, Set: set})
			if kinds := kindsOf(objs); slices.Contains(kinds, "Role") || slices.Contains(kinds, "RoleBinding") {
				t.Errorf("--set %v: rendered %v, want no Role", set, kinds)
			}
		}
	})
}

// TestInstall_onRealAPIServer applies everything the chart renders with every option on to a
// real kube-apiserver, then runs the daemon the way the DaemonSet would — the ConfigMap the
// chart rendered, the arguments and mounts of its container, the chart's ServiceAccount and
// nothing but the chart's RBAC — and a kubelet configured from the rendered CSIDriver object.
//
// What a container runtime would do is played here: each path the container mounts is
// rewritten to the host directory that holds the same content (hostPath volumes are the
// same paths, since the values put them under the test's temp dirs; the projected tokens
// come from the TokenRequest API with the audience and lifetime the pod spec asks for; the
// ConfigMap is written out). The one change to the rendered config: `kubernetes.inCluster`
// becomes a kubeconfig with the same in-cluster token file and CA, because client-go's
// in-cluster config reads fixed paths under /var/run/secrets.
func TestInstall_onRealAPIServer(t *testing.T) {
	auditDir := t.TempDir()
	auditLog := filepath.Join(auditDir, "audit.log")
	writeFile(t, filepath.Join(auditDir, "policy.yaml"), `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: ["`+chartSAUser+`"]
  - level: None
`)
	kube := framework.StartKube(t, framework.KubeOptions{ExtraAPIServerFlags: []string{
		"--audit-policy-file=" + filepath.Join(auditDir, "policy.yaml"), "--audit-log-path=" + auditLog,
	}})
	vault := framework.StartVault(t)
	vault.PutPolicy(t, "keywarden", daemonPolicy)
	vault.Mount(t, "transit", "transit", nil)
	vault.Write(t, "transit/keys/kek", map[string]any{"type": "aes256-gcm96", "derived": true})
	vault.EnableKubernetesAuth(t, kube, framework.KubernetesAuthOptions{
		Role: "keywarden", ServiceAccounts: []string{"keywarden"}, Namespaces: []string{chartNamespace},
		Audience: "vault", Policies: []string{"keywarden"},
	})
	const kvValue = "installed-chart-kv-value"
	remember(kvValue)
	if _, err := vault.Client.KVv2("secret").Put(ctx(t), "app/api", map[string]any{"token": kvValue}); err != nil {
		t.Fatal(err)
	}

	// The namespace as docs/install.md prepares it: privileged is enforced (the CSI container
	// is privileged), restricted is warned about, so every deviation shows up below.
	_, err := kube.Client.CoreV1().Namespaces().Create(ctx(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: chartNamespace, Labels: map[string]string{
			"pod-security.kubernetes.io/enforce": "privileged",
			"pod-security.kubernetes.io/warn":    "restricted",
		},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// Host paths under the test's dirs; sockets in a short dir (Unix socket path limit).
	root := t.TempDir()
	kubeletRoot := filepath.Join(root, "kubelet")
	stateDir := filepath.Join(root, "state")
	sockDir, err := os.MkdirTemp("", "kw-inst-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	for _, d := range []string{filepath.Join(kubeletRoot, "pods"), filepath.Join(kubeletRoot, "plugins_registry")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	testValues := filepath.Join(root, "test-values.yaml")
	writeFile(t, testValues, fmt.Sprintf(`kubeletRoot: %s
hostPaths: {state: %s, sockets: %s}
config:
  identity: {issuer: %q, discoveryURL: %q}
vault: {address: %q, caConfigMap: ""}
`, kubeletRoot, stateDir, sockDir, kube.Issuer, kube.Issuer, vault.Addr))
	objs := framework.RenderChart(t, framework.ChartOptions{
		Chart: chartDir(t), Release: chartRelease, Namespace: chartNamespace,
		ValuesFiles: []string{allValuesFile(t), testValues},
	})

	// 1. Everything applies: the operator's CRDs first, as a cluster with prometheus-operator
	// has them, then every object of the chart (CRDs first, waited for until Established).
	opCRDs, err := os.ReadFile(framework.ToolFile(t, framework.ToolPrometheusOperatorCRDs))
	if err != nil {
		t.Fatal(err)
	}
	ops, err := framework.DecodeManifests(opCRDs)
	if err != nil {
		t.Fatal(err)
	}
	kube.Apply(t, ops)
	results := kube.Apply(t, objs)
	kube.WaitCRDEstablished(t, "accessgrants.keywarden.io")

	csiDriver, err := kube.Client.StorageV1().CSIDrivers().Get(ctx(t), "keywarden.dev", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertCSIDriver(t, csiDriver)
	ds, err := kube.Client.AppsV1().DaemonSets(chartNamespace).Get(ctx(t), chartRelease, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertRestrictedExceptCSIContainer(t, results["DaemonSet/"+chartNamespace+"/"+chartRelease].Warnings)

	// 2. A pod of the DaemonSet would be admitted (dry run: Priority resolves
	// system-node-critical, Pod Security enforce passes, the ServiceAccount exists), and the
	// admitted pod — with the service-account token volume admission adds — is the pod the
	// daemon below runs as.
	const nodeName = "e2e-install-node"
	podObj := &unstructured.Unstructured{}
	podSpec := ds.Spec.Template.DeepCopy()
	podSpec.Spec.NodeName = nodeName
	podMap, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{GenerateName: chartRelease + "-", Namespace: chartNamespace, Labels: podSpec.Labels, Annotations: podSpec.Annotations},
		Spec:       podSpec.Spec,
	})
	if err != nil {
		t.Fatal(err)
	}
	podObj.Object = podMap
	admitted, _, err := kube.DryRunCreate(t, podObj)
	if err != nil {
		t.Fatalf("a pod of the DaemonSet is not admitted: %v", err)
	}
	pod := toTyped[corev1.Pod](t, admitted)

	// 3. The daemon, as the pod would run it, with only the chart's RBAC. The grants file the
	// values mount (extraVolumes) comes from a ConfigMap the operator writes: grants from it
	// and from AccessGrant objects are merged.
	appNS := kube.CreateNamespace(t, "installed")
	grantsCM := grantObject(t, fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata: {name: keywarden-grants, namespace: %s}
data:
  grants.yaml: |
    apiVersion: keywarden.io/v1alpha1
    kind: AccessGrant
    metadata: {name: installed-app-file}
    spec:
      subjects: [{namespace: %s, serviceAccount: app}]
      secrets:
        - name: api-from-file
          source: {vault: {mount: secret, path: app/api}}
`, chartNamespace, appNS))
	kube.Apply(t, []*unstructured.Unstructured{grantsCM})
	run := emulatePod(t, kube, pod, "keywarden", append(objs, grantsCM))
	unmountAtEnd(t, kubeletRoot)
	d := framework.StartDaemon(t, framework.DaemonOptions{
		Kube: kube, Namespace: chartNamespace, ServiceAccount: pod.Spec.ServiceAccountName,
		ClusterRoles: []string{}, // nothing but what the chart bound
		Config:       run.config, Args: run.args,
	})
	t.Cleanup(func() {
		logs := d.Logs()
		secretsSeen.Range(func(k, _ any) bool {
			if strings.Contains(logs, k.(string)) {
				t.Errorf("daemon log contains a secret or token (%d bytes long)", len(k.(string)))
			}
			return true
		})
	})

	// 4. It serves a pod through the CSIDriver's settings: a grant from an AccessGrant object,
	// the pod found by the node-scoped pod informer, a Vault read with the daemon's own token.
	klOpts, err := framework.KubeletOptionsFromCSIDriver(csiDriver, framework.KubeletOptions{
		NodeName: nodeName, Socket: run.csiSocket, PodsDir: filepath.Join(kubeletRoot, "pods"),
	})
	if err != nil {
		t.Fatal(err)
	}
	kl := framework.NewKubelet(t, kube, klOpts)
	createGrant(t, kube, fmt.Sprintf(`apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: installed-app}
spec:
  subjects: [{namespace: %s, serviceAccount: app}]
  secrets:
    - name: api
      source: {vault: {mount: secret, path: app/api}}
`, appNS))
	appPod := kl.CreatePod(t, appNS, "app")
	var target string
	waitFor(t, 30*time.Second, "a publish with the CSIDriver's settings", func() bool {
		_, target, err = kl.Publish(ctx(t), appPod, "secrets", map[string]string{"secrets": "api,api-from-file"})
		return err == nil
	})
	t.Cleanup(func() { _ = kl.Unpublish(context.Background(), appPod, "secrets") })
	waitFile(t, filepath.Join(target, "api/token"), kvValue)
	waitFile(t, filepath.Join(target, "api-from-file/token"), kvValue)

	// 5. The RBAC is sufficient: the daemon made every call the ClusterRole allows and the
	// apiserver refused none of its calls.
	cr, err := kube.Client.RbacV1().ClusterRoles().Get(ctx(t), chartRelease, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	anchorRole, err := kube.Client.RbacV1().Roles(chartNamespace).Get(ctx(t), chartRelease+"-audit-anchors", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertDaemonUsedExactlyItsRBAC(t, auditLog, append(cr.Rules, anchorRole.Rules...))
	if logs := d.Logs(); strings.Contains(logs, "forbidden") {
		t.Errorf("the daemon was refused something by the apiserver:\n%s", tailLines(logs, 40))
	}

	// 6. The RBAC is minimal: with the chart's ServiceAccount, anything else is refused by the
	// apiserver.
	assertServiceAccountRefused(t, kube, pod.Spec.ServiceAccountName)
}

func assertCSIDriver(t *testing.T, d *storagev1.CSIDriver) {
	t.Helper()
	s := d.Spec
	switch {
	case s.AttachRequired == nil || *s.AttachRequired:
		t.Error("CSIDriver: attachRequired must be false (node-only driver)")
	case s.PodInfoOnMount == nil || !*s.PodInfoOnMount:
		t.Error("CSIDriver: podInfoOnMount must be true")
	case s.RequiresRepublish == nil || !*s.RequiresRepublish:
		t.Error("CSIDriver: requiresRepublish must be true")
	case !slices.Equal(s.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecycleEphemeral}):
		t.Errorf("CSIDriver: volumeLifecycleModes = %v, want [Ephemeral]", s.VolumeLifecycleModes)
	case len(s.TokenRequests) != 1 || s.TokenRequests[0].Audience != "keywarden.e2e" ||
		s.TokenRequests[0].ExpirationSeconds == nil || *s.TokenRequests[0].ExpirationSeconds != 600:
		t.Errorf("CSIDriver: tokenRequests = %+v, want one for the first identity audience keywarden.e2e, 600 s", s.TokenRequests)
	}
}

// assertRestrictedExceptCSIContainer checks the Pod Security "restricted" warnings the
// apiserver gave for the DaemonSet: the keywarden container (privileged, root) and the
// hostPath volumes are expected; of the registrar only that it runs as root.
func assertRestrictedExceptCSIContainer(t *testing.T, warnings []string) {
	t.Helper()
	var psa string
	for _, w := range warnings {
		if strings.Contains(w, `would violate PodSecurity "restricted`) {
			psa = w
		}
	}
	if psa == "" {
		t.Fatalf("no Pod Security warning for the DaemonSet in a namespace that warns on restricted; warnings: %q", warnings)
	}
	_, list, _ := strings.Cut(psa, ": ")
	var checked int
	for _, v := range strings.Split(list, "), ") {
		name, _, _ := strings.Cut(v, " (")
		checked++
		if strings.Contains(v, "node-driver-registrar") && name != "runAsNonRoot != true" && name != "runAsUser=0" {
			t.Errorf("the registrar violates restricted beyond running as root: %q", v)
		}
		if !strings.Contains(v, `"keywarden"`) && !strings.Contains(v, "node-driver-registrar") && name != "restricted volume types" && name != "hostPath volumes" {
			t.Errorf("unexpected restricted violation: %q", v)
		}
	}
	t.Logf("Pod Security restricted, %d violations, all the CSI container's, its hostPaths, or the registrar running as root: %s", checked, psa)
}

// auditEvent is the part of a Kubernetes audit event the RBAC check reads.
type auditEvent struct {
	Stage     string `json:"stage"`
	Verb      string `json:"verb"`
	UserAgent string `json:"userAgent"`
	User      struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef *struct {
		Resource string `json:"resource"`
		APIGroup string `json:"apiGroup"`
	} `json:"objectRef"`
	RequestURI     string `json:"requestURI"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
}

// assertDaemonUsedExactlyItsRBAC reads the apiserver's audit log: every request the daemon
// made as the chart's ServiceAccount succeeded, and every (group, resource, verb) the
// ClusterRole grants was used — the role holds nothing the daemon does not call.
func assertDaemonUsedExactlyItsRBAC(t *testing.T, auditLog string, rules []rbacv1.PolicyRule) {
	t.Helper()
	granted := map[string]bool{}
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					granted[g+"/"+res+":"+v] = false
				}
			}
		}
	}
	var refused, seen []string
	allUsed := func() bool {
		f, err := os.Open(auditLog)
		if err != nil {
			return false
		}
		defer f.Close()
		refused, seen = nil, nil
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var e auditEvent
			if json.Unmarshal(sc.Bytes(), &e) != nil || e.User.Username != chartSAUser || !strings.HasPrefix(e.UserAgent, "keywarden") {
				continue
			}
			seen = append(seen, e.Stage+" "+e.Verb+" "+e.RequestURI)
			// 401/403: authentication or RBAC said no. (A 429 right after the CRD is
			// Established is the apiserver warming up, and the informer retries.)
			if e.ResponseStatus != nil && (e.ResponseStatus.Code == 401 || e.ResponseStatus.Code == 403) {
				refused = append(refused, fmt.Sprintf("%s %s: %d", e.Verb, e.RequestURI, e.ResponseStatus.Code))
			}
			if e.ObjectRef != nil {
				verbs := []string{e.Verb}
				if e.Verb == "watch" && strings.Contains(e.RequestURI, "sendInitialEvents=true") {
					// A streaming list: client-go's informers get their initial state this way
					// where the apiserver supports it, and fall back to a LIST where it does not.
					verbs = append(verbs, "list")
				}
				for _, v := range verbs {
					key := e.ObjectRef.APIGroup + "/" + e.ObjectRef.Resource + ":" + v
					if _, ok := granted[key]; ok {
						granted[key] = true
					}
				}
			}
		}
		for _, used := range granted {
			if !used {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(15 * time.Second)
	for !allUsed() {
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not use every permission of its ClusterRole within 15s: %v\nits requests in the audit log:\n%s",
				granted, strings.Join(seen, "\n"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(refused) > 0 {
		t.Fatalf("the apiserver refused the daemon's requests: %v", refused)
	}
	t.Logf("the daemon used every permission of its ClusterRole and nothing was refused: %v", granted)
}

// assertServiceAccountRefused makes, as the chart's ServiceAccount, the calls its RBAC must
// not allow, and the ones it must.
func assertServiceAccountRefused(t *testing.T, kube *framework.Kube, sa string) {
	t.Helper()
	tok, _ := kube.TokenRequest(t, chartNamespace, sa, kube.APIAudiences, time.Hour, nil)
	remember(tok)
	cfg := &rest.Config{Host: kube.URL, BearerToken: tok, TLSClientConfig: rest.TLSClientConfig{CAData: kube.CAPEM}, Timeout: 30 * time.Second}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	grants := dyn.Resource(schema.GroupVersionResource{Group: "keywarden.io", Version: "v1alpha1", Resource: "accessgrants"})
	c := ctx(t)
	// Allowed: what the daemon's informers do.
	for name, call := range map[string]func() error{
		"list pods":         func() error { _, err := cs.CoreV1().Pods("").List(c, metav1.ListOptions{Limit: 1}); return err },
		"list accessgrants": func() error { _, err := grants.List(c, metav1.ListOptions{Limit: 1}); return err },
		"list serviceaccounts": func() error {
			_, err := cs.CoreV1().ServiceAccounts("").List(c, metav1.ListOptions{Limit: 1})
			return err
		},
		"watch pods": func() error {
			w, err := cs.CoreV1().Pods("").Watch(c, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		},
	} {
		if err := call(); err != nil {
			t.Errorf("%s as the chart's ServiceAccount: %v, want allowed", name, err)
		}
	}
	zero := int64(0)
	refused := map[string]func() error{
		"get a pod": func() error {
			_, err := cs.CoreV1().Pods(chartNamespace).Get(c, "any", metav1.GetOptions{})
			return err
		},
		"create a pod": func() error {
			_, err := cs.CoreV1().Pods(chartNamespace).Create(c, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x"},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "x", Image: "x"}}}}, metav1.CreateOptions{})
			return err
		},
		"delete a pod": func() error {
			return cs.CoreV1().Pods(chartNamespace).Delete(c, "any", metav1.DeleteOptions{GracePeriodSeconds: &zero})
		},
		"list secrets": func() error { _, err := cs.CoreV1().Secrets("").List(c, metav1.ListOptions{}); return err },
		"get a secret": func() error {
			_, err := cs.CoreV1().Secrets(chartNamespace).Get(c, "any", metav1.GetOptions{})
			return err
		},
		"list configmaps": func() error {
			_, err := cs.CoreV1().ConfigMaps(chartNamespace).List(c, metav1.ListOptions{})
			return err
		},
		"list nodes": func() error { _, err := cs.CoreV1().Nodes().List(c, metav1.ListOptions{}); return err },
		"get a serviceaccount": func() error {
			_, err := cs.CoreV1().ServiceAccounts("kube-system").Get(c, "default", metav1.GetOptions{})
			return err
		},
		"request a token for another account": func() error {
			_, err := cs.CoreV1().ServiceAccounts("kube-system").CreateToken(c, "vault-token-reviewer", nil, metav1.CreateOptions{})
			return err
		},
		"create a tokenreview (jwt mode)": func() error {
			_, err := cs.AuthenticationV1().TokenReviews().Create(c, nil, metav1.CreateOptions{})
			return err
		},
		"create an accessgrant": func() error {
			_, err := grants.Create(c, grantObject(t, "apiVersion: keywarden.io/v1alpha1\nkind: AccessGrant\nmetadata: {name: by-daemon}\nspec:\n  subjects: [{namespace: x, serviceAccount: y}]\n  secrets: [{name: s, source: {vault: {mount: secret, path: x}}}]\n"), metav1.CreateOptions{})
			return err
		},
		"delete an accessgrant": func() error { return grants.Delete(c, "installed-app", metav1.DeleteOptions{}) },
		"get an accessgrant":    func() error { _, err := grants.Get(c, "installed-app", metav1.GetOptions{}); return err },
		"update the daemonset": func() error {
			_, err := cs.AppsV1().DaemonSets(chartNamespace).Update(c, &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: chartRelease}}, metav1.UpdateOptions{})
			return err
		},
		"list events": func() error { _, err := cs.CoreV1().Events("").List(c, metav1.ListOptions{}); return err },
		// Audit anchors: the daemon may create Events, never change or remove one.
		"get an event": func() error {
			_, err := cs.EventsV1().Events(chartNamespace).Get(c, "any", metav1.GetOptions{})
			return err
		},
		"update an event": func() error {
			_, err := cs.EventsV1().Events(chartNamespace).Update(c, &eventsv1.Event{ObjectMeta: metav1.ObjectMeta{Name: "any"}}, metav1.UpdateOptions{})
			return err
		},
		"patch an event": func() error {
			_, err := cs.EventsV1().Events(chartNamespace).Patch(c, "any", types.MergePatchType, []byte(`{"note":"x"}`), metav1.PatchOptions{})
			return err
		},
		"delete an event": func() error { return cs.EventsV1().Events(chartNamespace).Delete(c, "any", metav1.DeleteOptions{}) },
		"delete all events": func() error {
			return cs.EventsV1().Events(chartNamespace).DeleteCollection(c, metav1.DeleteOptions{}, metav1.ListOptions{})
		},
		"create a core event (the other API)": func() error {
			_, err := cs.CoreV1().Events(chartNamespace).Create(c, &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
			return err
		},
		"create an event in another namespace": func() error {
			_, err := cs.EventsV1().Events("default").Create(c, &eventsv1.Event{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
			return err
		},
	}
	names := make([]string, 0, len(refused))
	for name := range refused {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := refused[name](); !apierrors.IsForbidden(err) {
			t.Errorf("%s as the chart's ServiceAccount: %v, want Forbidden from the apiserver", name, err)
		}
	}
	t.Logf("refused as Forbidden by the apiserver: %v", names)
}

// podRun is how the daemon is started for a pod of the DaemonSet.
type podRun struct {
	config    string   // the rendered config, with container paths rewritten
	args      []string // the container's arguments after `serve --config`
	csiSocket string
}

// emulatePod lays out on the host what the container named container of pod would see, and
// returns the config and arguments to run the daemon with (see TestInstall_onRealAPIServer).
func emulatePod(t *testing.T, kube *framework.Kube, pod *corev1.Pod, container string, objs []*unstructured.Unstructured) podRun {
	t.Helper()
	var c *corev1.Container
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == container {
			c = &pod.Spec.Containers[i]
		}
	}
	if c == nil {
		t.Fatalf("no container %q in the pod", container)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		volumes[v.Name] = v
	}
	configMaps := map[string]*corev1.ConfigMap{}
	for _, o := range objs {
		if o.GetKind() == "ConfigMap" {
			configMaps[o.GetName()] = toTyped[corev1.ConfigMap](t, o)
		}
	}
	root := t.TempDir()
	mounts := map[string]string{} // container path -> host path
	for _, m := range c.VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok {
			t.Fatalf("mount %s names no volume", m.Name)
		}
		switch {
		case v.HostPath != nil:
			if err := os.MkdirAll(v.HostPath.Path, 0o755); err != nil {
				t.Fatal(err)
			}
			mounts[m.MountPath] = v.HostPath.Path
		case v.ConfigMap != nil:
			dir := filepath.Join(root, m.Name)
			mkdir(t, dir)
			if cm, ok := configMaps[v.ConfigMap.Name]; ok {
				for k, val := range cm.Data {
					writeFile(t, filepath.Join(dir, k), val)
				}
			} else if v.ConfigMap.Optional == nil || !*v.ConfigMap.Optional {
				t.Fatalf("volume %s: ConfigMap %s is not part of the chart", m.Name, v.ConfigMap.Name)
			}
			mounts[m.MountPath] = dir
		case v.Projected != nil:
			dir := filepath.Join(root, m.Name)
			mkdir(t, dir)
			for _, s := range v.Projected.Sources {
				switch {
				case s.ServiceAccountToken != nil:
					aud := kube.APIAudiences
					if s.ServiceAccountToken.Audience != "" {
						aud = []string{s.ServiceAccountToken.Audience}
					}
					ttl := time.Hour
					if s.ServiceAccountToken.ExpirationSeconds != nil {
						ttl = time.Duration(*s.ServiceAccountToken.ExpirationSeconds) * time.Second
					}
					tok, _ := kube.TokenRequest(t, pod.Namespace, pod.Spec.ServiceAccountName, aud, ttl, nil)
					remember(tok)
					writeFile(t, filepath.Join(dir, s.ServiceAccountToken.Path), tok)
				case s.ConfigMap != nil && s.ConfigMap.Name == "kube-root-ca.crt":
					writeFile(t, filepath.Join(dir, "ca.crt"), string(kube.CAPEM)) // what the root-CA publisher would hold
				case s.DownwardAPI != nil:
					writeFile(t, filepath.Join(dir, "namespace"), pod.Namespace)
				default:
					t.Fatalf("volume %s: projected source %+v not played by the test", m.Name, s)
				}
			}
			mounts[m.MountPath] = dir
		default:
			t.Fatalf("volume %s: type not played by the test", m.Name)
		}
	}
	// mapped turns a container path into the host path holding the same content; ok is false
	// when no mount covers it.
	mapped := func(p string) (string, bool) {
		best := ""
		for mp := range mounts {
			if (p == mp || strings.HasPrefix(p, mp+"/")) && len(mp) > len(best) {
				best = mp
			}
		}
		if best == "" {
			return p, false
		}
		return mounts[best] + strings.TrimPrefix(p, best), true
	}
	rewrite := func(p string) string { r, _ := mapped(p); return r }

	// The container's command line: `serve --config=<the ConfigMap's config.yaml>` and the rest
	// with $(VAR) expanded from the downward API, as kubelet does.
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			env[e.Name] = pod.Spec.NodeName
		}
	}
	if len(c.Args) == 0 || c.Args[0] != "serve" {
		t.Fatalf("container args %q do not start with serve", c.Args)
	}
	var args []string
	var configPath string
	for _, a := range c.Args[1:] {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			configPath = v
			continue
		}
		for k, v := range env {
			a = strings.ReplaceAll(a, "$("+k+")", v)
		}
		args = append(args, a)
	}
	cfgBytes, err := os.ReadFile(rewrite(configPath))
	if err != nil {
		t.Fatalf("the container's --config %s is not in its ConfigMap mount: %v", configPath, err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(cfgBytes, &cfg); err != nil {
		t.Fatal(err)
	}
	// Every path in the config must be inside one of the container's mounts: a path that is
	// not would name the test machine's file system, not the pod's. csi.kubeletRoot is the
	// one path the daemon only compares target paths with and never opens.
	var walk func(key string, v any) any
	walk = func(key string, v any) any {
		switch x := v.(type) {
		case string:
			if strings.HasPrefix(x, "/") {
				if r, ok := mapped(x); ok || key == "csi.kubeletRoot" {
					return r
				}
				t.Errorf("config %s: %s is in none of the container's mounts", key, x)
			}
		case map[string]any:
			for k, e := range x {
				x[k] = walk(strings.TrimPrefix(key+"."+k, "."), e)
			}
		case []any:
			for i, e := range x {
				x[i] = walk(key, e)
			}
		}
		return v
	}
	walk("", cfg)
	kubeSection, _ := cfg["kubernetes"].(map[string]any)
	if kubeSection["inCluster"] != true {
		t.Fatalf("the rendered config's kubernetes section is %v, want inCluster: true", kubeSection)
	}
	saDir := rewrite("/var/run/secrets/kubernetes.io/serviceaccount")
	kubeconfig := writeInClusterKubeconfig(t, kube.URL, filepath.Join(saDir, "token"), filepath.Join(saDir, "ca.crt"))
	cfg["kubernetes"] = map[string]any{"kubeconfig": kubeconfig}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	csiSection, _ := cfg["csi"].(map[string]any)
	sock, _ := csiSection["socket"].(string)
	if sock == "" {
		t.Fatal("the rendered config has no csi.socket")
	}
	return podRun{config: string(out), args: args, csiSocket: sock}
}

// writeInClusterKubeconfig is what rest.InClusterConfig builds: the apiserver, the mounted
// token file (re-read on rotation) and the mounted CA.
func writeInClusterKubeconfig(t *testing.T, server, tokenFile, caFile string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "in-cluster.kubeconfig")
	writeFile(t, p, fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: in-cluster, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: sa, user: {tokenFile: %q}}]
contexts: [{name: in-cluster, context: {cluster: in-cluster, user: sa}}]
current-context: in-cluster
`, server, caFile, tokenFile))
	return p
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
}

// unmountAtEnd detaches whatever the daemon mounted under dir once the test is over (it runs
// after the daemon's own cleanup, being registered before it).
func unmountAtEnd(t *testing.T, dir string) { t.Cleanup(func() { unmountUnder(t, dir) }) }

func createGrant(t *testing.T, kube *framework.Kube, doc string) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(kube.Config)
	if err != nil {
		t.Fatal(err)
	}
	gvr := schema.GroupVersionResource{Group: "keywarden.io", Version: "v1alpha1", Resource: "accessgrants"}
	if _, err := dyn.Resource(gvr).Create(ctx(t), grantObject(t, doc), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create AccessGrant: %v", err)
	}
}
