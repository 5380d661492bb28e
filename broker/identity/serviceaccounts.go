package identity

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
)

// ServiceAccountIndexConfig configures a ServiceAccountIndex.
type ServiceAccountIndexConfig struct {
	// Client is a metadata-only apiserver client. Required.
	Client metadata.Interface
	// Logger receives the initial load. Required.
	Logger *slog.Logger
}

// ServiceAccountIndex is a cluster-wide, metadata-only informer of service accounts that
// keeps only namespace, name and UID: a token names its service account by name and UID,
// and only the UID tells a deleted and recreated account from the one the token was issued
// to. Service accounts are not node-scoped, so the watch covers the cluster; metadata only
// keeps it cheap (no secrets lists, no annotations in memory).
//
// Like PodIndex it keeps answering from its last state while the apiserver is unreachable
// (client-go re-lists on recovery); PodIndex, which watches the same apiserver, reports the
// outage.
type ServiceAccountIndex struct {
	cfg      ServiceAccountIndexConfig
	informer cache.SharedIndexInformer
	factory  metadatainformer.SharedInformerFactory
	synced   atomic.Bool
}

var _ ServiceAccountLookup = (*ServiceAccountIndex)(nil)

var serviceAccountsResource = schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}

// NewServiceAccountIndex returns a ServiceAccountIndex; Run starts it.
func NewServiceAccountIndex(cfg ServiceAccountIndexConfig) (*ServiceAccountIndex, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("service account index: client is required")
	case cfg.Logger == nil:
		return nil, errors.New("service account index: logger is required")
	}
	f := metadatainformer.NewSharedInformerFactoryWithOptions(cfg.Client, 0, metadatainformer.WithTransform(trimServiceAccount))
	inf := f.ForResource(serviceAccountsResource).Informer()
	return &ServiceAccountIndex{cfg: cfg, informer: inf, factory: f}, nil
}

// trimServiceAccount keeps what the lookup needs (and the resource version the informer
// tracks); labels, annotations and managed fields are dropped before they reach the store.
func trimServiceAccount(obj any) (any, error) {
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return obj, nil // cache.DeletedFinalStateUnknown and the like pass through
	}
	return &metav1.PartialObjectMetadata{
		TypeMeta: m.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Namespace: m.Namespace, Name: m.Name, UID: m.UID, ResourceVersion: m.ResourceVersion,
		},
	}, nil
}

// Run starts the informer and blocks until ctx is done.
func (s *ServiceAccountIndex) Run(ctx context.Context) error {
	s.factory.Start(ctx.Done())
	defer s.factory.Shutdown()
	if cache.WaitForCacheSync(ctx.Done(), s.informer.HasSynced) {
		s.synced.Store(true)
		s.cfg.Logger.Info("service accounts loaded", slog.Int("service_accounts", len(s.informer.GetStore().ListKeys())))
	}
	<-ctx.Done()
	return nil
}

// Synced implements ServiceAccountLookup.
func (s *ServiceAccountIndex) Synced() bool { return s.synced.Load() }

// ServiceAccountUID implements ServiceAccountLookup.
func (s *ServiceAccountIndex) ServiceAccountUID(namespace, name string) (string, bool) {
	obj, found, err := s.informer.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !found {
		return "", false
	}
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return "", false
	}
	return string(m.UID), true
}
