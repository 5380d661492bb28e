package grant

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"sigs.k8s.io/yaml"

	"github.com/keywarden/keywarden/internal/testlog"
)

func unstructuredGrant(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: m}
}

type setRecorder struct {
	mu     sync.Mutex
	sets   []*Set
	refuse error
}

func (r *setRecorder) onChange(s *Set) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refuse != nil {
		return r.refuse
	}
	r.sets = append(r.sets, s)
	return nil
}

func (r *setRecorder) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.sets) == 0 {
		return nil
	}
	var out []string
	for _, g := range r.sets[len(r.sets)-1].Grants() {
		out = append(out, g.Name)
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestInformerSource_Run_appliesValidGrantsAndSkipsInvalid(t *testing.T) {
	good := unstructuredGrant(t, grantDoc("good", specOf("subjects: "+okSubjects, "secrets: "+okSecrets)))
	bad := unstructuredGrant(t, grantDoc("bad", specOf("subjects: []", "secrets: "+okSecrets)))
	scheme := runtime.NewScheme()
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme,
		map[schema.GroupVersionResource]string{GroupVersionResource: "AccessGrantList"}, good, bad)
	logs := &testlog.Buffer{}
	rec := &setRecorder{}
	src, err := NewInformerSource(InformerSourceConfig{Client: client, OnChange: rec.onChange, Logger: slog.New(slog.NewJSONHandler(logs, nil)), Settle: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- src.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitFor(t, "first sync", src.HasSynced)
	if got := rec.names(); len(got) != 1 || got[0] != "good" {
		t.Fatalf("grants %v, want [good]", got)
	}
	if p := src.Invalid()["bad"]; !strings.Contains(p, "at least one subject") {
		t.Errorf("invalid[bad] = %q", p)
	}
	if !strings.Contains(logs.String(), `"grant":"bad"`) {
		t.Errorf("skipped grant not logged: %s", logs)
	}

	// A new grant takes effect; a deleted one is withdrawn.
	res := client.Resource(GroupVersionResource)
	other := unstructuredGrant(t, grantDoc("other", specOf("subjects: "+okSubjects, "secrets: [{name: api, source: {local: {}}}]")))
	if _, err := res.Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "grant other", func() bool { return strings.Join(rec.names(), ",") == "good,other" })
	if err := res.Delete(ctx, "good", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "grant good withdrawn", func() bool { return strings.Join(rec.names(), ",") == "other" })
	if src.Current().Len() != 1 {
		t.Errorf("Current has %d grants", src.Current().Len())
	}
	// Fixing the bad grant brings it in.
	fixed := unstructuredGrant(t, grantDoc("bad", specOf("subjects: "+okSubjects, "secrets: "+okSecrets)))
	if _, err := res.Update(ctx, fixed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "fixed grant", func() bool { return strings.Join(rec.names(), ",") == "bad,other" })
	if len(src.Invalid()) != 0 {
		t.Errorf("still invalid: %v", src.Invalid())
	}
}

func TestInformerSource_Run_refusedSetKeepsPrevious(t *testing.T) {
	good := unstructuredGrant(t, grantDoc("good", specOf("subjects: "+okSubjects, "secrets: "+okSecrets)))
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{GroupVersionResource: "AccessGrantList"}, good)
	rec := &setRecorder{refuse: errors.New(`duplicate access grant name: "good" defined by more than one source`)}
	logs := &testlog.Buffer{}
	src, _ := NewInformerSource(InformerSourceConfig{Client: client, OnChange: rec.onChange, Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- src.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "sync", src.HasSynced)
	if src.Current().Len() != 0 {
		t.Error("a set the broker refused became current")
	}
	if !strings.Contains(logs.String(), "refused by the broker") {
		t.Errorf("refusal not logged: %s", logs)
	}
}

// FromUnstructured is the parser of apiserver objects: bad cases are refused with the field.
func TestFromUnstructured_badObjects(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"empty subjects", grantDoc("g", specOf("subjects: []", "secrets: "+okSecrets)), "at least one subject"},
		{"subject with both forms", grantDoc("g", specOf(`subjects: [{namespace: a, serviceAccount: b, spiffeID: "spiffe://x/y"}]`, "secrets: "+okSecrets)), "not both"},
		{"subject with neither form", grantDoc("g", specOf(`subjects: [{}]`, "secrets: "+okSecrets)), "set either"},
		{"duplicate secret names", grantDoc("g", specOf("subjects: "+okSubjects, "secrets: [{name: db, source: {local: {}}}, {name: db, source: {local: {}}}]")), "duplicate secret name"},
		{"bad duration", grantDoc("g", specOf("subjects: "+okSubjects, `secrets: [{name: db, source: {local: {}}, refresh: {interval: "soon"}}]`)), "does not convert"},
		{"file path with ..", grantDoc("g", specOf("subjects: "+okSubjects, `secrets: [{name: db, source: {local: {}}, files: [{key: k, path: "../etc/passwd"}]}]`)), `".." components`},
		{"unknown field", grantDoc("g", specOf("subjects: "+okSubjects, "secrets: "+okSecrets, "extra: 1")), "unknown field"},
		{"namespaced", strings.Replace(grantDoc("g", specOf("subjects: "+okSubjects, "secrets: "+okSecrets)), "metadata: {name: g}", "metadata: {name: g, namespace: x}", 1), "cluster-scoped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := FromUnstructured(unstructuredGrant(t, tt.doc))
			if !errors.Is(err, ErrInvalidGrant) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("FromUnstructured = %v, want ErrInvalidGrant containing %q", err, tt.want)
			}
		})
	}
	g, err := FromUnstructured(unstructuredGrant(t, grantDoc("ok", specOf("subjects: "+okSubjects, "secrets: "+okSecrets))))
	if err != nil || g.Name != "ok" {
		t.Fatalf("valid grant: %v", err)
	}
}

