package identity

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestVerifier_Verify_rejects(t *testing.T) {
	testKeys(t)
	with := func(mut func(c map[string]any)) map[string]any {
		c := validClaims()
		mut(c)
		return c
	}
	valid := signRS(t, validClaims())
	parts := strings.Split(valid, ".")

	pubDER, err := x509.MarshalPKIXPublicKey(&testRSAKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	hs256 := func() string {
		in := b64(header("HS256", testRSAKid)) + "." + b64(mustJSON(t, validClaims()))
		m := hmac.New(sha256.New, pubPEM)
		m.Write([]byte(in))
		return in + "." + b64(m.Sum(nil))
	}()

	leeway := DefaultLeeway
	now := testNow.Unix()

	tests := []struct {
		name   string
		token  string
		reason string
	}{
		{"empty", "", ReasonMalformed},
		{"two parts", parts[0] + "." + parts[1], ReasonMalformed},
		{"four parts", valid + ".x", ReasonMalformed},
		{"bad base64 header", "!!!." + parts[1] + "." + parts[2], ReasonMalformed},
		{"bad base64 signature", parts[0] + "." + parts[1] + ".a*b", ReasonMalformed},
		{"padded base64", parts[0] + "=." + parts[1] + "." + parts[2], ReasonMalformed},
		{"newline inside base64", parts[0][:4] + "\n" + parts[0][4:] + "." + parts[1] + "." + parts[2], ReasonMalformed},
		{"header not json", b64([]byte("not json")) + "." + parts[1] + "." + parts[2], ReasonMalformed},
		{"header array", b64([]byte(`["RS256"]`)) + "." + parts[1] + "." + parts[2], ReasonMalformed},
		{"payload not json", signRaw(t, testRSAKey, header("RS256", testRSAKid), []byte("not json")), ReasonMalformed},
		{"payload trailing data", signRaw(t, testRSAKey, header("RS256", testRSAKid), append(mustJSON(t, validClaims()), []byte(` {}`)...)), ReasonMalformed},
		{"payload invalid utf8", signRaw(t, testRSAKey, header("RS256", testRSAKid), []byte("{\"iss\":\"\xff\"}")), ReasonMalformed},
		{"alg none", b64(header("none", testRSAKid)) + "." + parts[1] + ".", ReasonUnsupportedAlgorithm},
		{"alg None", b64(header("None", testRSAKid)) + "." + parts[1] + ".", ReasonUnsupportedAlgorithm},
		{"HS256 keyed with the RSA public key PEM", hs256, ReasonUnsupportedAlgorithm},
		{"RS384", signRaw(t, testRSAKey, header("RS384", testRSAKid), mustJSON(t, validClaims())), ReasonUnsupportedAlgorithm},
		{"alg not a string", signRaw(t, testRSAKey, []byte(`{"alg":1,"kid":"rsa-1"}`), mustJSON(t, validClaims())), ReasonMalformed},
		{"crit header", signRaw(t, testRSAKey, []byte(`{"alg":"RS256","kid":"rsa-1","crit":["exp"],"exp":1}`), mustJSON(t, validClaims())), ReasonMalformed},
		{"duplicate header key", signRaw(t, testRSAKey, []byte(`{"alg":"RS256","kid":"rsa-1","alg":"none"}`), mustJSON(t, validClaims())), ReasonMalformed},
		{"missing kid", signRaw(t, testRSAKey, header("RS256", ""), mustJSON(t, validClaims())), ReasonMissingKeyID},
		{"empty kid", signRaw(t, testRSAKey, []byte(`{"alg":"RS256","kid":""}`), mustJSON(t, validClaims())), ReasonMissingKeyID},
		{"unknown kid", signRaw(t, testRSAKey, header("RS256", "nope"), mustJSON(t, validClaims())), ReasonUnknownKeyID},
		{"ES256 header with RSA kid", signRaw(t, testECKey, header("ES256", testRSAKid), mustJSON(t, validClaims())), ReasonKeyMismatch},
		{"RS256 header with EC kid", signRaw(t, testRSAKey, header("RS256", testECKid), mustJSON(t, validClaims())), ReasonKeyMismatch},
		{"tampered payload", parts[0] + "." + b64(mustJSON(t, with(func(c map[string]any) { c["sub"] = "system:serviceaccount:demo:admin" }))) + "." + parts[2], ReasonBadSignature},
		{"tampered signature", parts[0] + "." + parts[1] + "." + flipFirstChar(parts[2]), ReasonBadSignature},
		{"empty signature", parts[0] + "." + parts[1] + ".", ReasonBadSignature},
		{"signed by a key not in the set, known kid", signRaw(t, otherECKey, header("ES256", testECKid), mustJSON(t, validClaims())), ReasonBadSignature},
		{"signed by a key not in the set, own kid", signRaw(t, otherECKey, header("ES256", "other"), mustJSON(t, validClaims())), ReasonUnknownKeyID},
		{"duplicate top-level aud", signRaw(t, testRSAKey, header("RS256", testRSAKid), dupPayload(t, `"aud":["keywarden"],`, `"aud":["other"],`)), ReasonDuplicateClaim},
		{"duplicate nested namespace", signRaw(t, testRSAKey, header("RS256", testRSAKid), dupPayload(t, `"namespace":"demo",`, `"namespace":"kube-system",`)), ReasonDuplicateClaim},
		{"case-variant duplicate iss", signRaw(t, testRSAKey, header("RS256", testRSAKid), dupPayload(t, `"iss":"`+testIssuerURL+`",`, `"ISS":"evil",`)), ReasonDuplicateClaim},
		{"legacy secret token", signRS(t, legacyClaims()), ReasonLegacyToken},
		{"legacy issuer", signRS(t, with(func(c map[string]any) { c["iss"] = "kubernetes/serviceaccount" })), ReasonLegacyToken},
		{"wrong issuer", signRS(t, with(func(c map[string]any) { c["iss"] = "https://evil.example" })), ReasonWrongIssuer},
		{"issuer trailing slash", signRS(t, with(func(c map[string]any) { c["iss"] = testIssuerURL + "/" })), ReasonWrongIssuer},
		{"missing issuer", signRS(t, with(func(c map[string]any) { delete(c, "iss") })), ReasonWrongIssuer},
		{"issuer not a string", signRS(t, with(func(c map[string]any) { c["iss"] = 1 })), ReasonMalformed},
		{"missing aud", signRS(t, with(func(c map[string]any) { delete(c, "aud") })), ReasonMissingAudience},
		{"empty aud array", signRS(t, with(func(c map[string]any) { c["aud"] = []any{} })), ReasonMissingAudience},
		{"empty aud string", signRS(t, with(func(c map[string]any) { c["aud"] = "" })), ReasonMissingAudience},
		{"aud not a string", signRS(t, with(func(c map[string]any) { c["aud"] = []any{1} })), ReasonMalformed},
		{"wrong aud", signRS(t, with(func(c map[string]any) { c["aud"] = []any{"vault", "other"} })), ReasonWrongAudience},
		{"apiserver audience only", signRS(t, with(func(c map[string]any) { c["aud"] = []any{"https://kubernetes.default.svc"} })), ReasonWrongAudience},
		{"missing exp", signRS(t, with(func(c map[string]any) { delete(c, "exp") })), ReasonMissingExp},
		{"null exp", signRS(t, with(func(c map[string]any) { c["exp"] = nil })), ReasonMissingExp},
		{"exp as string", signRS(t, with(func(c map[string]any) { c["exp"] = fmt.Sprint(now + 60) })), ReasonMalformed},
		{"missing iat", signRS(t, with(func(c map[string]any) { delete(c, "iat") })), ReasonMissingIat},
		{"expired beyond leeway", signRS(t, with(func(c map[string]any) { c["iat"] = now - 600; c["exp"] = now - int64(leeway/time.Second) - 1 })), ReasonExpired},
		{"expired exactly at leeway", signRS(t, with(func(c map[string]any) { c["iat"] = now - 600; c["exp"] = now - int64(leeway/time.Second) })), ReasonExpired},
		{"missing nbf", signRS(t, with(func(c map[string]any) { delete(c, "nbf") })), ReasonMissingNbf},
		{"null nbf", signRS(t, with(func(c map[string]any) { c["nbf"] = nil })), ReasonMissingNbf},
		{"nbf as string", signRS(t, with(func(c map[string]any) { c["nbf"] = fmt.Sprint(now) })), ReasonMalformed},
		{"nbf future", signRS(t, with(func(c map[string]any) { c["nbf"] = now + int64(leeway/time.Second) + 1 })), ReasonNotYetValid},
		{"iat future", signRS(t, with(func(c map[string]any) { c["iat"] = now + int64(leeway/time.Second) + 1; c["nbf"] = now })), ReasonIssuedInFuture},
		{"exp before iat", signRS(t, with(func(c map[string]any) { c["iat"] = now + 20; c["exp"] = now + 10 })), ReasonInvalidLifetime},
		{"lifetime too long", signRS(t, with(func(c map[string]any) {
			c["iat"] = now - 60
			c["exp"] = now - 60 + int64(DefaultMaxLifetime/time.Second) + 1
		})), ReasonLifetimeTooLong},
		{"apiserver one-year token", signRS(t, with(func(c map[string]any) { c["iat"] = now - 60; c["exp"] = now + 365*24*3600 })), ReasonLifetimeTooLong},
		{"missing kubernetes.io", signRS(t, with(func(c map[string]any) { delete(c, "kubernetes.io") })), ReasonInvalidNamespace},
		{"kubernetes.io not an object", signRS(t, with(func(c map[string]any) { c["kubernetes.io"] = "x" })), ReasonMalformed},
		{"namespace not a DNS label", signRS(t, with(func(c map[string]any) { k8sClaim(c)["namespace"] = "Demo" })), ReasonInvalidNamespace},
		{"namespace with dot", signRS(t, with(func(c map[string]any) { k8sClaim(c)["namespace"] = "a.b" })), ReasonInvalidNamespace},
		{"missing service account", signRS(t, with(func(c map[string]any) { delete(k8sClaim(c), "serviceaccount") })), ReasonInvalidSA},
		{"service account not a DNS subdomain", signRS(t, with(func(c map[string]any) {
			k8sClaim(c)["serviceaccount"].(map[string]any)["name"] = "app_1"
		})), ReasonInvalidSA},
		{"missing service account uid", signRS(t, with(func(c map[string]any) {
			delete(k8sClaim(c)["serviceaccount"].(map[string]any), "uid")
		})), ReasonInvalidSA},
		{"sub inconsistent with namespace", signRS(t, with(func(c map[string]any) { c["sub"] = "system:serviceaccount:other:app" })), ReasonSubjectMismatch},
		{"sub inconsistent with service account", signRS(t, with(func(c map[string]any) { c["sub"] = "system:serviceaccount:demo:admin" })), ReasonSubjectMismatch},
		{"missing sub", signRS(t, with(func(c map[string]any) { delete(c, "sub") })), ReasonSubjectMismatch},
		{"missing pod binding", signRS(t, with(func(c map[string]any) { delete(k8sClaim(c), "pod") })), ReasonNoPodBinding},
		{"pod without uid", signRS(t, with(func(c map[string]any) { delete(k8sClaim(c)["pod"].(map[string]any), "uid") })), ReasonNoPodBinding},
		{"pod name invalid", signRS(t, with(func(c map[string]any) { k8sClaim(c)["pod"].(map[string]any)["name"] = "../x" })), ReasonInvalidPod},
		{"pod uid with spaces", signRS(t, with(func(c map[string]any) { k8sClaim(c)["pod"].(map[string]any)["uid"] = "a b" })), ReasonInvalidPod},
		{"node name invalid", signRS(t, with(func(c map[string]any) { k8sClaim(c)["node"].(map[string]any)["name"] = "NODE" })), ReasonInvalidNode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newTestVerifier(t, testKeySet(t), nil)
			_, err := v.Verify(context.Background(), NewToken(tt.token))
			assertReason(t, err, tt.reason)
		})
	}
}

