package identity

import (
	"context"
	"io"
	"log/slog"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	metadatafake "k8s.io/client-go/metadata/fake"
)

func serviceAccountMeta(namespace, name, uid string) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace, Name: name, UID: types.UID(uid),
			Annotations: map[string]string{"big": "dropped by the transform"},
		},
	}
}

func TestServiceAccountIndex_ServiceAccountUID_followsRecreation(t *testing.T) {
	scheme := metadatafake.NewTestScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	client := metadatafake.NewSimpleMetadataClient(scheme, serviceAccountMeta("demo", "app", "sa-1"))
	idx, err := NewServiceAccountIndex(ServiceAccountIndexConfig{Client: client, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if idx.Synced() {
		t.Fatal("synced before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- idx.Run(ctx) }()
	defer func() { cancel(); <-done }()
	poll(t, idx.Synced)

	if uid, ok := idx.ServiceAccountUID("demo", "app"); !ok || uid != "sa-1" {
		t.Fatalf("demo/app: %q %v", uid, ok)
	}
	if _, ok := idx.ServiceAccountUID("other", "app"); ok {
		t.Fatal("account found in a namespace it is not in")
	}
	obj, _, _ := idx.informer.GetStore().GetByKey("demo/app")
	if m := obj.(*metav1.PartialObjectMetadata); len(m.Annotations) != 0 {
		t.Fatal("annotations kept in the store")
	}

	sas := client.Resource(serviceAccountsResource).Namespace("demo")
	if err := sas.Delete(ctx, "app", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, func() bool { _, ok := idx.ServiceAccountUID("demo", "app"); return !ok })
	if _, err := sas.(metadatafake.MetadataClient).CreateFake(serviceAccountMeta("demo", "app", "sa-2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, func() bool { uid, _ := idx.ServiceAccountUID("demo", "app"); return uid == "sa-2" })
}

func TestNewServiceAccountIndex_requiresDependencies(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	client := metadatafake.NewSimpleMetadataClient(metadatafake.NewTestScheme())
	for name, cfg := range map[string]ServiceAccountIndexConfig{
		"no client": {Logger: log},
		"no logger": {Client: client},
	} {
		if _, err := NewServiceAccountIndex(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
