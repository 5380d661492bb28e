package identity

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
)

func TestPodIndex_PodByUID_followsTheNode(t *testing.T) {
	client := fake.NewClientset(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "p1", UID: types.UID("u1")},
		Spec:       corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "app"},
	})
	pi, err := NewPodIndex(PodIndexConfig{Client: client, NodeName: "node-1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pi.Run(ctx) }()
	defer func() { cancel(); <-done }()
	poll(t, pi.Synced)
	p, ok := pi.PodByUID("u1")
	if !ok || p.Name != "p1" || p.NodeName != "node-1" || p.ServiceAccount != "app" {
		t.Fatalf("pod %+v %v", p, ok)
	}
	if _, ok := pi.PodByUID("nope"); ok {
		t.Fatal("unknown uid found")
	}
	if err := client.CoreV1().Pods("demo").Delete(ctx, "p1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, func() bool { _, ok := pi.PodByUID("u1"); return !ok })
}

func poll(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPodIndex_OnDelete_namesTheDeletedPod(t *testing.T) {
	client := fake.NewClientset(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "p1", UID: types.UID("u1")},
		Spec:       corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "app"},
	})
	pi, err := NewPodIndex(PodIndexConfig{Client: client, NodeName: "node-1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	gone := make(chan string, 1)
	if err := pi.OnDelete(func(uid string) { gone <- uid }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pi.Run(ctx) }()
	defer func() { cancel(); <-done }()
	poll(t, pi.Synced)
	if err := client.CoreV1().Pods("demo").Delete(ctx, "p1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case uid := <-gone:
		if uid != "u1" {
			t.Fatalf("OnDelete(%q), want u1", uid)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("OnDelete not called")
	}
}
