package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

func TestNewStaticKeySet_validation(t *testing.T) {
	testKeys(t)
	smallRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		keys    []jose.JSONWebKey
		wantErr string
	}{
		{"rsa and ec public", []jose.JSONWebKey{{Key: &testRSAKey.PublicKey, KeyID: "a"}, {Key: &testECKey.PublicKey, KeyID: "b"}}, ""},
		{"empty", nil, ""},
		{"rsa private", []jose.JSONWebKey{{Key: testRSAKey, KeyID: "a"}}, "private key"},
		{"ec private", []jose.JSONWebKey{{Key: testECKey, KeyID: "a"}}, "private key"},
		{"symmetric", []jose.JSONWebKey{{Key: []byte("0123456789abcdef0123456789abcdef"), KeyID: "a"}}, "symmetric"},
		{"missing kid", []jose.JSONWebKey{{Key: &testRSAKey.PublicKey}}, "missing kid"},
		{"duplicate kid", []jose.JSONWebKey{{Key: &testRSAKey.PublicKey, KeyID: "a"}, {Key: &testECKey.PublicKey, KeyID: "a"}}, "duplicate kid"},
		{"rsa 1024", []jose.JSONWebKey{{Key: &smallRSA.PublicKey, KeyID: "a"}}, "shorter"},
		{"p384", []jose.JSONWebKey{{Key: &p384.PublicKey, KeyID: "a"}}, "P-256"},
		{"alg mismatch", []jose.JSONWebKey{{Key: &testRSAKey.PublicKey, KeyID: "a", Algorithm: "ES256"}}, "algorithm"},
		{"use enc", []jose.JSONWebKey{{Key: &testRSAKey.PublicKey, KeyID: "a", Use: "enc"}}, "use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ks, err := NewStaticKeySet(jose.JSONWebKeySet{Keys: tt.keys})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("NewStaticKeySet: %v", err)
				}
				if len(ks.JWKS().Keys) != len(tt.keys) {
					t.Fatalf("JWKS has %d keys", len(ks.JWKS().Keys))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestStaticKeySet_Key(t *testing.T) {
	ks := testKeySet(t)
	k, err := ks.Key(context.Background(), testECKid)
	if err != nil || k.KeyID != testECKid || !k.IsPublic() {
		t.Fatalf("Key = %v, %v", k, err)
	}
	if _, err := ks.Key(context.Background(), "nope"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown kid err = %v", err)
	}
}

func TestParseJWKS(t *testing.T) {
	testKeys(t)
	pub, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &testRSAKey.PublicKey, KeyID: "r", Algorithm: "RS256", Use: "sig"},
		{Key: &testECKey.PublicKey, KeyID: "e"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ks, err := ParseJWKS(pub)
	if err != nil {
		t.Fatalf("ParseJWKS: %v", err)
	}
	if _, err := ks.Key(context.Background(), "r"); err != nil {
		t.Fatal(err)
	}

	priv, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: testECKey, KeyID: "e"}}})
	if err != nil {
		t.Fatal(err)
	}
	dRaw, err := testECKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	dB64 := base64.RawURLEncoding.EncodeToString(dRaw)
	sym := []byte(`{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}`)
	for name, doc := range map[string][]byte{
		"private":   priv,
		"symmetric": sym,
		"garbage":   []byte("{not json"),
		"array":     []byte(`[]`),
		"dup keys":  []byte(`{"keys":[],"keys":[]}`),
		"too large": []byte(`{"x":"` + strings.Repeat("a", maxJWKSSize) + `"}`),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseJWKS(doc)
			if err == nil {
				t.Fatal("accepted")
			}
			if strings.Contains(err.Error(), dB64) || strings.Contains(err.Error(), "c2VjcmV0") {
				t.Fatalf("error leaks key material: %v", err)
			}
		})
	}
}

func FuzzParseJWKS(f *testing.F) {
	testKeys(f)
	pub, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &testECKey.PublicKey, KeyID: "e"}}})
	f.Add(pub)
	f.Add([]byte(`{"keys":[{"kty":"oct","kid":"s","k":"AAAA"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ks, err := ParseJWKS(data)
		if err != nil {
			return
		}
		for _, k := range ks.JWKS().Keys {
			if !k.IsPublic() || checkVerificationKey(&k) != nil {
				t.Fatalf("accepted unusable key %s", k.KeyID)
			}
		}
	})
}
