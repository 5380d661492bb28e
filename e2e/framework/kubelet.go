package framework

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Volume-context keys kubelet sets for CSI drivers with podInfoOnMount and
// tokenRequests (k8s.io/kubernetes/pkg/volume/csi).
const (
	VolumeContextPodName        = "csi.storage.k8s.io/pod.name"
	VolumeContextPodNamespace   = "csi.storage.k8s.io/pod.namespace"
	VolumeContextPodUID         = "csi.storage.k8s.io/pod.uid"
	VolumeContextServiceAccount = "csi.storage.k8s.io/serviceAccount.name"
	VolumeContextEphemeral      = "csi.storage.k8s.io/ephemeral"
	VolumeContextTokens         = "csi.storage.k8s.io/serviceAccount.tokens" //nolint:gosec // a key name, not a credential
)

// DefaultAudience is the audience of the tokens the kubelet driver requests.
const DefaultAudience = "keywarden"

// Token is a service-account token and its expiry, as kubelet hands it to a
// CSI driver. String and GoString redact it.
type Token struct {
	Token               string
	ExpirationTimestamp time.Time
}

// String redacts the token.
func (t Token) String() string {
	return "Token{[REDACTED], expires " + t.ExpirationTimestamp.UTC().Format(time.RFC3339) + "}"
}

// GoString redacts the token.
func (t Token) GoString() string { return t.String() }

// PodInfo is what kubelet tells a CSI driver about the pod.
type PodInfo struct {
	Name, Namespace, ServiceAccount string
	UID                             types.UID
}

// PodInfoOf extracts PodInfo from a Pod.
func PodInfoOf(p *corev1.Pod) PodInfo {
	return PodInfo{Name: p.Name, Namespace: p.Namespace, UID: p.UID, ServiceAccount: p.Spec.ServiceAccountName}
}

// VolumeContext builds the volume_context kubelet sends on NodePublishVolume
// for an ephemeral inline volume: the volume attributes from the pod spec
// plus pod info and the service-account tokens keyed by audience.
func VolumeContext(pod PodInfo, tokens map[string]Token, attributes map[string]string) (map[string]string, error) {
	vc := make(map[string]string, len(attributes)+6)
	for k, v := range attributes {
		vc[k] = v
	}
	if pod != (PodInfo{}) { // kubelet sends pod info only with the CSIDriver's podInfoOnMount
		vc[VolumeContextPodName] = pod.Name
		vc[VolumeContextPodNamespace] = pod.Namespace
		vc[VolumeContextPodUID] = string(pod.UID)
		vc[VolumeContextServiceAccount] = pod.ServiceAccount
	}
	vc[VolumeContextEphemeral] = "true"
	if len(tokens) > 0 {
		type wire struct {
			Token               string      `json:"token"`
			ExpirationTimestamp metav1.Time `json:"expirationTimestamp"`
		}
		m := make(map[string]wire, len(tokens))
		for aud, tok := range tokens {
			m[aud] = wire{Token: tok.Token, ExpirationTimestamp: metav1.NewTime(tok.ExpirationTimestamp)}
		}
		b, err := json.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("marshal tokens: %w", err)
		}
		vc[VolumeContextTokens] = string(b)
	}
	return vc, nil
}

// CSINodeClient calls a CSI Node (and Identity) service over a Unix socket,
// as kubelet does.
type CSINodeClient struct {
	Node     csi.NodeClient
	Identity csi.IdentityClient
	conn     *grpc.ClientConn
}

// DialCSI connects to the CSI socket at path; the connection is closed on
// test cleanup. Dialing is lazy: the socket need not exist yet.
func DialCSI(t testing.TB, socketPath string) *CSINodeClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial csi %s: %v", socketPath, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &CSINodeClient{Node: csi.NewNodeClient(conn), Identity: csi.NewIdentityClient(conn), conn: conn}
}

