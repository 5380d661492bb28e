package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"k8s.io/utils/clock"
)

const (
	// DefaultDevTTL is the lifetime of dev tokens when the request sets none.
	DefaultDevTTL = time.Hour
	// maxDevTTL keeps dev tokens within DefaultMaxLifetime.
	maxDevTTL = DefaultMaxLifetime
	// devNodeName is the node of dev tokens when the request sets none.
	devNodeName = "dev-node"
	// maxKeyFileSize bounds the dev key file read.
	maxKeyFileSize = 64 << 10
)

// DevIssuer signs Kubernetes-shaped tokens with a local ES256 key for
// `keywarden dev` and tests. Its private key never leaves it: every way of
// printing a DevIssuer redacts.
type DevIssuer struct {
	issuer string
	key    *ecdsa.PrivateKey
	kid    string
	signer jose.Signer
	keys   *StaticKeySet
	uidKey []byte // derives stable UIDs; a hash of the private key
	clock  clock.PassiveClock
}

// DevTokenRequest describes a dev token.
type DevTokenRequest struct {
	Namespace      string        // required; DNS-1123 label
	ServiceAccount string        // required; DNS-1123 subdomain
	PodName        string        // default "<sa>-dev"
	PodUID         string        // default a random UUID
	NodeName       string        // default "dev-node"
	Audiences      []string      // default [DefaultAudience]
	TTL            time.Duration // default DefaultDevTTL, at most 24h
	Now            time.Time     // default the issuer's clock
}

// LoadOrCreateDevIssuer loads the ES256 private key stored as a JWK at path,
// or creates it (mode 0600) when the file does not exist. A key file that is
// readable or writable by group or others, or is not a regular file, is
// refused: it would let any local user mint tokens.
func LoadOrCreateDevIssuer(path, issuerURL string) (*DevIssuer, error) {
	if path == "" {
		return nil, errors.New("dev issuer: key path is required")
	}
	if issuerURL == "" {
		return nil, errors.New("dev issuer: issuer url is required")
	}
	key, err := loadDevKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		key, err = createDevKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("dev issuer: %w", err)
	}
	return newDevIssuer(key, issuerURL)
}

func loadDevKey(path string) (*ecdsa.PrivateKey, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscallNoFollow, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("open key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat key file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, errors.New("key file is not a regular file")
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key file %s has mode %v: group and others must have no access (chmod 600)", path, st.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read key file: %w", err)
	}
	if len(data) > maxKeyFileSize {
		return nil, errors.New("key file too large")
	}
	var jwk jose.JSONWebKey
	// Error text is dropped: it could quote key material.
	if err := json.Unmarshal(data, &jwk); err != nil {
		return nil, errors.New("key file is not a JWK")
	}
	key, ok := jwk.Key.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, errors.New("key file does not hold a P-256 private key")
	}
	return key, nil
}

// createDevKey writes a new key to a temporary file and links it into place,
// so a concurrent creator either wins or loads the winner's key, and a crash
// never leaves a half-written key at path.
func createDevKey(path string) (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	jwk := jose.JSONWebKey{Key: key, Algorithm: string(jose.ES256), Use: "sig"}
	jwk.KeyID, err = thumbprintKID(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(jwk)
	if err != nil {
		return nil, errors.New("encode key")
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".devkey-*")
	if err != nil {
		return nil, fmt.Errorf("create key file: %w", err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName)
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("chmod key file: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("write key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("sync key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("close key file: %w", err)
	}
	if err := os.Link(tmpName, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return loadDevKey(path)
		}
		return nil, fmt.Errorf("install key file: %w", err)
	}
	return key, nil
}

func thumbprintKID(pub *ecdsa.PublicKey) (string, error) {
	jwk := jose.JSONWebKey{Key: pub}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", errors.New("compute key id")
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

func newDevIssuer(key *ecdsa.PrivateKey, issuerURL string) (*DevIssuer, error) {
	kid, err := thumbprintKID(&key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("dev issuer: %w", err)
	}
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader(jose.HeaderKey("kid"), kid),
	)
	if err != nil {
		return nil, errors.New("dev issuer: create signer")
	}
	pub := jose.JSONWebKey{Key: &key.PublicKey, KeyID: kid, Algorithm: string(jose.ES256), Use: "sig"}
	keys, err := NewStaticKeySet(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}})
	if err != nil {
		return nil, fmt.Errorf("dev issuer: %w", err)
	}
	d, err := key.Bytes()
	if err != nil {
		return nil, errors.New("dev issuer: encode key")
	}
	uidKey := sha256.Sum256(append([]byte("keywarden dev uid\x00"), d...))
	return &DevIssuer{
		issuer: issuerURL,
		key:    key,
		kid:    kid,
		signer: signer,
		keys:   keys,
		uidKey: uidKey[:],
		clock:  clock.RealClock{},
	}, nil
}

// devClaims is the payload of a dev token, shaped like a Kubernetes bound
// service-account token.
type devClaims struct {
	Issuer    string      `json:"iss"`
	Subject   string      `json:"sub"`
	Audience  []string    `json:"aud"`
	Expiry    int64       `json:"exp"`
	IssuedAt  int64       `json:"iat"`
	NotBefore int64       `json:"nbf"`
	ID        string      `json:"jti"`
	K8s       devK8sClaim `json:"kubernetes.io"`
}

