//go:build e2e

package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keywarden/keywarden/client"
	"github.com/keywarden/keywarden/e2e/framework"
)

// nodeReaderRole lets the daemon watch the pods of its node and the service accounts, as the
// node binding does.
const nodeReaderRole = "keywarden-e2e-pod-reader"

var nodeReaderRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{""}, Resources: []string{"serviceaccounts"}, Verbs: []string{"list", "watch"}},
}

func createPodReaderRole(t *testing.T, kube *framework.Kube) {
	t.Helper()
	_, err := kube.Client.RbacV1().ClusterRoles().Create(ctx(t), &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: nodeReaderRole},
		Rules:      nodeReaderRules,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// identityDaemon starts a daemon serving node `node` with the given identity mode, the
// embedded store and a grants file allowing namespace ns, service account app, secret db.
func identityDaemon(t *testing.T, kube *framework.Kube, node, ns, mode string) *framework.Daemon {
	t.Helper()
	grants := filepath.Join(t.TempDir(), "grants.yaml")
	doc := fmt.Sprintf(`apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: app-db}
spec:
  subjects: [{namespace: %s, serviceAccount: app}]
  secrets: [{name: db, source: {local: {}}}]
`, ns)
	if err := os.WriteFile(grants, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	keys := "discoveryURL: {{.Issuer}}\n  caFile: {{.CAFile}}"
	if mode == "tokenreview" {
		keys = "mode: tokenreview"
	}
	cfg := fmt.Sprintf(`dataDir: {{.Dir}}/data
socket: {path: {{.Dir}}/kw.sock}
adminSocket: {path: {{.Dir}}/admin.sock}
nodeName: %s
kubernetes: {kubeconfig: {{.KubeconfigFile}}}
identity:
  issuer: {{.Issuer}}
  %s
grants: {file: %s, reloadInterval: 1s}
sources: {local: {enabled: true}}
log: {level: debug}
`, node, keys, grants)
	d := framework.StartDaemon(t, framework.DaemonOptions{Kube: kube, Config: cfg, ClusterRoles: []string{"system:auth-delegator", nodeReaderRole}})
	out, err := exec.Command(framework.DaemonBinary(t), "secret", "put", "db", "--admin-socket", filepath.Join(d.Dir, "admin.sock"), "password="+e2eSecret).CombinedOutput()
	if err != nil {
		t.Fatalf("secret put: %v\n%s", err, out)
	}
	return d
}

const e2eSecret = "e2e-identity-secret-7c41"

func getSecret(t *testing.T, d *framework.Daemon, token string) error {
	t.Helper()
	c, err := client.New(filepath.Join(d.Dir, "kw.sock"), client.WithToken(token))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := c.Get(cctx, "db")
	if err == nil && string(s.Data["password"]) != e2eSecret {
		t.Fatal("wrong secret value")
	}
	return err
}

func expectCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code || !strings.Contains(st.Message(), msg) {
		t.Fatalf("got %v %q, want %v containing %q", st.Code(), st.Message(), code, msg)
	}
}

// forge builds tokens from a real one: same claims, attacker-chosen header and signature.
type forge struct {
	header, payload map[string]any
	realSig         string
}

func parseToken(t *testing.T, tok string) forge {
	t.Helper()
	parts := strings.Split(tok, ".")
	var f forge
	for i, dst := range []*map[string]any{&f.header, &f.payload} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, dst); err != nil {
			t.Fatal(err)
		}
	}
	f.realSig = parts[2]
	return f
}

