package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"

	jose "github.com/go-jose/go-jose/v4"
)

// KeySet supplies verification keys by kid. The dev issuer and a static JWKS
// implement it; a refreshing OIDC/JWKS client must fit the same interface.
//
// Key returns an error matching ErrUnknownKey when the set has no such key,
// or ErrUnavailable when the keys cannot be obtained. Implementations must
// return public keys only and must not put the kid in error messages (it is
// chosen by the caller of Verify).
type KeySet interface {
	Key(ctx context.Context, kid string) (*jose.JSONWebKey, error)
}

// minRSABits is the smallest RSA modulus accepted for RS256.
const minRSABits = 2048

// maxJWKSSize bounds ParseJWKS input.
const maxJWKSSize = 1 << 20

// StaticKeySet is a fixed set of public verification keys.
type StaticKeySet struct {
	keys map[string]*jose.JSONWebKey
	jwks jose.JSONWebKeySet
}

var _ KeySet = (*StaticKeySet)(nil)

// NewStaticKeySet validates jwks and returns a KeySet over it. Every key
// must have a unique, non-empty kid and be an RSA (≥2048 bits) or P-256
// ECDSA public key usable for signatures; private and symmetric keys are
// rejected so a misconfigured JWKS cannot turn into an HMAC secret.
func NewStaticKeySet(jwks jose.JSONWebKeySet) (*StaticKeySet, error) {
	s := &StaticKeySet{keys: make(map[string]*jose.JSONWebKey, len(jwks.Keys))}
	for i := range jwks.Keys {
		k := jwks.Keys[i]
		if err := checkVerificationKey(&k); err != nil {
			return nil, fmt.Errorf("key %d: %w", i, err)
		}
		if _, dup := s.keys[k.KeyID]; dup {
			return nil, fmt.Errorf("key %d: duplicate kid", i)
		}
		s.keys[k.KeyID] = &k
		s.jwks.Keys = append(s.jwks.Keys, k)
	}
	return s, nil
}

// ParseJWKS parses a JWKS document ({"keys":[…]}) into a StaticKeySet.
func ParseJWKS(data []byte) (*StaticKeySet, error) {
	if len(data) > maxJWKSSize {
		return nil, errors.New("parse jwks: document too large")
	}
	if err := checkJSONObject(data); err != nil {
		return nil, fmt.Errorf("parse jwks: %w", err)
	}
	var jwks jose.JSONWebKeySet
	if err := json.Unmarshal(data, &jwks); err != nil {
		// Error text from go-jose can quote parts of the key; keep only ours.
		return nil, errors.New("parse jwks: invalid key set")
	}
	s, err := NewStaticKeySet(jwks)
	if err != nil {
		return nil, fmt.Errorf("parse jwks: %w", err)
	}
	return s, nil
}

// Key implements KeySet.
func (s *StaticKeySet) Key(_ context.Context, kid string) (*jose.JSONWebKey, error) {
	k, ok := s.keys[kid]
	if !ok {
		return nil, ErrUnknownKey
	}
	return k, nil
}

// JWKS returns the public keys of the set.
func (s *StaticKeySet) JWKS() jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: append([]jose.JSONWebKey(nil), s.jwks.Keys...)}
}

func checkVerificationKey(k *jose.JSONWebKey) error {
	if k.KeyID == "" {
		return errors.New("missing kid")
	}
	if k.Use != "" && k.Use != "sig" {
		return errors.New("key use is not sig")
	}
	switch pub := k.Key.(type) {
	case *rsa.PublicKey:
		if pub.N == nil || pub.N.BitLen() < minRSABits {
			return fmt.Errorf("rsa key shorter than %d bits", minRSABits)
		}
		if k.Algorithm != "" && k.Algorithm != string(jose.RS256) {
			return errors.New("unsupported key algorithm")
		}
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() {
			return errors.New("ecdsa key is not on P-256")
		}
		if k.Algorithm != "" && k.Algorithm != string(jose.ES256) {
			return errors.New("unsupported key algorithm")
		}
	case *rsa.PrivateKey, *ecdsa.PrivateKey:
		return errors.New("private key in verification key set")
	case []byte:
		return errors.New("symmetric key in verification key set")
	default:
		return errors.New("unsupported key type")
	}
	return nil
}

// keyMatches reports whether k may verify a signature made with alg.
func keyMatches(k *jose.JSONWebKey, alg jose.SignatureAlgorithm) bool {
	if k == nil || (k.Algorithm != "" && k.Algorithm != string(alg)) || (k.Use != "" && k.Use != "sig") {
		return false
	}
	switch pub := k.Key.(type) {
	case *rsa.PublicKey:
		return alg == jose.RS256 && pub.N != nil && pub.N.BitLen() >= minRSABits
	case *ecdsa.PublicKey:
		return alg == jose.ES256 && pub.Curve == elliptic.P256()
	default:
		return false
	}
}