func assertReason(t *testing.T, err error, reason string) {
	t.Helper()
	if err == nil {
		t.Fatalf("Verify succeeded, want reason %q", reason)
	}
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("Verify error %v is not a *VerifyError", err)
	}
	if !errors.Is(err, ErrInvalidToken) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Verify error %v: want Is(ErrInvalidToken) and not Is(ErrUnavailable)", err)
	}
	if ve.Reason != reason {
		t.Fatalf("reason = %q, want %q", ve.Reason, reason)
	}
	if err.Error() != "invalid token: "+reason {
		t.Fatalf("Error() = %q", err.Error())
	}
}

func flipFirstChar(s string) string {
	c := 'A'
	if s[0] == 'A' {
		c = 'B'
	}
	return string(c) + s[1:]
}

// dupPayload inserts extra right after the first occurrence of anchor in the
// JSON of validClaims, producing a duplicate key.
func dupPayload(tb testing.TB, anchor, extra string) []byte {
	tb.Helper()
	s := string(mustJSON(tb, validClaims()))
	if !strings.Contains(s, anchor) {
		tb.Fatalf("anchor %q not in %s", anchor, s)
	}
	return []byte(strings.Replace(s, anchor, anchor+extra, 1))
}

// legacyClaims are the claims of a secret-based service-account token
// (Kubernetes before 1.24): no exp, no aud, no pod binding.
func legacyClaims() map[string]any {
	return map[string]any{
		"iss":                                    "kubernetes/serviceaccount",
		"sub":                                    "system:serviceaccount:demo:app",
		"kubernetes.io/serviceaccount/namespace": "demo",
		"kubernetes.io/serviceaccount/secret.name":          "app-token-x2x4z",
		"kubernetes.io/serviceaccount/service-account.name": "app",
		"kubernetes.io/serviceaccount/service-account.uid":  "11111111-2222-4333-8444-555555555555",
	}
}