func enc(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func signWith(t *testing.T, key crypto.Signer, alg string, header map[string]any, payload string) string {
	t.Helper()
	h := map[string]any{}
	for k, v := range header {
		h[k] = v
	}
	h["alg"] = alg
	input := enc(t, h) + "." + payload
	digest := sha256.Sum256([]byte(input))
	var sig []byte
	var err error
	switch k := key.(type) {
	case *rsa.PrivateKey:
		sig, err = rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, digest[:])
	case *ecdsa.PrivateKey:
		var r, s []byte
		rr, ss, e := ecdsa.Sign(rand.Reader, k, digest[:])
		err = e
		r, s = rr.FillBytes(make([]byte, 32)), ss.FillBytes(make([]byte, 32))
		sig = append(r, s...)
	}
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// signAsAPIServer signs claims with the cluster's own service-account key, to make tokens the
// apiserver would never issue (expired, duplicated claims, legacy shape) but that carry a
// valid signature.
func signAsAPIServer(t *testing.T, kube *framework.Kube, kid string, payloadJSON string) string {
	t.Helper()
	b, err := os.ReadFile(kube.SASigningKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	var key crypto.Signer
	if k, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err == nil {
		key = k
	} else if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
		key = k.(crypto.Signer)
	} else {
		t.Fatalf("parse sa key: %v", err)
	}
	return signWith(t, key, "RS256", map[string]any{"kid": kid}, base64.RawURLEncoding.EncodeToString([]byte(payloadJSON)))
}

func TestIdentity_kubernetesTokens(t *testing.T) {
	kube := framework.StartKube(t, framework.KubeOptions{})
	createPodReaderRole(t, kube)
	here := framework.NewKubelet(t, kube, framework.KubeletOptions{})
	there := framework.NewKubelet(t, kube, framework.KubeletOptions{})

	for _, mode := range []string{"jwt", "tokenreview"} {
		t.Run(mode, func(t *testing.T) {
			ns := kube.CreateNamespace(t, "id-"+mode)
			d := identityDaemon(t, kube, here.NodeName, ns, mode)
			pod := here.CreatePod(t, ns, "app")
			good := here.PodToken(t, pod, framework.DefaultAudience).Token
			if err := getSecret(t, d, good); err != nil {
				t.Fatalf("pod on this node with a bound token: %v", err)
			}
			f := parseToken(t, good)
			kid, _ := f.header["kid"].(string)
			parts := strings.Split(good, ".")

			remote := there.CreatePod(t, ns, "app")
			otherNode := there.PodToken(t, remote, framework.DefaultAudience).Token

			wrongAud := here.PodToken(t, pod, "someone-else").Token
			apiAud := here.PodToken(t, pod, kube.Issuer).Token
			unbound, _ := kube.TokenRequest(t, ns, "app", []string{framework.DefaultAudience}, time.Hour, nil)

			tamperedPayload := map[string]any{}
			for k, v := range f.payload {
				tamperedPayload[k] = v
			}
			k8s := tamperedPayload["kubernetes.io"].(map[string]any)
			k8s["namespace"] = "kube-system"
			tampered := parts[0] + "." + enc(t, tamperedPayload) + "." + parts[2]
			badSig := parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))
			none := enc(t, map[string]any{"alg": "none", "kid": kid}) + "." + parts[1] + "."
			mac := hmac.New(sha256.New, kube.SAPublicKeyPEM)
			hsInput := enc(t, map[string]any{"alg": "HS256", "kid": kid}) + "." + parts[1]
			mac.Write([]byte(hsInput))
			hs256 := hsInput + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
			ownRSA, _ := rsa.GenerateKey(rand.Reader, 2048)
			otherIssuerKey := signWith(t, ownRSA, "RS256", map[string]any{"kid": kid}, parts[1])
			ownEC, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			unknownKid := signWith(t, ownEC, "ES256", map[string]any{"kid": "not-a-real-kid"}, parts[1])
			oversized := good + strings.Repeat("A", 17<<10)

			now := time.Now().Unix()
			claims := func(mut func(string) string) string {
				b, _ := json.Marshal(f.payload)
				return mut(string(b))
			}
			expired := signAsAPIServer(t, kube, kid, claims(func(s string) string {
				p := map[string]any{}
				_ = json.Unmarshal([]byte(s), &p)
				p["iat"], p["nbf"], p["exp"] = now-7200, now-7200, now-3600
				b, _ := json.Marshal(p)
				return string(b)
			}))
			notYet := signAsAPIServer(t, kube, kid, claims(func(s string) string {
				p := map[string]any{}
				_ = json.Unmarshal([]byte(s), &p)
				p["iat"], p["nbf"], p["exp"] = now, now+3600, now+7200
				b, _ := json.Marshal(p)
				return string(b)
			}))
			dupClaim := signAsAPIServer(t, kube, kid, claims(func(s string) string {
				return strings.Replace(s, `{`, `{"aud":["keywarden"],`, 1)
			}))
			legacy := signAsAPIServer(t, kube, kid, fmt.Sprintf(`{"iss":"kubernetes/serviceaccount","kubernetes.io/serviceaccount/namespace":%q,"kubernetes.io/serviceaccount/secret.name":"app-token","kubernetes.io/serviceaccount/service-account.name":"app","kubernetes.io/serviceaccount/service-account.uid":"x","sub":"system:serviceaccount:%s:app"}`, ns, ns))

			// In TokenReview mode the apiserver is the judge: every forged token is
			// "rejected by TokenReview"; in JWT mode the daemon names the reason.
			tr := mode == "tokenreview"
			reason := func(jwt string) string {
				if tr {
					return "invalid token: rejected by TokenReview"
				}
				return "invalid token: " + jwt
			}
			cases := []struct {
				name, token, msg string
			}{
				{"pod on another node", otherNode, "invalid token: token bound to another node"},
				{"wrong audience", wrongAud, reason("wrong audience")},
				{"apiserver's own audience", apiAud, reason("wrong audience")},
				{"not bound to a pod", unbound, "invalid token: no pod binding"},
				{"tampered payload", tampered, reason("bad signature")},
				{"tampered signature", badSig, reason("bad signature")},
				{"alg none", none, reason("unsupported algorithm")},
				{"HS256 keyed with the public key", hs256, reason("unsupported algorithm")},
				{"signed by another issuer's key", otherIssuerKey, reason("bad signature")},
				{"unknown kid", unknownKid, reason("unknown key id")},
				{"oversized", oversized, "too large"},
				{"expired", expired, reason("expired")},
				{"not yet valid", notYet, reason("not yet valid")},
				{"duplicated claim", dupClaim, "invalid token: duplicate claim"},
				{"legacy secret-based token", legacy, reason("legacy service account token")},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					expectCode(t, getSecret(t, d, tc.token), codes.Unauthenticated, tc.msg)
				})
			}

			// A deleted pod's token is refused within seconds, though signature and exp
			// are still good.
			here.DeletePod(t, pod)
			deadline := time.Now().Add(30 * time.Second)
			for {
				err := getSecret(t, d, good)
				if status.Code(err) == codes.Unauthenticated {
					expectCode(t, err, codes.Unauthenticated, "invalid token:")
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("token of a deleted pod still accepted: %v", err)
				}
				time.Sleep(200 * time.Millisecond)
			}
			logs := d.Process.Log()
			for _, tok := range []string{good, otherNode, parts[2]} {
				if strings.Contains(logs, tok) {
					t.Fatal("a token reached the daemon's log")
				}
			}
		})
	}
}

