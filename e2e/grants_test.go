//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/keywarden/keywarden/client"
	"github.com/keywarden/keywarden/e2e/framework"
)

var (
	crdGVR   = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	grantGVR = schema.GroupVersionResource{Group: "keywarden.io", Version: "v1alpha1", Resource: "accessgrants"}
)

const grantsSecret = "e2e-grants-secret-3f9a"

// installCRD creates the generated AccessGrant CRD and waits until it is Established and
// served.
func installCRD(t *testing.T, dc dynamic.Interface) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(framework.RepoRoot(t), "deploy", "crd", "keywarden.io_accessgrants.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := yaml.Unmarshal(raw, &obj); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.Resource(crdGVR).Create(ctx(t), &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("the generated CRD does not install: %v", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := dc.Resource(crdGVR).Get(ctx(t), "accessgrants.keywarden.io", metav1.GetOptions{})
		if err == nil && framework.CRDEstablished(got) {
			// The first LIST right after Established can answer 429: retry until it works.
			if _, err := dc.Resource(grantGVR).List(ctx(t), metav1.ListOptions{}); err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("CRD not established and served within 60s: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func grantObject(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatalf("test manifest: %v", err)
	}
	return &unstructured.Unstructured{Object: m}
}

func grantDoc(name, spec string) string {
	return fmt.Sprintf("apiVersion: keywarden.io/v1alpha1\nkind: AccessGrant\nmetadata: {name: %s}\nspec: %s\n", name, spec)
}

func TestGrants_CRD_refusesInvalidObjects(t *testing.T) {
	kube := framework.StartKube(t, framework.KubeOptions{})
	dc := dynamic.NewForConfigOrDie(kube.Config)
	installCRD(t, dc)
	const subj = `subjects: [{namespace: demo, serviceAccount: app}]`
	const sec = `secrets: [{name: db, source: {local: {}}}]`
	tests := []struct {
		name, spec, want string
	}{
		{"empty subjects", `{subjects: [], ` + sec + `}`, "spec.subjects"},
		{"no subjects", `{` + sec + `}`, "spec.subjects: Required value"},
		{"subject with both forms", `{subjects: [{namespace: a, serviceAccount: b, spiffeID: "spiffe://cluster.local/x"}], ` + sec + `}`, "not both and not neither"},
		{"subject with neither form", `{subjects: [{}], ` + sec + `}`, "not both and not neither"},
		{"namespace without service account", `{subjects: [{namespace: a}], ` + sec + `}`, "namespace and serviceAccount go together"},
		{"bad spiffe id", `{subjects: [{spiffeID: "https://x/y"}], ` + sec + `}`, "must be spiffe://"},
		{"duplicate secret names", `{` + subj + `, secrets: [{name: db, source: {local: {}}}, {name: db, source: {local: {}}}]}`, "Duplicate value"},
		{"bad secret name", `{` + subj + `, secrets: [{name: "../db", source: {local: {}}}]}`, "must be lower case letters"},
		{"two sources", `{` + subj + `, secrets: [{name: db, source: {local: {}, vault: {mount: kv, path: x}}}]}`, "source"},
		{"bad duration", `{` + subj + `, secrets: [{name: db, source: {local: {}}, refresh: {interval: "soon"}}]}`, "must be a duration of at least 1s"},
		{"too short refresh", `{` + subj + `, secrets: [{name: db, source: {local: {}}, refresh: {interval: "10ms"}}]}`, "must be a duration of at least 1s"},
		{"ttl min above max", `{` + subj + `, secrets: [{name: db, source: {local: {}}, ttl: {min: 2h, max: 1h}}]}`, "min must not be greater than max"},
		{"file path with ..", `{` + subj + `, secrets: [{name: db, source: {local: {}}, files: [{key: k, path: "../etc/passwd"}]}]}`, "must be a relative path"},
		{"file path ..data", `{` + subj + `, secrets: [{name: db, source: {local: {}}, files: [{key: k, path: "a/..data"}]}]}`, "must be a relative path"},
		{"absolute file path", `{` + subj + `, secrets: [{name: db, source: {local: {}}, files: [{key: k, path: "/etc/x"}]}]}`, "must be a relative path"},
		{"bad effect", `{effect: Maybe, ` + subj + `, ` + sec + `}`, "Unsupported value"},
		{"unknown field", `{` + subj + `, ` + sec + `, extra: 1}`, `unknown field "spec.extra"`},
	}
	res := dc.Resource(grantGVR)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj := grantObject(t, grantDoc(fmt.Sprintf("bad-%d", i), tt.spec))
			// kubectl's default: unknown fields are an error, not a warning.
			_, err := res.Create(ctx(t), obj, metav1.CreateOptions{FieldValidation: "Strict"})
			if err == nil {
				t.Fatalf("the apiserver accepted an invalid AccessGrant")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not say %q", err, tt.want)
			}
			t.Logf("refused: %v", err)
		})
	}
	// A valid grant passes the same schema.
	ok := grantObject(t, grantDoc("good", `{`+subj+`, secrets: [{name: db, source: {local: {}}, ttl: {min: 5m, max: 1h}, refresh: {interval: 30s}, files: [{key: password, path: db/password}, {key: user, path: .hidden}]}]}`))
	if _, err := res.Create(ctx(t), ok, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil {
		t.Fatalf("valid grant refused: %v", err)
	}
}