func TestVerifier_Verify_oversizedBeforeParse(t *testing.T) {
	keys := &countingKeySet{inner: testKeySet(t)}
	v := newTestVerifier(t, keys, nil)

	garbage := strings.Repeat("A", DefaultMaxTokenSize+1)
	c := validClaims()
	c["pad"] = strings.Repeat("x", DefaultMaxTokenSize)
	bigValid := signRS(t, c)

	for _, tok := range []string{garbage, bigValid} {
		_, err := v.Verify(context.Background(), NewToken(tok))
		assertReason(t, err, ReasonTooLarge)
	}
	if n := keys.calls.Load(); n != 0 {
		t.Fatalf("key set consulted %d times for oversized tokens, want 0", n)
	}
	// The same token fits when the limit allows it: the rejection was the size.
	v = newTestVerifier(t, keys, func(c *Config) { c.MaxTokenSize = 64 << 10 })
	if _, err := v.Verify(context.Background(), NewToken(bigValid)); err != nil {
		t.Fatalf("Verify with larger limit: %v", err)
	}
}

func TestVerifier_Verify_accepts(t *testing.T) {
	now := testNow.Unix()
	lw := int64(DefaultLeeway / time.Second)
	tests := []struct {
		name   string
		mutate func(c map[string]any)
		cfg    func(*Config)
	}{
		{"valid", func(map[string]any) {}, nil},
		{"aud string", func(c map[string]any) { c["aud"] = "keywarden" }, nil},
		{"aud array with others", func(c map[string]any) { c["aud"] = []any{"vault", "keywarden"} }, nil},
		{"exp just inside leeway", func(c map[string]any) { c["iat"] = now - 600; c["exp"] = now - lw + 1 }, nil},
		{"nbf within leeway", func(c map[string]any) { c["nbf"] = now + lw }, nil},
		{"iat within leeway", func(c map[string]any) { c["iat"] = now + lw; c["nbf"] = now }, nil},
		{"fractional times", func(c map[string]any) { c["iat"] = float64(now) - 0.5; c["exp"] = float64(now) + 600.25 }, nil},
		{"lifetime exactly max", func(c map[string]any) {
			c["iat"] = now - 60
			c["exp"] = now - 60 + int64(DefaultMaxLifetime/time.Second)
		}, nil},
		{"no node claim", func(c map[string]any) { delete(k8sClaim(c), "node") }, nil},
		{"unknown extra claims", func(c map[string]any) { c["extra"] = map[string]any{"x": []any{1, 2}} }, nil},
		{"no pod binding when not required", func(c map[string]any) { delete(k8sClaim(c), "pod") }, func(c *Config) { c.DisablePodBinding = true }},
		{"custom audience", func(c map[string]any) { c["aud"] = []any{"custom"} }, func(c *Config) { c.Audiences = []string{"custom"} }},
	}
	for _, tt := range tests {
		for _, alg := range []string{"RS256", "ES256"} {
			t.Run(tt.name+"/"+alg, func(t *testing.T) {
				c := validClaims()
				tt.mutate(c)
				tok := signRS(t, c)
				if alg == "ES256" {
					tok = signES(t, c)
				}
				v := newTestVerifier(t, testKeySet(t), tt.cfg)
				if _, err := v.Verify(context.Background(), NewToken(tok)); err != nil {
					t.Fatalf("Verify: %v", err)
				}
			})
		}
	}
}

