//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/keywarden/keywarden/e2e/framework"
)

// anchorRecord is the part of an anchor record this test reads (the format is documented in
// docs/security.md; e2e reads it as an operator's tool would).
type anchorRecord struct {
	Node string `json:"node"`
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// TestAuditAnchor_publishedAsCreateOnlyEvents: with audit.anchor on, the daemon publishes
// signed anchors of its audit log as Events in its namespace, with nothing but the chart's
// Role (create on events); its ServiceAccount cannot change or delete them; and
// `audit verify --anchor` over those Events finds entries cut from an export that plain
// verification accepts.
func TestAuditAnchor_publishedAsCreateOnlyEvents(t *testing.T) {
	kube := framework.StartKube(t, framework.KubeOptions{})
	createPodReaderRole(t, kube)
	const ns, sa, node = "keywarden-system", "keywarden", "anchor-node"
	// The namespace and the Role exist before the daemon starts, as the chart installs them.
	if _, err := kube.Client.CoreV1().Namespaces().Create(ctx(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The chart's Role, as rendered, bound to the daemon's ServiceAccount.
	objs := framework.RenderChart(t, framework.ChartOptions{Chart: chartDir(t)})
	role := toTyped[rbacv1.Role](t, findObject(t, objs, "Role", ""))
	role.Namespace, role.ResourceVersion = ns, ""
	if _, err := kube.Client.RbacV1().Roles(ns).Create(ctx(t), role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.Client.RbacV1().RoleBindings(ns).Create(ctx(t), &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{framework.ServiceAccountSubject(ns, sa)},
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
  mode: tokenreview
sources: {local: {enabled: true}}
audit:
  anchor: {enabled: true, interval: 10s, events: {namespace: %s}}
`, node, ns)
	d := framework.StartDaemon(t, framework.DaemonOptions{Kube: kube, Config: cfg, Namespace: ns, ServiceAccount: sa,
		ClusterRoles: []string{"system:auth-delegator", nodeReaderRole}})
	fingerprint := regexp.MustCompile(`"msg":"audit anchor key".*?"fingerprint":"([0-9a-f]{64})"`).FindStringSubmatch(d.Logs())
	if fingerprint == nil {
		t.Fatalf("the daemon did not log its anchor key's fingerprint:\n%s", tailLines(d.Logs(), 30))
	}

	// Audited admin actions move the head; the next anchor covers them.
	for i := range 3 {
		kw(t, d, "secret", "put", fmt.Sprintf("s%d", i), "v=x")
	}
	var anchors []anchorRecord
	var events *eventsv1.EventList
	waitFor(t, 30*time.Second, "an anchor Event covering the admin actions", func() bool {
		var err error
		events, err = kube.Client.EventsV1().Events(ns).List(ctx(t), metav1.ListOptions{LabelSelector: "keywarden.io/audit-anchor=true"})
		if err != nil {
			t.Fatal(err)
		}
		anchors = anchorsOf(t, events)
		return len(anchors) > 0 && anchors[len(anchors)-1].Seq >= 3
	})
	ev := events.Items[0]
	if ev.Reason != "AuditAnchor" || ev.ReportingController != "keywarden.io/audit" || ev.ReportingInstance != node || ev.Regarding.Namespace != ns {
		t.Errorf("anchor Event fields: reason %q controller %q instance %q regarding %+v", ev.Reason, ev.ReportingController, ev.ReportingInstance, ev.Regarding)
	}
	for _, a := range anchors {
		if a.Node != node || len(a.Hash) != 64 {
			t.Errorf("anchor %+v: want node %s and a hex SHA-256", a, node)
		}
	}
	if logs := d.Logs(); strings.Contains(logs, "audit anchor not published") || strings.Contains(logs, "forbidden") {
		t.Errorf("the daemon could not publish an anchor:\n%s", tailLines(logs, 30))
	}

	// The daemon's ServiceAccount cannot change or remove a published anchor.
	tok, _ := kube.TokenRequest(t, ns, sa, kube.APIAudiences, time.Hour, nil)
	remember(tok)
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: kube.URL, BearerToken: tok, TLSClientConfig: rest.TLSClientConfig{CAData: kube.CAPEM}, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c := ctx(t)
	name := ev.Name
	evs := cs.EventsV1().Events(ns)
	changed := ev.DeepCopy()
	changed.Annotations["keywarden.io/audit-anchor"] = `{"v":1}`
	for what, call := range map[string]func() error{
		"update": func() error { _, err := evs.Update(c, changed, metav1.UpdateOptions{}); return err },
		"patch": func() error {
			_, err := evs.Patch(c, name, types.MergePatchType, []byte(`{"metadata":{"annotations":{"keywarden.io/audit-anchor":"{}"}}}`), metav1.PatchOptions{})
			return err
		},
		"delete":            func() error { return evs.Delete(c, name, metav1.DeleteOptions{}) },
		"delete collection": func() error { return evs.DeleteCollection(c, metav1.DeleteOptions{}, metav1.ListOptions{}) },
		"get":               func() error { _, err := evs.Get(c, name, metav1.GetOptions{}); return err },
	} {
		if err := call(); !apierrors.IsForbidden(err) {
			t.Errorf("%s an anchor Event as the daemon's ServiceAccount: %v, want Forbidden", what, err)
		}
	}
	after, err := kube.Client.EventsV1().Events(ns).Get(ctx(t), name, metav1.GetOptions{})
	if err != nil || after.Annotations["keywarden.io/audit-anchor"] != ev.Annotations["keywarden.io/audit-anchor"] {
		t.Fatalf("the anchor Event changed or went away: %v", err)
	}

	// An operator's check: the export and the Events, as `kubectl get events -o json` gives them.
	dir := t.TempDir()
	exportFile := filepath.Join(dir, "export.jsonl")
	kw(t, d, "audit", "export", "--out", exportFile)
	eventsJSON, err := json.Marshal(struct {
		Kind  string           `json:"kind"`
		Items []eventsv1.Event `json:"items"`
	}{"EventList", events.Items})
	if err != nil {
		t.Fatal(err)
	}
	eventsFile := filepath.Join(dir, "events.json")
	writeFile(t, eventsFile, string(eventsJSON))
	out := kw(t, d, "audit", "verify", "--file", exportFile, "--anchor", eventsFile, "--anchor-key", fingerprint[1])
	if !strings.Contains(out, "anchors: OK") || !strings.Contains(out, "(pinned)") {
		t.Fatalf("audit verify --anchor:\n%s", out)
	}
	t.Logf("%s", out)
	// The same against the running daemon's log (its export, checked by the command).
	out = kw(t, d, "audit", "verify", "--anchor", eventsFile, "--anchor-key", fingerprint[1])
	if !strings.Contains(out, "audit log: OK") || !strings.Contains(out, "anchors: OK") {
		t.Fatalf("audit verify --anchor against the daemon:\n%s", out)
	}

	// Entries cut from the end of the export: plain verification cannot tell, the anchors do.
	export, err := os.ReadFile(exportFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(strings.TrimSuffix(string(export), "\n"), "\n")
	latest := anchors[len(anchors)-1].Seq
	cut := filepath.Join(dir, "cut.jsonl")
	writeFile(t, cut, strings.Join(lines[:latest-1], ""))
	kw(t, d, "audit", "verify", "--file", cut)
	out, err = kwErr(t, d, "audit", "verify", "--file", cut, "--anchor", eventsFile, "--anchor-key", fingerprint[1])
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(out, "TAMPERED") || !strings.Contains(out, "removed") {
		t.Fatalf("a cut export with anchors: %v\n%s", err, out)
	}

	// The metrics say anchors go out, and when the last one did.
	ex := scrape(t, d.HealthAddr)
	if v := ex.values[`keywarden_audit_anchors_total{result="ok"}`]; v < 2 {
		t.Errorf(`keywarden_audit_anchors_total{result="ok"} = %v, want ≥ 2`, v)
	}
	if v := ex.values[`keywarden_audit_anchors_total{result="error"}`]; v != 0 {
		t.Errorf(`keywarden_audit_anchors_total{result="error"} = %v, want 0`, v)
	}
	if v := ex.values["keywarden_audit_anchor_last_timestamp_seconds"]; time.Since(time.Unix(int64(v), 0)) > time.Minute {
		t.Errorf("keywarden_audit_anchor_last_timestamp_seconds = %v, want within the last minute", v)
	}

	// Stopping the daemon anchors the final head.
	before := len(anchors)
	d.Process.Stop()
	list, err := kube.Client.EventsV1().Events(ns).List(ctx(t), metav1.ListOptions{LabelSelector: "keywarden.io/audit-anchor=true"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(anchorsOf(t, list)); n <= before {
		t.Errorf("%d anchors after the daemon stopped, %d before: want one more at shutdown", n, before)
	}
}

func anchorsOf(t *testing.T, list *eventsv1.EventList) []anchorRecord {
	t.Helper()
	var out []anchorRecord
	for _, e := range list.Items {
		var a anchorRecord
		if err := json.NewDecoder(bytes.NewReader([]byte(e.Annotations["keywarden.io/audit-anchor"]))).Decode(&a); err != nil {
			t.Fatalf("event %s: anchor annotation: %v", e.Name, err)
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out
}