// TestIdentity_apiserverOutage stops the apiserver: identities already verified keep working,
// a new token still verifies offline in JWT mode with the cached keys, and the daemon says it
// runs on cached state.
func TestIdentity_apiserverOutage(t *testing.T) {
	kube := framework.StartKube(t, framework.KubeOptions{})
	createPodReaderRole(t, kube)
	here := framework.NewKubelet(t, kube, framework.KubeletOptions{})
	ns := kube.CreateNamespace(t, "outage")
	jwt := identityDaemon(t, kube, here.NodeName, ns, "jwt")
	review := identityDaemon(t, kube, here.NodeName, ns, "tokenreview")
	pod := here.CreatePod(t, ns, "app")
	used := here.PodToken(t, pod, framework.DefaultAudience).Token
	fresh := here.PodToken(t, pod, framework.DefaultAudience).Token
	for _, d := range []*framework.Daemon{jwt, review} {
		if err := getSecret(t, d, used); err != nil {
			t.Fatal(err)
		}
	}
	kube.APIServer.Stop()

	for _, d := range []*framework.Daemon{jwt, review} {
		if err := getSecret(t, d, used); err != nil {
			t.Fatalf("an identity verified before the outage: %v", err)
		}
	}
	if err := getSecret(t, jwt, fresh); err != nil {
		t.Fatalf("JWT mode, new token, apiserver down: %v", err)
	}
	expectCode(t, getSecret(t, review, fresh), codes.Unavailable, "token verification is unavailable")
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(jwt.Process.Log(), "apiserver unreachable") {
		if time.Now().After(deadline) {
			t.Fatal("the daemon did not say it runs on cached state")
		}
		time.Sleep(200 * time.Millisecond)
	}
	_ = authenticationv1.TokenReview{}
}

