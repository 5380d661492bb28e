package framework

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Bounded waits for the control plane.
const (
	etcdReadyTimeout      = 30 * time.Second
	apiserverReadyTimeout = 60 * time.Second
)

// KubeOptions configures StartKube. The zero value is a working cluster.
type KubeOptions struct {
	// APIAudiences is --api-audiences: the audiences the apiserver accepts
	// for its own authentication. Default: the issuer only, as in a real
	// cluster, so a token for audience "keywarden" does not authenticate to
	// the apiserver itself (TokenReview with explicit audiences still works).
	APIAudiences []string
	// ExtraAPIServerFlags are appended to the kube-apiserver command line.
	ExtraAPIServerFlags []string
}

// Kube is a running etcd + kube-apiserver pair. There is no controller
// manager, scheduler or kubelet: see e2e/README.md for what that implies.
type Kube struct {
	// URL is the apiserver's https URL on 127.0.0.1.
	URL string
	// Issuer is the service-account issuer; the OIDC discovery document is
	// at Issuer + "/.well-known/openid-configuration".
	Issuer string
	// CAPEM is the CA that signed the apiserver's serving certificate and
	// the admin client certificate; CAFile holds the same bytes.
	CAPEM  []byte
	CAFile string
	// SAPublicKeyPEM verifies service-account tokens (PKIX "PUBLIC KEY").
	SAPublicKeyPEM []byte
	// APIAudiences are the audiences the apiserver accepts for its own
	// authentication (--api-audiences).
	APIAudiences []string
	// SASigningKeyFile is the apiserver's service-account signing key (PEM): tests use it
	// to sign tokens the apiserver would never issue (expired, duplicated claims, legacy).
	SASigningKeyFile string
	// Config is an admin (system:masters) client configuration.
	Config *rest.Config
	// Client is a clientset built from Config.
	Client kubernetes.Interface

	Etcd      *Process
	APIServer *Process

	dir string
}

// StartKube starts etcd and kube-apiserver with a generated CA, serving and
// admin client certificates, a service-account signing key, RBAC and the
// TokenRequest/TokenReview APIs, waits for /readyz (60 s bound) and makes
// the OIDC discovery and JWKS endpoints readable without credentials.
func StartKube(t testing.TB, o KubeOptions) *Kube {
	t.Helper()
	etcdBin := ToolPath(t, ToolEtcd)
	apiBin := ToolPath(t, ToolKubeAPIServer)
	dir := t.TempDir()
	k := &Kube{dir: dir}

	var etcdURL string
	err := retryOnAddrInUse(func() error {
		base, err := freePorts(2)
		if err != nil {
			return err
		}
		client := "http://127.0.0.1:" + strconv.Itoa(base)
		peer := "http://127.0.0.1:" + strconv.Itoa(base+1)
		dataDir, err := os.MkdirTemp(dir, "etcd-")
		if err != nil {
			return err
		}
		p, err := startProcess(t, "etcd", etcdBin, []string{
			"--name=e2e",
			"--data-dir=" + dataDir,
			"--listen-client-urls=" + client,
			"--advertise-client-urls=" + client,
			"--listen-peer-urls=" + peer,
			"--initial-advertise-peer-urls=" + peer,
			"--initial-cluster=e2e=" + peer,
			"--unsafe-no-fsync=true",
			"--log-level=warn",
		}, procOptions{Dir: dir})
		if err != nil {
			return err
		}
		if err := p.waitReady(etcdReadyTimeout, func() error { return etcdHealthy(client) }); err != nil {
			return err
		}
		k.Etcd, etcdURL = p, client
		return nil
	})
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}

	pki, err := newPKI()
	if err != nil {
		t.Fatal(err)
	}
	servingCert, servingKey, err := pki.issue("kube-apiserver", nil, true)
	if err != nil {
		t.Fatal(err)
	}
	adminCert, adminKey, err := pki.issue("keywarden-e2e-admin", []string{"system:masters"}, false)
	if err != nil {
		t.Fatal(err)
	}
	saKey, saPub, err := rsaKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFiles(dir, map[string][]byte{
		"ca.crt": pki.caPEM, "apiserver.crt": servingCert, "apiserver.key": servingKey,
		"sa.key": saKey, "sa.pub": saPub,
	}); err != nil {
		t.Fatal(err)
	}
	k.CAPEM, k.CAFile, k.SAPublicKeyPEM = pki.caPEM, filepath.Join(dir, "ca.crt"), saPub
	k.SASigningKeyFile = filepath.Join(dir, "sa.key")

	err = retryOnAddrInUse(func() error {
		port, err := freePorts(1)
		if err != nil {
			return err
		}
		url := "https://127.0.0.1:" + strconv.Itoa(port)
		audiences := o.APIAudiences
		if len(audiences) == 0 {
			audiences = []string{url}
		}
		args := []string{
			"--etcd-servers=" + etcdURL,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port),
			"--cert-dir=" + filepath.Join(dir, "certs"),
			"--tls-cert-file=" + filepath.Join(dir, "apiserver.crt"),
			"--tls-private-key-file=" + filepath.Join(dir, "apiserver.key"),
			"--client-ca-file=" + filepath.Join(dir, "ca.crt"),
			"--service-account-key-file=" + filepath.Join(dir, "sa.pub"),
			"--service-account-signing-key-file=" + filepath.Join(dir, "sa.key"),
			"--service-account-issuer=" + url,
			"--service-account-extend-token-expiration=false",
			"--api-audiences=" + strings.Join(audiences, ","),
			"--authorization-mode=Node,RBAC",
			"--service-cluster-ip-range=10.0.0.0/24",
			"--allow-privileged=true",
			"--profiling=false",
		}
		args = append(args, o.ExtraAPIServerFlags...)
		p, err := startProcess(t, "kube-apiserver", apiBin, args, procOptions{Dir: dir})
		if err != nil {
			return err
		}
		cfg := &rest.Config{
			Host:            url,
			TLSClientConfig: rest.TLSClientConfig{CAData: pki.caPEM, CertData: adminCert, KeyData: adminKey},
			QPS:             100,
			Burst:           200,
			Timeout:         30 * time.Second,
		}
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return fmt.Errorf("clientset: %w", err)
		}
		if err := p.waitReady(apiserverReadyTimeout, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
			return err
		}); err != nil {
			return err
		}
		k.APIServer, k.URL, k.Issuer, k.Config, k.Client, k.APIAudiences = p, url, url, cfg, cs, audiences
		return nil
	})
	if err != nil {
		t.Fatalf("start kube-apiserver: %v", err)
	}

	// Vault's JWT auth and the daemon fetch discovery and JWKS without
	// credentials, as they would from a real cluster configured this way.
	k.BindClusterRole(t, "keywarden-e2e-issuer-discovery", "system:service-account-issuer-discovery",
		rbacv1.Subject{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:unauthenticated"},
		rbacv1.Subject{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:authenticated"})
	return k
}

func etcdHealthy(clientURL string) error {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(clientURL + "/health")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd /health: %s", resp.Status)
	}
	return nil
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// CreateNamespace creates a namespace named prefix-<random>. Deleted
// namespaces never finish terminating without a controller manager, so every
// test takes a fresh one.
func (k *Kube) CreateNamespace(t testing.TB, prefix string) string {
	t.Helper()
	ns, err := k.Client.CoreV1().Namespaces().Create(ctxT(t), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	return ns.Name
}

// CreateServiceAccount creates a ServiceAccount (no controller creates
// "default" here).
func (k *Kube) CreateServiceAccount(t testing.TB, namespace, name string) *corev1.ServiceAccount {
	t.Helper()
	sa, err := k.Client.CoreV1().ServiceAccounts(namespace).Create(ctxT(t), &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: name},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service account %s/%s: %v", namespace, name, err)
	}
	return sa
}

// BindClusterRole binds a ClusterRole to subjects cluster-wide. A binding of
// that name that already exists is kept as it is.
func (k *Kube) BindClusterRole(t testing.TB, bindingName, clusterRole string, subjects ...rbacv1.Subject) {
	t.Helper()
	_, err := k.Client.RbacV1().ClusterRoleBindings().Create(ctxT(t), &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: bindingName},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: clusterRole},
		Subjects:   subjects,
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("bind cluster role %s: %v", clusterRole, err)
	}
}

