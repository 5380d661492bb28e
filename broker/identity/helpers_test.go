package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clocktesting "k8s.io/utils/clock/testing"
)

const (
	testIssuerURL = "https://kubernetes.default.svc.cluster.local"
	testRSAKid    = "rsa-1"
	testECKid     = "ec-1"
)

var testNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

var (
	testKeysOnce sync.Once
	testRSAKey   *rsa.PrivateKey
	testECKey    *ecdsa.PrivateKey
	otherECKey   *ecdsa.PrivateKey // signs tokens the verifier must not trust
)

// testKeys generates the test keys once per process: RSA generation is slow.
func testKeys(tb testing.TB) {
	tb.Helper()
	testKeysOnce.Do(func() {
		var err error
		if testRSAKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if testECKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		if otherECKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
	})
}

// testKeySet holds the public halves of the RSA and EC test keys.
func testKeySet(tb testing.TB) *StaticKeySet {
	tb.Helper()
	testKeys(tb)
	ks, err := NewStaticKeySet(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &testRSAKey.PublicKey, KeyID: testRSAKid},
		{Key: &testECKey.PublicKey, KeyID: testECKid, Algorithm: "ES256", Use: "sig"},
	}})
	if err != nil {
		tb.Fatalf("NewStaticKeySet: %v", err)
	}
	return ks
}

// countingKeySet is a hand-written fake that counts lookups and can fail.
type countingKeySet struct {
	inner KeySet
	err   error
	calls atomic.Int64
}

func (c *countingKeySet) Key(ctx context.Context, kid string) (*jose.JSONWebKey, error) {
	c.calls.Add(1)
	if c.err != nil {
		return nil, c.err
	}
	return c.inner.Key(ctx, kid)
}

func newTestVerifier(tb testing.TB, keys KeySet, mutate func(*Config)) *Verifier {
	tb.Helper()
	cfg := Config{
		Issuer:      testIssuerURL,
		Keys:        keys,
		TrustDomain: spiffeid.RequireTrustDomainFromString("td"),
		Clock:       clocktesting.NewFakePassiveClock(testNow),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	v, err := NewVerifier(cfg)
	if err != nil {
		tb.Fatalf("NewVerifier: %v", err)
	}
	return v
}

// validClaims returns the claims of a valid bound token at testNow.
func validClaims() map[string]any {
	iat := testNow.Add(-time.Minute).Unix()
	return map[string]any{
		"iss": testIssuerURL,
		"sub": "system:serviceaccount:demo:app",
		"aud": []any{"keywarden"},
		"exp": iat + 3600,
		"iat": iat,
		"nbf": iat,
		"jti": "6f1c2a4e-0000-4000-8000-000000000001",
		"kubernetes.io": map[string]any{
			"namespace": "demo",
			"serviceaccount": map[string]any{
				"name": "app", "uid": "11111111-2222-4333-8444-555555555555",
			},
			"pod": map[string]any{
				"name": "app-7d9f8b6c5-x2x4z", "uid": "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
			},
			"node": map[string]any{
				"name": "node-1", "uid": "99999999-8888-4777-8666-555555555555",
			},
		},
	}
}

func k8sClaim(c map[string]any) map[string]any { return c["kubernetes.io"].(map[string]any) }

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatalf("marshal: %v", err)
	}
	return b
}

// signRaw builds a compact JWS by hand so tests control every byte of the
// header and payload. Signing is independent of go-jose on purpose.
func signRaw(tb testing.TB, key crypto.Signer, header, payload []byte) string {
	tb.Helper()
	input := b64(header) + "." + b64(payload)
	h := sha256.Sum256([]byte(input))
	var sig []byte
	switch k := key.(type) {
	case *rsa.PrivateKey:
		var err error
		if sig, err = rsa.SignPKCS1v15(nil, k, crypto.SHA256, h[:]); err != nil {
			tb.Fatalf("sign: %v", err)
		}
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
		if err != nil {
			tb.Fatalf("sign: %v", err)
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	default:
		tb.Fatalf("unsupported key %T", key)
	}
	return input + "." + b64(sig)
}

func header(alg, kid string) []byte {
	if kid == "" {
		return []byte(`{"alg":"` + alg + `"}`)
	}
	return []byte(`{"alg":"` + alg + `","kid":"` + kid + `"}`)
}

func signRS(tb testing.TB, claims map[string]any) string {
	tb.Helper()
	testKeys(tb)
	return signRaw(tb, testRSAKey, header("RS256", testRSAKid), mustJSON(tb, claims))
}

func signES(tb testing.TB, claims map[string]any) string {
	tb.Helper()
	testKeys(tb)
	return signRaw(tb, testECKey, header("ES256", testECKid), mustJSON(tb, claims))
}