// grantsDaemon runs a daemon with grants from the apiserver, identity from a JWKS file fetched
// from the apiserver's OIDC endpoint, and the embedded store holding secret db.
func grantsDaemon(t *testing.T, kube *framework.Kube, node string) *framework.Daemon {
	t.Helper()
	hc := framework.HTTPClient(kube.CAPEM)
	resp, err := hc.Get(kube.Issuer + "/openid/v1/jwks")
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("fetch JWKS: %v %s", err, resp.Status)
	}
	jwksFile := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(jwksFile, jwks, 0o600); err != nil {
		t.Fatal(err)
	}
	const role = "keywarden-e2e-accessgrant-reader"
	if _, err := kube.Client.RbacV1().ClusterRoles().Create(ctx(t), &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: role},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"keywarden.io"}, Resources: []string{"accessgrants"}, Verbs: []string{"get", "list", "watch"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`dataDir: {{.Dir}}/data
socket: {path: {{.Dir}}/kw.sock}
adminSocket: {path: {{.Dir}}/admin.sock}
nodeName: %s
kubernetes: {kubeconfig: {{.KubeconfigFile}}}
identity:
  issuer: {{.Issuer}}
  jwksFile: %s
  nodeBinding: false
grants: {kubernetes: true}
sources: {local: {enabled: true}}
audit: {flushInterval: 20ms}
log: {level: debug}
`, node, jwksFile)
	d := framework.StartDaemon(t, framework.DaemonOptions{Kube: kube, Config: cfg, ClusterRoles: []string{"system:auth-delegator", role}})
	kw(t, d, "secret", "put", "db", "password="+grantsSecret)
	return d
}