// FuzzFromUnstructured feeds arbitrary objects, as the apiserver could hand them over, to the
// converter: it must never panic, and whatever it accepts must validate.
func FuzzFromUnstructured(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"keywarden.io/v1alpha1","kind":"AccessGrant","metadata":{"name":"g"},"spec":{"subjects":[{"namespace":"a","serviceAccount":"b"}],"secrets":[{"name":"db","source":{"local":{}}}]}}`))
	f.Add([]byte(`{"metadata":{"name":"g"},"spec":{"subjects":[{"spiffeID":1}],"secrets":null}}`))
	f.Add([]byte(`{"spec":{"secrets":[{"name":"db","ttl":{"min":"x"}}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			return
		}
		g, err := FromUnstructured(&unstructured.Unstructured{Object: m})
		if err == nil {
			if verr := Validate(g); verr != nil {
				t.Fatalf("accepted an invalid grant: %v", verr)
			}
		}
	})
}

// lastSet is the Set last handed to OnChange.
func (r *setRecorder) lastSet() *Set {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.sets) == 0 {
		return nil
	}
	return r.sets[len(r.sets)-1]
}

func withUID(u *unstructured.Unstructured, uid string) *unstructured.Unstructured {
	u.SetUID(types.UID(uid))
	return u
}

func TestInformerSource_Run_invalidUpdateKeepsLastValidVersion(t *testing.T) {
	allowDoc := grantDoc("allow-db", specOf("subjects: "+okSubjects, "secrets: "+okSecrets))
	denyDoc := grantDoc("deny-db", specOf("effect: Deny", "subjects: "+okSubjects, "secrets: "+okSecrets))
	// Passes a CRD schema but not the daemon's validation: no subject.
	brokenDenyDoc := grantDoc("deny-db", specOf("effect: Deny", "subjects: []", "secrets: "+okSecrets))
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{GroupVersionResource: "AccessGrantList"},
		withUID(unstructuredGrant(t, allowDoc), "uid-allow"), withUID(unstructuredGrant(t, denyDoc), "uid-deny-1"))
	logs := &testlog.Buffer{}
	rec := &setRecorder{}
	src, err := NewInformerSource(InformerSourceConfig{Client: client, OnChange: rec.onChange, Logger: slog.New(slog.NewJSONHandler(logs, nil)), Settle: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- src.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "first sync", src.HasSynced)
	denied := func() bool {
		s := rec.lastSet()
		return s != nil && !s.Evaluate(Request{Namespace: "demo", ServiceAccount: "app", Secret: "db", Delivery: DeliveryGRPC}).Allowed
	}
	if !denied() {
		t.Fatal("the Deny grant is not in force")
	}
	res := client.Resource(GroupVersionResource)
	sets := func() int { rec.mu.Lock(); defer rec.mu.Unlock(); return len(rec.sets) }

	// The Deny grant is edited into something invalid: its last valid version stays.
	before := sets()
	if _, err := res.Update(ctx, withUID(unstructuredGrant(t, brokenDenyDoc), "uid-deny-1"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the invalid update seen", func() bool { return sets() > before && src.Invalid()["deny-db"] != "" })
	if !denied() || strings.Join(rec.names(), ",") != "allow-db,deny-db" {
		t.Fatalf("an invalid update of a Deny grant widened access: grants %v", rec.names())
	}
	if got := src.Stale(); len(got) != 1 || got[0] != "deny-db" {
		t.Errorf("Stale = %v", got)
	}
	if !strings.Contains(logs.String(), "last valid version stays in force") {
		t.Errorf("kept version not logged: %s", logs)
	}

	// A brand-new object that never validated is still skipped.
	if _, err := res.Create(ctx, withUID(unstructuredGrant(t, grantDoc("new-bad", specOf("subjects: []", "secrets: "+okSecrets))), "uid-new"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new invalid object seen", func() bool { return src.Invalid()["new-bad"] != "" })
	if strings.Join(rec.names(), ",") != "allow-db,deny-db" {
		t.Fatalf("grants %v", rec.names())
	}
	if !strings.Contains(logs.String(), `"accessgrant skipped: it does not validate; the other grants stay in force","grant":"new-bad"`) {
		t.Errorf("skipped object not logged: %s", logs)
	}

	// Deleted and re-created (a new UID) invalid: a new object, so nothing is kept.
	if err := res.Delete(ctx, "deny-db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := res.Create(ctx, withUID(unstructuredGrant(t, brokenDenyDoc), "uid-deny-2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the re-created object replaces the old", func() bool { return strings.Join(rec.names(), ",") == "allow-db" })
	if len(src.Stale()) != 0 {
		t.Errorf("Stale after re-create = %v", src.Stale())
	}

	// Fixed, broken again (its last valid version stays), then deleted: withdrawn.
	if _, err := res.Update(ctx, withUID(unstructuredGrant(t, denyDoc), "uid-deny-2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the fixed Deny grant", func() bool { return strings.Join(rec.names(), ",") == "allow-db,deny-db" })
	if _, err := res.Update(ctx, withUID(unstructuredGrant(t, brokenDenyDoc), "uid-deny-2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "broken again", func() bool { return len(src.Stale()) == 1 })
	if err := res.Delete(ctx, "deny-db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the deleted grant withdrawn", func() bool { return strings.Join(rec.names(), ",") == "allow-db" })
	if len(src.Stale()) != 0 || src.Invalid()["deny-db"] != "" {
		t.Errorf("deleted object still tracked: stale %v invalid %v", src.Stale(), src.Invalid())
	}
}