// PublishRequest describes one NodePublishVolume call for an ephemeral
// inline volume.
type PublishRequest struct {
	// Pod is the pod the volume belongs to; it always feeds the volume ID.
	Pod PodInfo
	// NoPodInfo leaves the pod's name, namespace, UID and service account out of the volume
	// context, as kubelet does when the CSIDriver does not set podInfoOnMount.
	NoPodInfo bool
	// Tokens by audience, as requested through the CSIDriver's tokenRequests.
	Tokens map[string]Token
	// Attributes are the volume attributes from the pod spec.
	Attributes map[string]string
	// VolumeName is the pod's volume name; default "secrets".
	VolumeName string
	// Driver is the CSI driver name; it feeds the volume ID like kubelet's.
	Driver string
	// TargetPath is where the driver must mount; required.
	TargetPath string
	// Writable sends readonly=false, which a pod spec without readOnly: true on its csi
	// volume makes kubelet send; the driver refuses it.
	Writable bool
}

// VolumeID is the ID kubelet derives for an ephemeral inline volume:
// "csi-" + sha256(podUID + volumeName + driver) in hex.
func VolumeID(podUID types.UID, volumeName, driver string) string {
	h := sha256.Sum256([]byte(string(podUID) + volumeName + driver))
	return "csi-" + hex.EncodeToString(h[:])
}

// Publish sends NodePublishVolume. It returns the volume ID it used.
func (c *CSINodeClient) Publish(ctx context.Context, r PublishRequest) (string, error) {
	if r.VolumeName == "" {
		r.VolumeName = "secrets"
	}
	if r.TargetPath == "" {
		return "", fmt.Errorf("publish: target path is required")
	}
	info := r.Pod
	if r.NoPodInfo {
		info = PodInfo{}
	}
	vc, err := VolumeContext(info, r.Tokens, r.Attributes)
	if err != nil {
		return "", err
	}
	id := VolumeID(r.Pod.UID, r.VolumeName, r.Driver)
	_, err = c.Node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId:   id,
		TargetPath: r.TargetPath,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		Readonly:      !r.Writable,
		VolumeContext: vc,
	})
	return id, err
}

// Unpublish sends NodeUnpublishVolume.
func (c *CSINodeClient) Unpublish(ctx context.Context, volumeID, targetPath string) error {
	_, err := c.Node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volumeID, TargetPath: targetPath})
	return err
}

// KubeletOptions configures NewKubelet.
type KubeletOptions struct {
	// NodeName of the Node object to create; default "e2e-node-<random>".
	NodeName string
	// Socket is the daemon's CSI socket; required only for Publish.
	Socket string
	// Driver is the CSI driver name; default "keywarden.dev".
	Driver string
	// Audience of the pod tokens; default DefaultAudience.
	Audience string
	// TokenTTL of pod tokens; default (and minimum) 10m.
	TokenTTL time.Duration
	// PodsDir is the root of target paths; default a temp dir.
	PodsDir string
	// NoPodInfo: the CSIDriver does not set podInfoOnMount, so no pod info is sent.
	NoPodInfo bool
}

// KubeletOptionsFromCSIDriver takes the settings kubelet reads from a CSIDriver object —
// the driver name, podInfoOnMount, and the audience and lifetime of tokenRequests — into o,
// so the harness publishes exactly as kubelet would for that object. It refuses what kubelet
// would refuse for an inline volume (no Ephemeral lifecycle mode) and what the harness does
// not play (more than one token audience).
func KubeletOptionsFromCSIDriver(d *storagev1.CSIDriver, o KubeletOptions) (KubeletOptions, error) {
	o.Driver = d.Name
	if !slices.Contains(d.Spec.VolumeLifecycleModes, storagev1.VolumeLifecycleEphemeral) {
		return o, fmt.Errorf("CSIDriver %s: volumeLifecycleModes %v has no Ephemeral: kubelet refuses inline volumes", d.Name, d.Spec.VolumeLifecycleModes)
	}
	o.NoPodInfo = d.Spec.PodInfoOnMount == nil || !*d.Spec.PodInfoOnMount
	switch len(d.Spec.TokenRequests) {
	case 0:
		return o, fmt.Errorf("CSIDriver %s: no tokenRequests: kubelet would send no pod token", d.Name)
	case 1:
		tr := d.Spec.TokenRequests[0]
		o.Audience = tr.Audience
		o.TokenTTL = time.Hour // the API's default when expirationSeconds is unset
		if tr.ExpirationSeconds != nil {
			o.TokenTTL = time.Duration(*tr.ExpirationSeconds) * time.Second
		}
	default:
		return o, fmt.Errorf("CSIDriver %s: %d tokenRequests; the harness plays one", d.Name, len(d.Spec.TokenRequests))
	}
	return o, nil
}