// TestIdentity_recreatedObjects deletes a service account and a pod and recreates each with
// the same name: the tokens issued for the old objects are refused (their signature and exp
// are still good, and the names match), and fresh tokens for the new objects work. In
// tokenreview mode the old token was verified and cached before, so it is the daemon's own
// UID check, not the apiserver's, that refuses it.
func TestIdentity_recreatedObjects(t *testing.T) {
	kube := framework.StartKube(t, framework.KubeOptions{})
	createPodReaderRole(t, kube)
	here := framework.NewKubelet(t, kube, framework.KubeletOptions{})

	for _, mode := range []string{"jwt", "tokenreview"} {
		t.Run(mode, func(t *testing.T) {
			ns := kube.CreateNamespace(t, "recreate-"+mode)
			d := identityDaemon(t, kube, here.NodeName, ns, mode)
			pod := here.CreatePod(t, ns, "app")
			used := here.PodToken(t, pod, framework.DefaultAudience).Token
			unused := here.PodToken(t, pod, framework.DefaultAudience).Token
			if err := getSecret(t, d, used); err != nil {
				t.Fatalf("token of the first service account: %v", err)
			}
			oldSA, err := kube.Client.CoreV1().ServiceAccounts(ns).Get(ctx(t), "app", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}

			if err := kube.Client.CoreV1().ServiceAccounts(ns).Delete(ctx(t), "app", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			newSA := kube.CreateServiceAccount(t, ns, "app")
			if newSA.UID == oldSA.UID {
				t.Fatal("the recreated service account kept its UID")
			}
			const recreated = "invalid token: service account was deleted or recreated"
			waitRefused(t, d, used, recreated)
			// A token the daemon never saw goes through verification again: in tokenreview
			// mode the apiserver itself refuses it.
			if mode == "tokenreview" {
				expectCode(t, getSecret(t, d, unused), codes.Unauthenticated, "invalid token: rejected by TokenReview")
			} else {
				expectCode(t, getSecret(t, d, unused), codes.Unauthenticated, recreated)
			}
			fresh := here.PodToken(t, pod, framework.DefaultAudience).Token
			waitAccepted(t, d, fresh)

			// The pod: same name, new UID. The token bound to the old pod (verified and
			// cached above) is refused.
			here.DeletePod(t, pod)
			again := recreatePod(t, kube, pod)
			if again.Name != pod.Name || again.UID == pod.UID {
				t.Fatalf("recreated pod %s/%s, want the name %s and a new UID", again.Name, again.UID, pod.Name)
			}
			waitRefused(t, d, fresh, "invalid token: pod is not running on this node")
			waitAccepted(t, d, here.PodToken(t, again, framework.DefaultAudience).Token)

			logs := d.Process.Log()
			for _, tok := range []string{used, unused, fresh} {
				if strings.Contains(logs, tok) {
					t.Fatal("a token reached the daemon's log")
				}
			}
		})
	}
}

// recreatePod creates a pod with the name and spec of a deleted one; it gets a new UID.
func recreatePod(t *testing.T, kube *framework.Kube, old *corev1.Pod) *corev1.Pod {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		p, err := kube.Client.CoreV1().Pods(old.Namespace).Create(ctx(t), &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: old.Name},
			Spec:       old.Spec,
		}, metav1.CreateOptions{})
		if err == nil {
			return p
		}
		if !apierrors.IsAlreadyExists(err) || time.Now().After(deadline) {
			t.Fatalf("recreate pod: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitRefused waits until the daemon refuses token as Unauthenticated, then checks the message.
// The daemon learns of deletions through its informers, within moments.
func waitRefused(t *testing.T, d *framework.Daemon, token, msg string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := getSecret(t, d, token)
		if status.Code(err) == codes.Unauthenticated {
			expectCode(t, err, codes.Unauthenticated, msg)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("token still accepted: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitAccepted waits until the daemon accepts token (its informers have seen the new object).
func waitAccepted(t *testing.T, d *framework.Daemon, token string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := getSecret(t, d, token)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fresh token refused: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
