//go:build e2e

package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/keywarden/keywarden/e2e/framework"
)

// These smoke tests prove each server the suite relies on is real and wired
// the way the daemon needs it. They stay in the suite.

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestSmoke_Kube_boundTokenReviewFollowsPodLifetime(t *testing.T) {
	kube := framework.StartKube(t, framework.KubeOptions{})
	kl := framework.NewKubelet(t, kube, framework.KubeletOptions{})
	pod := kl.CreatePod(t, kube.CreateNamespace(t, "smoke"), "app")
	tok := kl.PodToken(t, pod, "keywarden")

	st, err := kube.TokenReview(ctx(t), tok.Token, []string{"keywarden"})
	if err != nil {
		t.Fatalf("token review: %v", err)
	}
	if !st.Authenticated {
		t.Fatalf("bound token not authenticated: %s", st.Error)
	}
	wantUser := "system:serviceaccount:" + pod.Namespace + ":" + pod.Spec.ServiceAccountName
	if st.User.Username != wantUser {
		t.Fatalf("username = %q, want %q", st.User.Username, wantUser)
	}
	if got := st.User.Extra["authentication.kubernetes.io/pod-uid"]; len(got) != 1 || got[0] != string(pod.UID) {
		t.Fatalf("pod-uid extra = %v, want %s", got, pod.UID)
	}
	if got := st.User.Extra["authentication.kubernetes.io/node-name"]; len(got) != 1 || got[0] != kl.NodeName {
		t.Fatalf("node-name extra = %v, want %s (node created before the token?)", got, kl.NodeName)
	}

	// A token for another audience is refused for "keywarden".
	other, _ := kube.TokenRequest(t, pod.Namespace, pod.Spec.ServiceAccountName, []string{"other"}, 0, nil)
	if st, err := kube.TokenReview(ctx(t), other, []string{"keywarden"}); err != nil || st.Authenticated {
		t.Fatalf("wrong-audience token: authenticated=%v err=%v", st.Authenticated, err)
	}

	kl.DeletePod(t, pod)
	// TokenReview caches successes for ~10 s: poll.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := kube.TokenReview(ctx(t), tok.Token, []string{"keywarden"})
		if err != nil {
			t.Fatalf("token review after delete: %v", err)
		}
		if !st.Authenticated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("token still authenticated 30 s after its pod was deleted")
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func TestSmoke_Kube_oidcDiscoveryJWKSVerifiesToken(t *testing.T) {
	kube := framework.StartKube(t, framework.KubeOptions{})
	ns := kube.CreateNamespace(t, "smoke")
	kube.CreateServiceAccount(t, ns, "app")
	tok, _ := kube.TokenRequest(t, ns, "app", []string{"keywarden"}, 0, nil)

	// Anonymous, as Vault's JWT auth and the daemon fetch it.
	hc := framework.HTTPClient(kube.CAPEM)
	var disc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	getJSON(t, hc, kube.Issuer+"/.well-known/openid-configuration", &disc)
	if disc.Issuer != kube.Issuer {
		t.Fatalf("discovery issuer = %q, want %q", disc.Issuer, kube.Issuer)
	}
	var jwks jose.JSONWebKeySet
	getJSON(t, hc, disc.JWKSURI, &jwks)

	sig, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatalf("parse token: %v", err)
	}
	keys := jwks.Key(sig.Signatures[0].Header.KeyID)
	if len(keys) != 1 {
		t.Fatalf("jwks has %d keys for kid %q", len(keys), sig.Signatures[0].Header.KeyID)
	}
	payload, err := sig.Verify(keys[0].Key)
	if err != nil {
		t.Fatalf("verify token with JWKS key: %v", err)
	}
	var claims struct {
		Iss string `json:"iss"`
		Sub string `json:"sub"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	if claims.Iss != kube.Issuer || claims.Sub != "system:serviceaccount:"+ns+":app" {
		t.Fatalf("claims iss=%q sub=%q", claims.Iss, claims.Sub)
	}
}

func getJSON(t *testing.T, hc *http.Client, url string, v any) {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("decode %s: %v", url, err)
	}
}

func TestSmoke_Vault_kvV2WriteReadsBackWithVersion(t *testing.T) {
	v := framework.StartVault(t)
	v.EnableKV(t, "kw")
	kv := v.Client.KVv2("kw")
	for i, val := range []string{"one", "two"} {
		if _, err := kv.Put(ctx(t), "app/db", map[string]any{"password": val}); err != nil {
			t.Fatalf("put: %v", err)
		}
		got, err := kv.Get(ctx(t), "app/db")
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		if got.Data["password"] != val || got.VersionMetadata.Version != i+1 {
			t.Fatalf("read back version %d, want %d (value match %v)", got.VersionMetadata.Version, i+1, got.Data["password"] == val)
		}
	}
	// Telemetry is on, so tests can count the requests a client made.
	if m := v.Metrics(t); !strings.Contains(m, "# TYPE vault_") {
		t.Fatalf("no prometheus metrics from vault (%d bytes)", len(m))
	}
}

func TestSmoke_Vault_transitEncryptsAndDecrypts(t *testing.T) {
	v := framework.StartVault(t)
	v.EnableTransit(t, "transit", "keywarden")
	plain := base64.StdEncoding.EncodeToString([]byte("data-encryption-key"))
	enc := v.Write(t, "transit/encrypt/keywarden", map[string]any{"plaintext": plain})
	ct, _ := enc.Data["ciphertext"].(string)
	if !strings.HasPrefix(ct, "vault:v1:") {
		t.Fatalf("ciphertext has no vault:v1: prefix")
	}
	dec := v.Write(t, "transit/decrypt/keywarden", map[string]any{"ciphertext": ct})
	if dec.Data["plaintext"] != plain {
		t.Fatal("decrypted plaintext differs")
	}
}

func TestSmoke_Vault_databaseCredsLogInUntilRevoked(t *testing.T) {
	pg := framework.StartPostgres(t)
	v := framework.StartVault(t)
	role := v.EnableDatabase(t, pg, framework.DatabaseOptions{})

	creds, err := v.Client.Logical().ReadWithContext(ctx(t), "database/creds/"+role)
	if err != nil {
		t.Fatalf("read creds: %v", err)
	}
	user, _ := creds.Data["username"].(string)
	pass, _ := creds.Data["password"].(string)
	if user == "" || pass == "" || creds.LeaseID == "" || creds.LeaseDuration <= 0 {
		t.Fatalf("incomplete credentials: user=%q lease=%q ttl=%d", user, creds.LeaseID, creds.LeaseDuration)
	}
	if err := pg.CanLogin(ctx(t), user, pass); err != nil {
		t.Fatalf("login with issued credentials: %v", err)
	}
	if err := v.Client.Sys().RevokeWithContext(ctx(t), creds.LeaseID); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if err := pg.CanLogin(ctx(t), user, pass); err == nil {
		t.Fatal("login still works after the lease was revoked")
	}
}

func TestSmoke_Vault_authMethodsAcceptProjectedToken(t *testing.T) {
	kube := framework.StartKube(t, framework.KubeOptions{})
	v := framework.StartVault(t)
	ns := kube.CreateNamespace(t, "smoke")
	kube.CreateServiceAccount(t, ns, "keywarden")
	// Vault passes the client's token to TokenReview with the role's audience.
	v.PutPolicy(t, "read-kw", `path "secret/data/*" { capabilities = ["read"] }`)
	v.EnableKubernetesAuth(t, kube, framework.KubernetesAuthOptions{
		Role: "keywarden", ServiceAccounts: []string{"keywarden"}, Namespaces: []string{ns},
		Audience: "vault", Policies: []string{"read-kw"},
	})
	v.EnableJWTAuth(t, kube, framework.JWTAuthOptions{
		Role: "keywarden", BoundAudiences: []string{"vault"},
		BoundSubject: "system:serviceaccount:" + ns + ":keywarden", Policies: []string{"read-kw"},
	})
	v.EnableJWTAuth(t, kube, framework.JWTAuthOptions{
		Path: "jwt-pubkey", PublicKeys: true, Role: "keywarden", BoundAudiences: []string{"vault"},
		Policies: []string{"read-kw"},
	})
	tok, _ := kube.TokenRequest(t, ns, "keywarden", []string{"vault"}, 0, nil)
	for _, path := range []string{"kubernetes", "jwt", "jwt-pubkey"} {
		c, err := v.Login(ctx(t), path, "keywarden", tok)
		if err != nil {
			t.Fatalf("login via %s: %v", path, err)
		}
		self, err := c.Auth().Token().LookupSelfWithContext(ctx(t))
		if err != nil {
			t.Fatalf("lookup-self after %s login: %v", path, err)
		}
		if pols, _ := self.TokenPolicies(); !contains(pols, "read-kw") {
			t.Fatalf("%s login: policies %v lack read-kw", path, pols)
		}
	}
	// A token for another audience is refused.
	bad, _ := kube.TokenRequest(t, ns, "keywarden", []string{"not-vault"}, 0, nil)
	if _, err := v.Login(ctx(t), "jwt", "keywarden", bad); err == nil {
		t.Fatal("jwt login accepted a token for another audience")
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestSmoke_Postgres_runsUnprivilegedOnLoopback(t *testing.T) {
	pg := framework.StartPostgres(t)
	pg.Exec(t, `CREATE ROLE probe LOGIN PASSWORD 'probe-pw'`)
	if err := pg.CanLogin(ctx(t), "probe", "probe-pw"); err != nil {
		t.Fatalf("login: %v", err)
	}
	err := pg.CanLogin(ctx(t), "probe", "wrong-pw")
	if err == nil {
		t.Fatal("login with a wrong password succeeded")
	}
	if strings.Contains(err.Error(), "wrong-pw") {
		t.Fatal("login error contains the password")
	}
}
