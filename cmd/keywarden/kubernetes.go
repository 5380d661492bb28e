package main

// The apiserver clients, shared by identity (TokenReview, pod and service-account lookups) and
// the AccessGrant informer. Both are built once, on first use; nil when the kubernetes section is absent.

import (
	"fmt"
	"log/slog"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keywarden/keywarden/broker/grant"
)

// rawKubernetes is `kubernetes:`: how the daemon reaches the apiserver.
type rawKubernetes struct {
	Kubeconfig string `json:"kubeconfig"`
	InCluster  bool   `json:"inCluster"`
}

// kubernetesConfig is the typed kubernetes section.
type kubernetesConfig struct {
	Kubeconfig string
	InCluster  bool
}

func (r rawConfig) typedKubernetes(c *config, fail func(field, format string, args ...any)) {
	c.Kubernetes = kubernetesConfig{Kubeconfig: r.Kubernetes.Kubeconfig, InCluster: r.Kubernetes.InCluster}
	c.Grants.Kubernetes = r.Grants.Kubernetes
	if c.Kubernetes.Kubeconfig != "" && c.Kubernetes.InCluster {
		fail("kubernetes", "set kubeconfig or inCluster, not both")
	}
	if c.Grants.Kubernetes && c.Kubernetes.Kubeconfig == "" && !c.Kubernetes.InCluster {
		fail("grants.kubernetes", "needs the kubernetes section: set kubernetes.kubeconfig or kubernetes.inCluster: true")
	}
}

// kubeClients caches the clients built from the kubernetes section.
type kubeClients struct {
	rest  *rest.Config
	typed kubernetes.Interface
	meta  metadata.Interface
}

// restConfig builds the apiserver client config once; nil when kubernetes is not configured.
func (d *daemon) restConfig() (*rest.Config, error) {
	if d.kube.rest != nil {
		return d.kube.rest, nil
	}
	var (
		rc  *rest.Config
		err error
	)
	switch {
	case d.cfg.Kubernetes.InCluster:
		rc, err = rest.InClusterConfig()
	case d.cfg.Kubernetes.Kubeconfig != "":
		rc, err = clientcmd.BuildConfigFromFlags("", d.cfg.Kubernetes.Kubeconfig)
	default:
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	rc.UserAgent = "keywarden/" + version
	d.kube.rest = rc
	return rc, nil
}

// kubeClient is the typed apiserver client, or nil when kubernetes is not configured.
func (d *daemon) kubeClient() (kubernetes.Interface, error) {
	if d.kube.typed != nil {
		return d.kube.typed, nil
	}
	rc, err := d.restConfig()
	if err != nil || rc == nil {
		return nil, err
	}
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	d.kube.typed = kc
	return kc, nil
}

// kubeMetadataClient is the metadata-only apiserver client, or nil when kubernetes is not
// configured.
func (d *daemon) kubeMetadataClient() (metadata.Interface, error) {
	if d.kube.meta != nil {
		return d.kube.meta, nil
	}
	rc, err := d.restConfig()
	if err != nil || rc == nil {
		return nil, err
	}
	mc, err := metadata.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes metadata client: %w", err)
	}
	d.kube.meta = mc
	return mc, nil
}

// setupGrantInformer adds the AccessGrant informer (grants.kubernetes) to the runners; it
// feeds the broker as the grant source "kubernetes".
func (d *daemon) setupGrantInformer(log *slog.Logger) error {
	if !d.cfg.Grants.Kubernetes {
		return nil
	}
	rc, err := d.restConfig()
	if err != nil {
		return err
	}
	dc, err := dynamic.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	informer, err := grant.NewInformerSource(grant.InformerSourceConfig{
		Client: dc, Logger: log.With(slog.String("component", "grants-kubernetes")),
		OnChange: d.grantsChanged("kubernetes"),
	})
	if err != nil {
		return err
	}
	d.runners = append(d.runners, informer.Run)
	return nil
}