// Kubelet plays kubelet against a controller-less apiserver: it owns a Node
// object, creates pods bound to it (they stay Pending), gets bound tokens from
// the TokenRequest API and calls the daemon's CSI Node service.
type Kubelet struct {
	NodeName string
	kube     *Kube
	opts     KubeletOptions
	csiOnce  sync.Once
	csi      *CSINodeClient
	t        testing.TB
}

// NewKubelet creates the Node object first: a token requested before the
// node exists carries no node claim.
func NewKubelet(t testing.TB, kube *Kube, o KubeletOptions) *Kubelet {
	t.Helper()
	if o.NodeName == "" {
		o.NodeName = "e2e-node-" + lowerRandom(6)
	}
	if o.Driver == "" {
		o.Driver = "keywarden.dev"
	}
	if o.Audience == "" {
		o.Audience = DefaultAudience
	}
	if o.PodsDir == "" {
		o.PodsDir = filepath.Join(t.TempDir(), "pods")
	}
	_, err := kube.Client.CoreV1().Nodes().Create(ctxT(t), &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: o.NodeName, Labels: map[string]string{"kubernetes.io/hostname": o.NodeName}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", o.NodeName, err)
	}
	return &Kubelet{NodeName: o.NodeName, kube: kube, opts: o, t: t}
}

func lowerRandom(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	s := []byte(randomString(n))
	for i := range s {
		s[i] = alphabet[int(s[i])%len(alphabet)]
	}
	return string(s)
}

