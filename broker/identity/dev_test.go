package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/base64"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clocktesting "k8s.io/utils/clock/testing"
)

const devIssuerURL = "https://keywarden.dev"

func newTestDevIssuer(t *testing.T) (*DevIssuer, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dev-issuer.jwk")
	d, err := LoadOrCreateDevIssuer(path, devIssuerURL)
	if err != nil {
		t.Fatalf("LoadOrCreateDevIssuer: %v", err)
	}
	return d, path
}

func devVerifier(t *testing.T, d *DevIssuer, now time.Time) *Verifier {
	t.Helper()
	v, err := NewVerifier(Config{
		Issuer:      d.Issuer(),
		Keys:        d.KeySet(),
		TrustDomain: spiffeid.RequireTrustDomainFromString("keywarden.dev"),
		Clock:       clocktesting.NewFakePassiveClock(now),
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestLoadOrCreateDevIssuer_createsAndReloads(t *testing.T) {
	d, path := newTestDevIssuer(t)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v, want 0600", st.Mode().Perm())
	}
	d2, err := LoadOrCreateDevIssuer(path, devIssuerURL)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if d.KeyID() != d2.KeyID() || d2.Issuer() != devIssuerURL {
		t.Fatalf("reload changed the key: %s vs %s", d.KeyID(), d2.KeyID())
	}
	// A token from the first instance verifies with the second's keys.
	tok, err := d.Issue(DevTokenRequest{Namespace: "demo", ServiceAccount: "app", Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := devVerifier(t, d2, testNow).Verify(context.Background(), tok); err != nil {
		t.Fatalf("Verify after reload: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}

func TestLoadOrCreateDevIssuer_refusesUnsafeFiles(t *testing.T) {
	_, path := newTestDevIssuer(t)
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o644} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadOrCreateDevIssuer(path, devIssuerURL)
		if err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("mode %v: err = %v, want refusal", mode, err)
		}
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}

	link := filepath.Join(t.TempDir(), "link.jwk")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateDevIssuer(link, devIssuerURL); err == nil {
		t.Fatal("symlinked key file accepted")
	}

	bad := filepath.Join(t.TempDir(), "bad.jwk")
	if err := os.WriteFile(bad, []byte(`{"kty":"oct","k":"c2VjcmV0"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreateDevIssuer(bad, devIssuerURL)
	if err == nil || strings.Contains(err.Error(), "c2VjcmV0") {
		t.Fatalf("err = %v", err)
	}

	for _, args := range [][2]string{{"", devIssuerURL}, {path, ""}} {
		if _, err := LoadOrCreateDevIssuer(args[0], args[1]); err == nil {
			t.Fatalf("LoadOrCreateDevIssuer(%q, %q) accepted", args[0], args[1])
		}
	}
}

func TestDevIssuer_Issue_verifies(t *testing.T) {
	d, _ := newTestDevIssuer(t)
	v := devVerifier(t, d, testNow)
	tok, err := d.Issue(DevTokenRequest{Namespace: "demo", ServiceAccount: "app", Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	w, err := v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if w.ID.String() != "spiffe://keywarden.dev/ns/demo/sa/app" || w.PodName != "app-dev" || w.NodeName != "dev-node" ||
		w.PodUID == "" || w.NodeUID == "" || w.ServiceAccountUID == "" || w.Issuer != devIssuerURL ||
		!w.ExpiresAt.Equal(testNow.Add(DefaultDevTTL).Truncate(time.Second)) || !w.NotBefore.Equal(testNow.Truncate(time.Second)) ||
		len(w.Audiences) != 1 || w.Audiences[0] != "keywarden" {
		t.Fatalf("workload = %+v", w)
	}

	// SA UID is stable per (namespace, sa) and differs otherwise; pod UIDs are random.
	tok2, _ := d.Issue(DevTokenRequest{Namespace: "demo", ServiceAccount: "app", Now: testNow})
	other, _ := d.Issue(DevTokenRequest{Namespace: "other", ServiceAccount: "app", Now: testNow})
	w2, err := v.Verify(context.Background(), tok2)
	if err != nil {
		t.Fatal(err)
	}
	w3, err := v.Verify(context.Background(), other)
	if err != nil {
		t.Fatal(err)
	}
	if w2.ServiceAccountUID != w.ServiceAccountUID || w3.ServiceAccountUID == w.ServiceAccountUID || w2.PodUID == w.PodUID {
		t.Fatalf("uids: %s %s %s / pods %s %s", w.ServiceAccountUID, w2.ServiceAccountUID, w3.ServiceAccountUID, w.PodUID, w2.PodUID)
	}
	if len(w.ServiceAccountUID) != 36 || w.ServiceAccountUID[14] != '4' {
		t.Fatalf("SA UID %q is not UUID-shaped", w.ServiceAccountUID)
	}

	// Explicit fields and expiry.
	tok3, err := d.Issue(DevTokenRequest{Namespace: "demo", ServiceAccount: "app", PodName: "p", PodUID: "u-1",
		NodeName: "n", Audiences: []string{"x", "keywarden"}, TTL: time.Minute, Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	w4, err := v.Verify(context.Background(), tok3)
	if err != nil || w4.PodName != "p" || w4.PodUID != "u-1" || w4.NodeName != "n" || len(w4.Audiences) != 2 {
		t.Fatalf("w4 = %+v, %v", w4, err)
	}
	if _, err := devVerifier(t, d, testNow.Add(2*time.Minute)).Verify(context.Background(), tok3); err == nil {
		t.Fatal("expired dev token accepted")
	}
	// A verifier with another dev issuer's keys rejects it.
	d2, _ := newTestDevIssuer(t)
	if _, err := devVerifier(t, d2, testNow).Verify(context.Background(), tok); err == nil {
		t.Fatal("token from another dev issuer accepted")
	}
}

func TestDevIssuer_Issue_validation(t *testing.T) {
	d, _ := newTestDevIssuer(t)
	for name, req := range map[string]DevTokenRequest{
		"no namespace":    {ServiceAccount: "app"},
		"no sa":           {Namespace: "demo"},
		"bad namespace":   {Namespace: "Demo", ServiceAccount: "app"},
		"bad sa":          {Namespace: "demo", ServiceAccount: "app_x"},
		"bad pod":         {Namespace: "demo", ServiceAccount: "app", PodName: "../p"},
		"bad pod uid":     {Namespace: "demo", ServiceAccount: "app", PodUID: "a b"},
		"bad node":        {Namespace: "demo", ServiceAccount: "app", NodeName: "N"},
		"negative ttl":    {Namespace: "demo", ServiceAccount: "app", TTL: -time.Second},
		"ttl above limit": {Namespace: "demo", ServiceAccount: "app", TTL: 25 * time.Hour},
	} {
		if _, err := d.Issue(req); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestDevIssuer_redactsPrivateKey(t *testing.T) {
	d, _ := newTestDevIssuer(t)
	if len(d.JWKS().Keys) != 1 || !d.JWKS().Keys[0].IsPublic() {
		t.Fatal("JWKS is not public-only")
	}
	if _, ok := d.JWKS().Keys[0].Key.(*ecdsa.PublicKey); !ok {
		t.Fatal("JWKS key is not an ECDSA public key")
	}
	dBytes, err := d.key.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{
		base64.RawURLEncoding.EncodeToString(dBytes),
		fmt.Sprintf("%x", dBytes),
		fmt.Sprint(new(big.Int).SetBytes(dBytes)),
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("issuer", "d", d)
	out := fmt.Sprintf("%v %+v %#v %s %d %x", d, d, d, d, d, d) + buf.String()
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Fatalf("private key printed: %s", out)
		}
	}
}