func TestVerifier_Verify_workloadFullyPopulated(t *testing.T) {
	v := newTestVerifier(t, testKeySet(t), nil)
	for _, tok := range []string{signRS(t, validClaims()), signES(t, validClaims())} {
		w, err := v.Verify(context.Background(), NewToken(tok))
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		iat := time.Unix(testNow.Add(-time.Minute).Unix(), 0).UTC()
		want := Workload{
			Issuer:            testIssuerURL,
			Subject:           "system:serviceaccount:demo:app",
			Namespace:         "demo",
			ServiceAccount:    "app",
			ServiceAccountUID: "11111111-2222-4333-8444-555555555555",
			PodName:           "app-7d9f8b6c5-x2x4z",
			PodUID:            "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
			NodeName:          "node-1",
			NodeUID:           "99999999-8888-4777-8666-555555555555",
			Audiences:         []string{"keywarden"},
			IssuedAt:          iat,
			NotBefore:         iat,
			ExpiresAt:         iat.Add(time.Hour),
			ID:                spiffeid.RequireFromString("spiffe://td/ns/demo/sa/app"),
		}
		if fmt.Sprintf("%#v", w) != fmt.Sprintf("%#v", want) {
			t.Fatalf("workload =\n%#v\nwant\n%#v", w, want)
		}
		if w.ID.String() != "spiffe://td/ns/demo/sa/app" {
			t.Fatalf("ID = %s", w.ID)
		}
	}
}