// ServiceAccountSubject is the RBAC subject for a ServiceAccount.
func ServiceAccountSubject(namespace, name string) rbacv1.Subject {
	return rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: namespace, Name: name}
}

// TokenRequest asks the TokenRequest API for a token of a ServiceAccount.
// bound may be nil; ttl is raised to the API's 10 minute minimum.
func (k *Kube) TokenRequest(t testing.TB, namespace, sa string, audiences []string, ttl time.Duration, bound *authenticationv1.BoundObjectReference) (token string, expires time.Time) {
	t.Helper()
	tr, err := k.RequestToken(ctxT(t), namespace, sa, audiences, ttl, bound)
	if err != nil {
		t.Fatalf("token request for %s/%s: %v", namespace, sa, err)
	}
	return tr.Status.Token, tr.Status.ExpirationTimestamp.Time
}

// RequestToken is TokenRequest returning an error instead of failing.
func (k *Kube) RequestToken(ctx context.Context, namespace, sa string, audiences []string, ttl time.Duration, bound *authenticationv1.BoundObjectReference) (*authenticationv1.TokenRequest, error) {
	if ttl < 10*time.Minute {
		ttl = 10 * time.Minute
	}
	secs := int64(ttl / time.Second)
	return k.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &secs, BoundObjectRef: bound},
	}, metav1.CreateOptions{})
}

// TokenReview reviews a token for the given audiences with the admin client.
func (k *Kube) TokenReview(ctx context.Context, token string, audiences []string) (authenticationv1.TokenReviewStatus, error) {
	r, err := k.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return authenticationv1.TokenReviewStatus{}, err
	}
	return r.Status, nil
}

// WriteKubeconfig writes a kubeconfig that authenticates with a bearer token
// file (so a rotated token is re-read) and trusts the test CA; it returns
// its path.
func (k *Kube) WriteKubeconfig(t testing.TB, dir, tokenFile string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: k.URL, CertificateAuthorityData: k.CAPEM}
	cfg.AuthInfos["e2e"] = &clientcmdapi.AuthInfo{TokenFile: tokenFile}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "e2e"}
	cfg.CurrentContext = "e2e"
	path := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatalf("write kubeconfig: %v", err)
	}
	return path
}

var metav1GetOptions = metav1.GetOptions{}

func createNamespaceNamed(ctx context.Context, k *Kube, name string) error {
	_, err := k.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	return err
}