// kw runs the keywarden CLI against d's admin socket.
func kw(t *testing.T, d *framework.Daemon, args ...string) string {
	t.Helper()
	out, err := kwErr(t, d, args...)
	if err != nil {
		t.Fatalf("keywarden %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func kwErr(t *testing.T, d *framework.Daemon, args ...string) (string, error) {
	args = append(args, "--admin-socket", filepath.Join(d.Dir, "admin.sock"))
	out, err := exec.Command(framework.DaemonBinary(t), args...).CombinedOutput()
	return string(out), err
}

func TestGrants_CRD_applyGrantsAndDeleteRevokes(t *testing.T) {
	kube := framework.StartKube(t, framework.KubeOptions{})
	dc := dynamic.NewForConfigOrDie(kube.Config)
	installCRD(t, dc)
	kl := framework.NewKubelet(t, kube, framework.KubeletOptions{})
	ns := kube.CreateNamespace(t, "grants")
	pod := kl.CreatePod(t, ns, "app")
	d := grantsDaemon(t, kube, kl.NodeName)

	c, err := client.New(filepath.Join(d.Dir, "kw.sock"), client.WithToken(kl.PodToken(t, pod, "keywarden").Token))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	get := func() error {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := c.Get(cctx, "db")
		if err == nil && string(s.Data["password"]) != grantsSecret {
			t.Fatal("wrong secret value")
		}
		return err
	}
	// No grant, no secret.
	expectCode(t, get(), codes.PermissionDenied, "permission denied")

	res := dc.Resource(grantGVR)
	g := grantObject(t, grantDoc("app-db", fmt.Sprintf(`{subjects: [{namespace: %s, serviceAccount: app}], secrets: [{name: db, source: {local: {}}}]}`, ns)))
	applied := time.Now()
	if _, err := res.Create(ctx(t), g, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the applied grant to let the pod read its secret", func() bool { return get() == nil })
	t.Logf("grant applied → secret readable after %s", time.Since(applied).Round(10*time.Millisecond))

	list := kw(t, d, "grant", "list")
	if !strings.Contains(list, "app-db") || !strings.Contains(list, "kubernetes") {
		t.Fatalf("grant list:\n%s", list)
	}
	t.Logf("keywarden grant explain (allowed):\n%s", kw(t, d, "grant", "explain", "--namespace", ns, "--service-account", "app", "--secret", "db"))
	other, _ := kwErr(t, d, "grant", "explain", "--namespace", ns, "--service-account", "other", "--secret", "db")
	t.Logf("keywarden grant explain (denied):\n%s", other)

	// An open watch stream ends with PermissionDenied once the grant is deleted.
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	first := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- c.Watch(wctx, []string{"db"}, func(*client.Secret) error {
			select {
			case first <- struct{}{}:
			default:
			}
			return nil
		})
	}()
	select {
	case <-first:
	case err := <-done:
		t.Fatalf("watch ended: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("watch delivered nothing")
	}
	deleted := time.Now()
	if err := res.Delete(ctx(t), "app-db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		expectCode(t, err, codes.PermissionDenied, "")
		t.Logf("grant deleted → watch ended after %s: %v", time.Since(deleted).Round(10*time.Millisecond), err)
	case <-time.After(20 * time.Second):
		t.Fatal("watch stream survived the deleted grant")
	}
	expectCode(t, get(), codes.PermissionDenied, "permission denied")

	// Every decision was recorded, and the log verifies.
	verify := kw(t, d, "audit", "verify")
	if !strings.Contains(verify, "audit log: OK") {
		t.Fatalf("audit verify:\n%s", verify)
	}
	tail := kw(t, d, "audit", "tail", "--last", "200")
	for _, want := range []string{"decision", "deny", "delivery", "app-db"} {
		if !strings.Contains(tail, want) {
			t.Errorf("audit tail lacks %q:\n%s", want, tail)
		}
	}
	t.Logf("keywarden audit verify: %s", strings.TrimSpace(verify))
	exported := kw(t, d, "audit", "export")
	if strings.Contains(exported, grantsSecret) {
		t.Fatal("the audit log holds the secret value")
	}
}

func TestGrants_CRD_invalidObjectSkippedOthersStay(t *testing.T) {
	kube := framework.StartKube(t, framework.KubeOptions{})
	dc := dynamic.NewForConfigOrDie(kube.Config)
	installCRD(t, dc)
	kl := framework.NewKubelet(t, kube, framework.KubeletOptions{})
	ns := kube.CreateNamespace(t, "grants")
	pod := kl.CreatePod(t, ns, "app")
	d := grantsDaemon(t, kube, kl.NodeName)
	res := dc.Resource(grantGVR)
	// Passes the CRD schema but not the daemon's validation (a wildcard inside a segment).
	bad := grantObject(t, grantDoc("half-wild", `{subjects: [{spiffeID: "spiffe://cluster.local/ns/a*/sa/x"}], secrets: [{name: db, source: {local: {}}}]}`))
	good := grantObject(t, grantDoc("app-db", fmt.Sprintf(`{subjects: [{namespace: %s, serviceAccount: app}], secrets: [{name: db, source: {local: {}}}]}`, ns)))
	for _, o := range []*unstructured.Unstructured{bad, good} {
		if _, err := res.Create(ctx(t), o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := client.New(filepath.Join(d.Dir, "kw.sock"), client.WithToken(kl.PodToken(t, pod, "keywarden").Token))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, 20*time.Second, "the valid grant beside an invalid one", func() bool {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.Get(cctx, "db")
		return err == nil
	})
	if list := kw(t, d, "grant", "list"); strings.Contains(list, "half-wild") {
		t.Fatalf("invalid grant in force:\n%s", list)
	}
	if !strings.Contains(d.Process.Log(), "accessgrant skipped") {
		t.Error("the skipped grant was not logged")
	}

	// A Deny grant edited into something that does not validate keeps its last valid version
	// in force: the edit must not widen access.
	get := func() error {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.Get(cctx, "db")
		return err
	}
	deny := grantObject(t, grantDoc("deny-app", fmt.Sprintf(`{effect: Deny, subjects: [{namespace: %s, serviceAccount: app}], secrets: [{name: db, source: {local: {}}}]}`, ns)))
	if _, err := res.Create(ctx(t), deny, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the Deny grant in force", func() bool { return status.Code(get()) == codes.PermissionDenied })
	cur, err := res.Get(ctx(t), "deny-app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := unstructured.SetNestedSlice(cur.Object, []any{map[string]any{"spiffeID": "spiffe://cluster.local/ns/a*/sa/x"}}, "spec", "subjects"); err != nil {
		t.Fatal(err)
	}
	if _, err := res.Update(ctx(t), cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the invalid update seen", func() bool {
		return strings.Contains(d.Process.Log(), "last valid version stays in force")
	})
	expectCode(t, get(), codes.PermissionDenied, "permission denied")
	if list := kw(t, d, "grant", "list"); !strings.Contains(list, "deny-app") {
		t.Fatalf("the last valid Deny grant is not listed:\n%s", list)
	}
}

func waitFor(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", bound, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
