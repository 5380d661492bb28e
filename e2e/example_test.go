//go:build e2e

package e2e

import (
	"testing"

	"github.com/keywarden/keywarden/e2e/framework"
)

// TestExample_podTokenReadsVaultSecret shows the harness in a few lines: a
// real cluster and Vault, a pod with a bound token, and Vault's Kubernetes
// auth accepting that token. A daemon test adds
//
//	d := framework.StartDaemon(t, framework.DaemonOptions{Kube: kube, Config: cfg})
//	kubelet := framework.NewKubelet(t, kube, framework.KubeletOptions{Socket: d.CSISocket})
//	_, target, err := kubelet.Publish(ctx, pod, "secrets", map[string]string{"secrets": "db"})
func TestExample_podTokenReadsVaultSecret(t *testing.T) {
	kube := framework.StartKube(t, framework.KubeOptions{})
	vault := framework.StartVault(t)
	kubelet := framework.NewKubelet(t, kube, framework.KubeletOptions{})

	ns := kube.CreateNamespace(t, "example")
	pod := kubelet.CreatePod(t, ns, "app")
	vault.PutPolicy(t, "app", `path "secret/data/app/*" { capabilities = ["read"] }`)
	vault.EnableKubernetesAuth(t, kube, framework.KubernetesAuthOptions{
		Role: "app", ServiceAccounts: []string{"app"}, Namespaces: []string{ns},
		Audience: framework.DefaultAudience, Policies: []string{"app"},
	})
	if _, err := vault.Client.KVv2("secret").Put(ctx(t), "app/db", map[string]any{"password": "s3cr3t"}); err != nil {
		t.Fatal(err)
	}

	tok := kubelet.PodToken(t, pod, framework.DefaultAudience)
	c, err := vault.Login(ctx(t), "kubernetes", "app", tok.Token)
	if err != nil {
		t.Fatalf("login with the pod's bound token: %v", err)
	}
	s, err := c.KVv2("secret").Get(ctx(t), "app/db")
	if err != nil {
		t.Fatalf("read as the pod: %v", err)
	}
	if s.Data["password"] != "s3cr3t" {
		t.Fatal("pod read a different value")
	}
	if _, err := c.KVv2("secret").Get(ctx(t), "other/db"); err == nil {
		t.Fatal("policy let the pod read outside its path")
	}
}