func TestVerifier_Verify_keySetUnavailable(t *testing.T) {
	const kidInCause = "kid-from-attacker"
	keys := &countingKeySet{err: fmt.Errorf("fetch jwks for %s: %w", kidInCause, ErrUnavailable)}
	v := newTestVerifier(t, keys, nil)
	testKeys(t)
	tok := signRaw(t, testECKey, header("ES256", kidInCause), mustJSON(t, validClaims()))
	_, err := v.Verify(context.Background(), NewToken(tok))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if errors.Is(err, ErrInvalidToken) {
		t.Fatalf("err = %v must not be ErrInvalidToken", err)
	}
	if strings.Contains(err.Error(), kidInCause) {
		t.Fatalf("error %q contains the kid", err)
	}
	if keys.calls.Load() != 1 {
		t.Fatalf("key set calls = %d, want 1", keys.calls.Load())
	}
}

func TestVerifier_Verify_contextErrorIsUnavailable(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	v := newTestVerifier(t, &countingKeySet{err: context.Canceled}, nil)
	_, err := v.Verify(ctx, NewToken(signES(t, validClaims())))
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.Canceled) || errors.Is(err, ErrInvalidToken) {
		t.Fatalf("err = %v", err)
	}
}

func TestNewVerifier_config(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("td")
	keys := testKeySet(t)
	base := func() Config { return Config{Issuer: testIssuerURL, Keys: keys, TrustDomain: td} }
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"missing issuer", func(c *Config) { c.Issuer = "" }, "issuer is required"},
		{"legacy issuer", func(c *Config) { c.Issuer = "kubernetes/serviceaccount" }, "legacy"},
		{"missing keys", func(c *Config) { c.Keys = nil }, "key set is required"},
		{"missing trust domain", func(c *Config) { c.TrustDomain = spiffeid.TrustDomain{} }, "trust domain is required"},
		{"empty audience", func(c *Config) { c.Audiences = []string{""} }, "audience must not be empty"},
		{"apiserver audience", func(c *Config) { c.Audiences = []string{"keywarden", "https://kubernetes.default.svc"} }, "apiserver"},
		{"issuer as audience", func(c *Config) { c.Audiences = []string{testIssuerURL} }, "apiserver"},
		{"leeway max", func(c *Config) { c.Leeway = MaxLeeway }, ""},
		{"leeway too large", func(c *Config) { c.Leeway = MaxLeeway + time.Second }, "above the maximum"},
		{"leeway negative", func(c *Config) { c.Leeway = -time.Second }, "negative"},
		{"max lifetime negative", func(c *Config) { c.MaxLifetime = -time.Second }, "negative"},
		{"token size negative", func(c *Config) { c.MaxTokenSize = -1 }, "negative"},
		{"token size too large", func(c *Config) { c.MaxTokenSize = 2 << 20 }, "above the limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base()
			tt.mutate(&cfg)
			v, err := NewVerifier(cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("NewVerifier: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NewVerifier err = %v, want containing %q", err, tt.wantErr)
			}
			if v != nil {
				t.Fatal("verifier returned with error")
			}
		})
	}

	v, err := NewVerifier(base())
	if err != nil {
		t.Fatal(err)
	}
	if v.leeway != DefaultLeeway || v.maxLifetime != DefaultMaxLifetime || v.maxTokenSize != DefaultMaxTokenSize ||
		!v.requirePod || len(v.audiences) != 1 || v.audiences[0] != DefaultAudience || v.clock == nil {
		t.Fatalf("defaults not applied: %+v", v)
	}
}

