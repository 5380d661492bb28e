package framework

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// Helm runs the pinned helm binary with its cache, config and data directories in a private
// temp dir (nothing of the user's helm setup leaks in) and returns stdout and stderr. A
// non-zero exit is returned as an error that carries stderr.
func Helm(t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	bin := ToolPath(t, ToolHelm)
	home := t.TempDir()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
		"KUBECONFIG="+filepath.Join(home, "no-kubeconfig"), // `helm template` must not need a cluster
	)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), errb.String(), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), errb.String(), nil
}

// ChartOptions configures RenderChart.
type ChartOptions struct {
	// Chart is the chart directory; required.
	Chart string
	// Release and Namespace of the rendered release; defaults "keywarden" and
	// "keywarden-system".
	Release, Namespace string
	// ValuesFiles are passed as -f, in order.
	ValuesFiles []string
	// Set are passed as --set, in order.
	Set []string
}

// RenderChart runs `helm template` and decodes every rendered object.
func RenderChart(t testing.TB, o ChartOptions) []*unstructured.Unstructured {
	t.Helper()
	if o.Release == "" {
		o.Release = "keywarden"
	}
	if o.Namespace == "" {
		o.Namespace = "keywarden-system"
	}
	args := []string{"template", o.Release, o.Chart, "--namespace", o.Namespace}
	for _, f := range o.ValuesFiles {
		args = append(args, "-f", f)
	}
	for _, s := range o.Set {
		args = append(args, "--set", s)
	}
	out, _, err := Helm(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := DecodeManifests([]byte(out))
	if err != nil {
		t.Fatalf("decode rendered chart: %v", err)
	}
	return objs
}

// DecodeManifests decodes a multi-document YAML stream into objects, skipping empty
// documents.
func DecodeManifests(data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetKind() == "" || u.GetAPIVersion() == "" {
			return nil, fmt.Errorf("a document has no kind or apiVersion: %v", m)
		}
		out = append(out, u)
	}
}

// Warnings collects the warning headers the apiserver sends (deprecations, Pod Security
// `warn` mode violations, …).
type Warnings struct {
	mu   sync.Mutex
	list []string
}

// HandleWarningHeader implements rest.WarningHandler.
func (w *Warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

// List returns the warnings so far, sorted.
func (w *Warnings) List() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := append([]string(nil), w.list...)
	sort.Strings(out)
	return out
}

// ApplyResult is what the apiserver answered for one object.
type ApplyResult struct {
	Object   *unstructured.Unstructured
	Warnings []string
}

// Apply applies objects with server-side apply (field manager "keywarden-e2e"), so the
// apiserver validates each against its schema and runs admission. CustomResourceDefinitions
// go first and are waited for until Established (30 s bound) so objects of their kinds can
// follow. It fails the test on the first object the apiserver refuses, naming it.
func (k *Kube) Apply(t testing.TB, objs []*unstructured.Unstructured) map[string]ApplyResult {
	t.Helper()
	var crds, rest []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" {
			crds = append(crds, o)
		} else {
			rest = append(rest, o)
		}
	}
	results := map[string]ApplyResult{}
	for _, o := range crds {
		results[ObjectKey(o)] = k.applyOne(t, o)
	}
	for _, o := range crds {
		k.WaitCRDEstablished(t, o.GetName())
	}
	for _, o := range rest {
		results[ObjectKey(o)] = k.applyOne(t, o)
	}
	return results
}

// ObjectKey names an object as Kind/namespace/name (namespace empty for cluster objects).
func ObjectKey(o *unstructured.Unstructured) string {
	return o.GetKind() + "/" + o.GetNamespace() + "/" + o.GetName()
}

func (k *Kube) applyOne(t testing.TB, o *unstructured.Unstructured) ApplyResult {
	t.Helper()
	ri, w, err := k.clientFor(o)
	if err != nil {
		t.Fatalf("apply %s: %v", ObjectKey(o), err)
	}
	var got *unstructured.Unstructured
	// Right after a CRD is Established its first writes can answer 429 or NotFound for a
	// moment: retry those, bounded.
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err = ri.Apply(ctxT(t), o.GetName(), o, metav1.ApplyOptions{FieldManager: "keywarden-e2e", Force: true})
		if err == nil || time.Now().After(deadline) || !(apierrors.IsTooManyRequests(err) || apierrors.IsNotFound(err)) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("the apiserver refused %s: %v", ObjectKey(o), err)
	}
	return ApplyResult{Object: got, Warnings: w.List()}
}

// DryRunCreate creates o with dryRun=All: the apiserver runs validation and every admission
// plugin (Pod Security, Priority, ServiceAccount, …) without storing anything. It returns the
// object as admission left it, the warnings, and the apiserver's error.
func (k *Kube) DryRunCreate(t testing.TB, o *unstructured.Unstructured) (*unstructured.Unstructured, []string, error) {
	t.Helper()
	ri, w, err := k.clientFor(o)
	if err != nil {
		return nil, nil, err
	}
	got, err := ri.Create(ctxT(t), o, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	return got, w.List(), err
}

// clientFor is a client for o's resource whose warnings are collected in w.
func (k *Kube) clientFor(o *unstructured.Unstructured) (dynamic.ResourceInterface, *Warnings, error) {
	w := &Warnings{}
	cfg := rest.CopyConfig(k.Config)
	cfg.WarningHandler = w
	ri, err := k.resourceFor(cfg, o)
	return ri, w, err
}

// resourceFor maps o's kind to its resource with fresh discovery (CRDs may have just been
// added) and returns a client for it, namespaced when the resource is.
func (k *Kube) resourceFor(cfg *rest.Config, o *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	gvk := o.GroupVersionKind()
	m, err := mapper.RESTMapping(schema.GroupKind{Group: gvk.Group, Kind: gvk.Kind}, gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", gvk, err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := o.GetNamespace()
		if ns == "" {
			return nil, fmt.Errorf("%s is namespaced but has no namespace", ObjectKey(o))
		}
		return dyn.Resource(m.Resource).Namespace(ns), nil
	}
	return dyn.Resource(m.Resource), nil
}

// WaitCRDEstablished waits (30 s bound) until the CRD's Established condition is True.
func (k *Kube) WaitCRDEstablished(t testing.TB, name string) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	gvr := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		u, err := dyn.Resource(gvr).Get(ctx, name, metav1.GetOptions{})
		if err == nil && CRDEstablished(u) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("CRD %s not Established within 30s (last error: %v)", name, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// CRDEstablished reports whether a CustomResourceDefinition object's Established condition is
// True.
func CRDEstablished(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}