type devK8sClaim struct {
	Namespace      string    `json:"namespace"`
	ServiceAccount devRefUID `json:"serviceaccount"`
	Pod            devRefUID `json:"pod"`
	Node           devRefUID `json:"node"`
}

type devRefUID struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// Issue signs a token for req.
func (d *DevIssuer) Issue(req DevTokenRequest) (Token, error) {
	if !isDNSLabel(req.Namespace) {
		return Token{}, errors.New("issue dev token: namespace must be a DNS-1123 label")
	}
	if !isDNSSubdomain(req.ServiceAccount) {
		return Token{}, errors.New("issue dev token: service account must be a DNS-1123 subdomain")
	}
	if req.PodName == "" {
		req.PodName = req.ServiceAccount + "-dev"
	}
	if !isDNSSubdomain(req.PodName) {
		return Token{}, errors.New("issue dev token: pod name must be a DNS-1123 subdomain")
	}
	if req.PodUID == "" {
		req.PodUID = randomUUID()
	}
	if !isUID(req.PodUID) {
		return Token{}, errors.New("issue dev token: invalid pod uid")
	}
	if req.NodeName == "" {
		req.NodeName = devNodeName
	}
	if !isDNSSubdomain(req.NodeName) {
		return Token{}, errors.New("issue dev token: node name must be a DNS-1123 subdomain")
	}
	if len(req.Audiences) == 0 {
		req.Audiences = []string{DefaultAudience}
	}
	switch {
	case req.TTL < 0:
		return Token{}, errors.New("issue dev token: ttl must not be negative")
	case req.TTL == 0:
		req.TTL = DefaultDevTTL
	case req.TTL > maxDevTTL:
		return Token{}, fmt.Errorf("issue dev token: ttl above %s", maxDevTTL)
	}
	if req.Now.IsZero() {
		req.Now = d.clock.Now()
	}
	now := req.Now.Unix()
	c := devClaims{
		Issuer:    d.issuer,
		Subject:   subjectPrefix + req.Namespace + ":" + req.ServiceAccount,
		Audience:  req.Audiences,
		Expiry:    now + int64(req.TTL/time.Second),
		IssuedAt:  now,
		NotBefore: now,
		ID:        randomUUID(),
		K8s: devK8sClaim{
			Namespace:      req.Namespace,
			ServiceAccount: devRefUID{Name: req.ServiceAccount, UID: d.stableUID("serviceaccount", req.Namespace, req.ServiceAccount)},
			Pod:            devRefUID{Name: req.PodName, UID: req.PodUID},
			Node:           devRefUID{Name: req.NodeName, UID: d.stableUID("node", "", req.NodeName)},
		},
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return Token{}, errors.New("issue dev token: encode claims")
	}
	jws, err := d.signer.Sign(payload)
	if err != nil {
		return Token{}, errors.New("issue dev token: sign")
	}
	raw, err := jws.CompactSerialize()
	if err != nil {
		return Token{}, errors.New("issue dev token: serialize")
	}
	return NewToken(raw), nil
}

// stableUID derives a UUID-formatted UID from the issuer key and the object's
// names, so the same (namespace, name) always gets the same UID, like a
// Kubernetes object that is never recreated.
func (d *DevIssuer) stableUID(kind, namespace, name string) string {
	m := hmac.New(sha256.New, d.uidKey)
	m.Write([]byte(kind + "\x00" + namespace + "\x00" + name))
	return formatUUID(m.Sum(nil))
}

func randomUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go ≥1.24)
	return formatUUID(b)
}

// formatUUID formats the first 16 bytes of b as a version 4 (random layout)
// UUID, which is what Kubernetes uses for UIDs.
func formatUUID(b []byte) string {
	var u [16]byte
	copy(u[:], b)
	u[6] = (u[6] & 0x0f) | 0x40
	u[8] = (u[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// KeySet returns the issuer's public key as a KeySet.
func (d *DevIssuer) KeySet() KeySet { return d.keys }

// JWKS returns the issuer's public key.
func (d *DevIssuer) JWKS() jose.JSONWebKeySet { return d.keys.JWKS() }

// Issuer returns the iss of the tokens.
func (d *DevIssuer) Issuer() string { return d.issuer }

// KeyID returns the kid of the signing key.
func (d *DevIssuer) KeyID() string { return d.kid }

// String implements fmt.Stringer without the private key.
func (d *DevIssuer) String() string { return "DevIssuer{issuer: " + d.issuer + ", kid: " + d.kid + "}" }

// GoString implements fmt.GoStringer without the private key.
func (d *DevIssuer) GoString() string { return d.String() }

// Format implements fmt.Formatter so no verb prints the private key.
func (d *DevIssuer) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(d.String())) }

// LogValue implements slog.LogValuer without the private key.
func (d *DevIssuer) LogValue() slog.Value {
	return slog.GroupValue(slog.String("issuer", d.issuer), slog.String("kid", d.kid))
}