func TestVerifier_Verify_leewayConfigured(t *testing.T) {
	c := validClaims()
	now := testNow.Unix()
	c["iat"], c["exp"] = now-600, now-45 // expired 45 s ago
	tok := NewToken(signES(t, c))
	if _, err := newTestVerifier(t, testKeySet(t), nil).Verify(context.Background(), tok); err == nil {
		t.Fatal("accepted with default 30s leeway")
	}
	if _, err := newTestVerifier(t, testKeySet(t), func(c *Config) { c.Leeway = time.Minute }).Verify(context.Background(), tok); err != nil {
		t.Fatalf("rejected with 60s leeway: %v", err)
	}
}

func TestVerifier_Verify_mutatedTokensNeverVerify(t *testing.T) {
	v := newTestVerifier(t, testKeySet(t), nil)
	const alphabet = "AQgw_-.9"
	var tried, accepted int
	for _, tok := range []string{signRS(t, validClaims()), signES(t, validClaims())} {
		if _, err := v.Verify(context.Background(), NewToken(tok)); err != nil {
			t.Fatalf("original token rejected: %v", err)
		}
		check := func(m string) {
			if m == tok {
				return
			}
			tried++
			if _, err := v.Verify(context.Background(), NewToken(m)); err == nil {
				accepted++
				t.Errorf("mutated token accepted (mutation %d)", tried)
			}
		}
		for i := 0; i < len(tok); i++ {
			for _, r := range alphabet {
				check(tok[:i] + string(r) + tok[i+1:])
			}
			check(tok[:i] + tok[i+1:])
			check(tok[:i] + tok[i:i+1] + tok[i:])
		}
	}
	t.Logf("%d false accepts over %d mutated tokens", accepted, tried)
	if accepted != 0 {
		t.Fatalf("%d false accepts over %d mutated tokens", accepted, tried)
	}
}

func BenchmarkVerifier_Verify(b *testing.B) {
	v := newTestVerifier(b, testKeySet(b), nil)
	for _, tc := range []struct {
		name string
		tok  Token
	}{
		{"ES256", NewToken(signES(b, validClaims()))},
		{"RS256", NewToken(signRS(b, validClaims()))},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(ctx, tc.tok); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
		})
	}
}