// CreatePod creates (if missing) the ServiceAccount and a Pod on this node
// using it. The pod never runs; it exists for bound tokens and the daemon's
// lookups.
func (k *Kubelet) CreatePod(t testing.TB, namespace, serviceAccount string) *corev1.Pod {
	t.Helper()
	ctx := ctxT(t)
	if _, err := k.kube.Client.CoreV1().ServiceAccounts(namespace).Get(ctx, serviceAccount, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		k.kube.CreateServiceAccount(t, namespace, serviceAccount)
	} else if err != nil {
		t.Fatalf("get service account: %v", err)
	}
	automount := false
	pod, err := k.kube.Client.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: serviceAccount + "-"},
		Spec: corev1.PodSpec{
			NodeName:                     k.NodeName,
			ServiceAccountName:           serviceAccount,
			AutomountServiceAccountToken: &automount,
			Containers:                   []corev1.Container{{Name: "app", Image: "registry.invalid/keywarden-e2e/app:never-pulled"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod: %v", err)
	}
	return pod
}

// DeletePod deletes a pod with grace period 0 (no kubelet will confirm a
// graceful stop).
func (k *Kubelet) DeletePod(t testing.TB, pod *corev1.Pod) {
	t.Helper()
	zero := int64(0)
	if err := k.kube.Client.CoreV1().Pods(pod.Namespace).Delete(ctxT(t), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatalf("delete pod: %v", err)
	}
}

// PodToken requests a token for the pod's ServiceAccount bound to the pod,
// for the given audience.
func (k *Kubelet) PodToken(t testing.TB, pod *corev1.Pod, audience string) Token {
	t.Helper()
	tok, err := k.podToken(ctxT(t), pod, audience)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (k *Kubelet) podToken(ctx context.Context, pod *corev1.Pod, audience string) (Token, error) {
	tr, err := k.kube.RequestToken(ctx, pod.Namespace, pod.Spec.ServiceAccountName, []string{audience}, k.opts.TokenTTL,
		&authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID})
	if err != nil {
		return Token{}, fmt.Errorf("token request for pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return Token{Token: tr.Status.Token, ExpirationTimestamp: tr.Status.ExpirationTimestamp.Time}, nil
}

// TargetPath is where kubelet would ask the driver to mount the pod's volume.
func (k *Kubelet) TargetPath(pod *corev1.Pod, volumeName string) string {
	return filepath.Join(k.opts.PodsDir, string(pod.UID), "volumes", "kubernetes.io~csi", volumeName, "mount")
}

// CSI returns the client for the daemon's CSI socket.
func (k *Kubelet) CSI() *CSINodeClient {
	k.csiOnce.Do(func() {
		if k.opts.Socket == "" {
			k.t.Fatal("kubelet: KubeletOptions.Socket is required to call the CSI Node service")
		}
		k.csi = DialCSI(k.t, k.opts.Socket)
	})
	return k.csi
}

// Publish gets a fresh bound token and calls NodePublishVolume for the pod's
// inline volume volumeName with attributes, like kubelet on pod start and on
// every requiresRepublish period. It returns the volume ID and target path.
func (k *Kubelet) Publish(ctx context.Context, pod *corev1.Pod, volumeName string, attributes map[string]string) (volumeID, targetPath string, err error) {
	tok, err := k.podToken(ctx, pod, k.opts.Audience)
	if err != nil {
		return "", "", err
	}
	targetPath = k.TargetPath(pod, volumeName)
	volumeID, err = k.CSI().Publish(ctx, PublishRequest{
		Pod: PodInfoOf(pod), NoPodInfo: k.opts.NoPodInfo, Tokens: map[string]Token{k.opts.Audience: tok}, Attributes: attributes,
		VolumeName: volumeName, Driver: k.opts.Driver, TargetPath: targetPath,
	})
	return volumeID, targetPath, err
}

// PublishRetrying is Publish retried while the driver answers Unavailable, as kubelet
// retries a failed NodePublishVolume with backoff: a pod created a moment ago may not have
// reached the daemon's pod informer yet ("try again"). Other errors, and Unavailable past
// 30 s or ctx, are returned.
func (k *Kubelet) PublishRetrying(ctx context.Context, pod *corev1.Pod, volumeName string, attributes map[string]string) (volumeID, targetPath string, err error) {
	deadline := time.Now().Add(30 * time.Second)
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		volumeID, targetPath, err = k.Publish(ctx, pod, volumeName, attributes)
		if status.Code(err) != codes.Unavailable || time.Now().Add(wait).After(deadline) {
			return volumeID, targetPath, err
		}
		select {
		case <-ctx.Done():
			return volumeID, targetPath, err
		case <-time.After(wait):
		}
	}
}

// Unpublish calls NodeUnpublishVolume, like kubelet on pod deletion.
func (k *Kubelet) Unpublish(ctx context.Context, pod *corev1.Pod, volumeName string) error {
	return k.CSI().Unpublish(ctx, VolumeID(pod.UID, volumeName, k.opts.Driver), k.TargetPath(pod, volumeName))
}

// Republisher repeats Publish on a timer, like kubelet with
// requiresRepublish. Stop it (also done on test cleanup) before reading
// Results for a final count.
type Republisher struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	errs   []error
}

// Republish calls Publish every interval until Stop or test cleanup.
func (k *Kubelet) Republish(t testing.TB, pod *corev1.Pod, volumeName string, attributes map[string]string, interval time.Duration) *Republisher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &Republisher{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
			_, _, err := k.Publish(cctx, pod, volumeName, attributes)
			ccancel()
			if ctx.Err() != nil {
				return
			}
			r.mu.Lock()
			r.errs = append(r.errs, err)
			r.mu.Unlock()
		}
	}()
	t.Cleanup(r.Stop)
	return r
}

// Stop ends the loop and waits for it. Idempotent.
func (r *Republisher) Stop() {
	r.cancel()
	<-r.done
}

// Results returns the error (nil on success) of every republish so far.
func (r *Republisher) Results() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.errs...)
}

// HTTPClient returns an HTTP client that trusts only caPEM (for the
// apiserver's discovery/JWKS endpoints, anonymously).
func HTTPClient(caPEM []byte) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
}
