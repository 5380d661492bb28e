package identity

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"
)

const (
	// DefaultAudience is the audience Keywarden tokens are requested for.
	DefaultAudience = "keywarden"
	// DefaultLeeway is the clock skew allowed on exp, iat and nbf.
	DefaultLeeway = 30 * time.Second
	// MaxLeeway is the largest Leeway a Config may set.
	MaxLeeway = 60 * time.Second
	// DefaultMaxLifetime bounds exp - iat.
	DefaultMaxLifetime = 24 * time.Hour
	// DefaultMaxTokenSize bounds the raw token length, checked before parsing.
	DefaultMaxTokenSize = 16 << 10
	// maxTokenSizeLimit bounds Config.MaxTokenSize.
	maxTokenSizeLimit = 1 << 20

	// legacyIssuer is the iss of secret-based (non-expiring) tokens.
	legacyIssuer = "kubernetes/serviceaccount"
	// legacyClaimPrefix starts the claims of secret-based tokens.
	legacyClaimPrefix = "kubernetes.io/serviceaccount/"
	// subjectPrefix starts sub for service accounts.
	subjectPrefix = "system:serviceaccount:"
)

// apiserverAudiences are audiences the apiserver puts in tokens for itself
// (kubectl, in-cluster clients; about a year of lifetime). A verifier that
// accepted them would accept any token a pod already holds for the API.
var apiserverAudiences = []string{
	"https://kubernetes.default.svc",
	"https://kubernetes.default.svc.cluster.local",
	"kubernetes.default.svc",
	"api",
}

// Config configures a Verifier. The zero value of every optional field is the
// safe choice.
type Config struct {
	// Issuer is required and must equal the token's iss exactly.
	Issuer string
	// Audiences the token must intersect. Default [DefaultAudience]. It may
	// not contain the issuer or the apiserver's own audiences.
	Audiences []string
	// Keys supplies verification keys. Required.
	Keys KeySet
	// TrustDomain of the SPIFFE IDs built for workloads. Required.
	TrustDomain spiffeid.TrustDomain
	// Leeway is the clock skew allowed on exp, iat and nbf. Default
	// DefaultLeeway; at most MaxLeeway; negative is an error.
	Leeway time.Duration
	// MaxLifetime rejects tokens whose exp - iat is larger. Default
	// DefaultMaxLifetime.
	MaxLifetime time.Duration
	// DisablePodBinding accepts tokens without a kubernetes.io.pod claim.
	// The zero value (false) requires the binding, as production must;
	// set it only for issuers that cannot bind tokens to pods.
	DisablePodBinding bool
	// MaxTokenSize is the largest raw token accepted, checked before any
	// parsing. Default DefaultMaxTokenSize; at most 1 MiB.
	MaxTokenSize int
	// Clock gives the current time. Default the real clock.
	Clock clock.PassiveClock
}

// Verifier verifies tokens. It is safe for concurrent use.
type Verifier struct {
	issuer       string
	audiences    []string
	keys         KeySet
	td           spiffeid.TrustDomain
	leeway       time.Duration
	maxLifetime  time.Duration
	requirePod   bool
	maxTokenSize int
	clock        clock.PassiveClock
}

// NewVerifier validates cfg, applies defaults and returns a Verifier.
func NewVerifier(cfg Config) (*Verifier, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("issuer is required")
	}
	if cfg.Issuer == legacyIssuer {
		return nil, errors.New("issuer of legacy secret-based tokens is not allowed")
	}
	if cfg.Keys == nil {
		return nil, errors.New("key set is required")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("trust domain is required")
	}
	auds := slices.Clone(cfg.Audiences)
	if len(auds) == 0 {
		auds = []string{DefaultAudience}
	}
	for _, a := range auds {
		if a == "" {
			return nil, errors.New("audience must not be empty")
		}
		if a == cfg.Issuer || slices.Contains(apiserverAudiences, a) {
			return nil, fmt.Errorf("audience %q is the apiserver's own audience: tokens for it are long-lived and held by every pod", a)
		}
	}
	leeway := cfg.Leeway
	switch {
	case leeway < 0:
		return nil, errors.New("leeway must not be negative")
	case leeway == 0:
		leeway = DefaultLeeway
	case leeway > MaxLeeway:
		return nil, fmt.Errorf("leeway %s is above the maximum %s", leeway, MaxLeeway)
	}
	maxLifetime := cfg.MaxLifetime
	switch {
	case maxLifetime < 0:
		return nil, errors.New("max lifetime must not be negative")
	case maxLifetime == 0:
		maxLifetime = DefaultMaxLifetime
	}
	size := cfg.MaxTokenSize
	switch {
	case size < 0:
		return nil, errors.New("max token size must not be negative")
	case size == 0:
		size = DefaultMaxTokenSize
	case size > maxTokenSizeLimit:
		return nil, fmt.Errorf("max token size %d is above the limit %d", size, maxTokenSizeLimit)
	}
	clk := cfg.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Verifier{
		issuer:       cfg.Issuer,
		audiences:    auds,
		keys:         cfg.Keys,
		td:           cfg.TrustDomain,
		leeway:       leeway,
		maxLifetime:  maxLifetime,
		requirePod:   !cfg.DisablePodBinding,
		maxTokenSize: size,
		clock:        clk,
	}, nil
}

var allowedAlgorithms = []jose.SignatureAlgorithm{jose.RS256, jose.ES256}

// Verify checks tok and returns the workload it names. Failures caused by the
// token are *VerifyError (matching ErrInvalidToken); a KeySet that cannot be
// reached gives an error matching ErrUnavailable.
func (v *Verifier) Verify(ctx context.Context, tok Token) (Workload, error) {
	raw := tok.Reveal()
	if len(raw) > v.maxTokenSize {
		return Workload{}, invalid(ReasonTooLarge)
	}
	if raw == "" {
		return Workload{}, invalid(ReasonMalformed)
	}

	// Compact JWS: exactly three canonical base64url parts. Canonical
	// means the re-encoding equals the input: Go's decoder ignores '\n' and
	// non-zero padding bits, which would make one token have many spellings.
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return Workload{}, invalid(ReasonMalformed)
	}
	var decoded [3][]byte
	for i, p := range parts {
		b, err := base64.RawURLEncoding.Strict().DecodeString(p)
		if err != nil || base64.RawURLEncoding.EncodeToString(b) != p {
			return Workload{}, invalid(ReasonMalformed)
		}
		decoded[i] = b
	}
	header, payload := decoded[0], decoded[1]

	// Header: our own parse, before go-jose sees it, so the algorithm and kid
	// checks do not depend on library defaults.
	if !utf8.Valid(header) || checkJSONObject(header) != nil {
		return Workload{}, invalid(ReasonMalformed)
	}
	hdr, ok := parseObject(header)
	if !ok || hdr == nil {
		return Workload{}, invalid(ReasonMalformed)
	}
	algName, present, ok := hdr.str("alg")
	if !present || !ok {
		return Workload{}, invalid(ReasonMalformed)
	}
	alg := jose.SignatureAlgorithm(algName)
	if !slices.Contains(allowedAlgorithms, alg) {
		return Workload{}, invalid(ReasonUnsupportedAlgorithm)
	}
	if _, found := hdr["crit"]; found {
		return Workload{}, invalid(ReasonMalformed)
	}
	if _, found := hdr["b64"]; found {
		return Workload{}, invalid(ReasonMalformed)
	}
	kid, present, ok := hdr.str("kid")
	if !ok {
		return Workload{}, invalid(ReasonMalformed)
	}
	if !present || kid == "" {
		return Workload{}, invalid(ReasonMissingKeyID)
	}

	key, err := v.keys.Key(ctx, kid)
	switch {
	case errors.Is(err, ErrUnknownKey):
		return Workload{}, invalid(ReasonUnknownKeyID)
	case err != nil:
		return Workload{}, &unavailableError{cause: err}
	}
	if !keyMatches(key, alg) {
		return Workload{}, invalid(ReasonKeyMismatch)
	}

	jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{alg})
	if err != nil || len(jws.Signatures) != 1 {
		return Workload{}, invalid(ReasonMalformed)
	}
	verified, err := jws.Verify(key.Key)
	if err != nil {
		return Workload{}, invalid(ReasonBadSignature)
	}
	if string(verified) != string(payload) {
		// Cannot happen with a compact JWS; refuse rather than guess which
		// payload was signed.
		return Workload{}, invalid(ReasonMalformed)
	}

	return v.checkClaims(payload)
}

func (v *Verifier) checkClaims(payload []byte) (Workload, error) {
	if !utf8.Valid(payload) {
		return Workload{}, invalid(ReasonMalformed)
	}
	switch err := checkJSONObject(payload); {
	case errors.Is(err, errDuplicateKey):
		return Workload{}, invalid(ReasonDuplicateClaim)
	case err != nil:
		return Workload{}, invalid(ReasonMalformed)
	}
	c, ok := parseObject(payload)
	if !ok || c == nil {
		return Workload{}, invalid(ReasonMalformed)
	}

	// Legacy secret-based tokens never expire and are not bound to a pod.
	for k := range c {
		if strings.HasPrefix(k, legacyClaimPrefix) {
			return Workload{}, invalid(ReasonLegacyToken)
		}
	}

	var w Workload
	iss, _, ok := c.str("iss")
	if !ok {
		return Workload{}, invalid(ReasonMalformed)
	}
	if iss == legacyIssuer {
		return Workload{}, invalid(ReasonLegacyToken)
	}
	if iss != v.issuer {
		return Workload{}, invalid(ReasonWrongIssuer)
	}
	w.Issuer = iss

	aud, ok := c.audience()
	if !ok {
		return Workload{}, invalid(ReasonMalformed)
	}
	if len(aud) == 0 {
		return Workload{}, invalid(ReasonMissingAudience)
	}
	if !slices.ContainsFunc(aud, func(a string) bool { return slices.Contains(v.audiences, a) }) {
		return Workload{}, invalid(ReasonWrongAudience)
	}
	w.Audiences = aud

	now := v.clock.Now()
	exp, present, ok := c.numericDate("exp")
	if !ok {
		return Workload{}, invalid(ReasonMalformed)
	}
	if !present {
		return Workload{}, invalid(ReasonMissingExp)
	}
	iat, present, ok := c.numericDate("iat")
	if !ok {
		return Workload{}, invalid(ReasonMalformed)
	}
	if !present {
		return Workload{}, invalid(ReasonMissingIat)
	}
	// Kubernetes sets nbf (= iat) on every token the TokenRequest API issues; only legacy
	// secret-based tokens, refused above, lack it. A token without one did not come from the
	// apiserver the way it should have, so nbf is required like exp and iat.
	nbf, present, ok := c.numericDate("nbf")
	if !ok {
		return Workload{}, invalid(ReasonMalformed)
	}
	if !present {
		return Workload{}, invalid(ReasonMissingNbf)
	}
	if !now.Before(exp.Add(v.leeway)) {
		return Workload{}, invalid(ReasonExpired)
	}
	if iat.After(now.Add(v.leeway)) {
		return Workload{}, invalid(ReasonIssuedInFuture)
	}
	if nbf.After(now.Add(v.leeway)) {
		return Workload{}, invalid(ReasonNotYetValid)
	}
	if exp.Before(iat) {
		return Workload{}, invalid(ReasonInvalidLifetime)
	}
	if exp.Sub(iat) > v.maxLifetime {
		return Workload{}, invalid(ReasonLifetimeTooLong)
	}
	w.ExpiresAt, w.IssuedAt, w.NotBefore = exp, iat, nbf

	k8s, ok := c.obj("kubernetes.io")
	if !ok {
		return Workload{}, invalid(ReasonMalformed)
	}
	ns, _, ok := k8s.str("namespace")
	if !ok || !isDNSLabel(ns) {
		return Workload{}, invalid(ReasonInvalidNamespace)
	}
	sa, ok := k8s.obj("serviceaccount")
	if !ok {
		return Workload{}, invalid(ReasonInvalidSA)
	}
	saName, _, ok := sa.str("name")
	if !ok || !isDNSSubdomain(saName) {
		return Workload{}, invalid(ReasonInvalidSA)
	}
	saUID, _, ok := sa.str("uid")
	if !ok || !isUID(saUID) {
		return Workload{}, invalid(ReasonInvalidSA)
	}
	sub, _, ok := c.str("sub")
	if !ok || sub != subjectPrefix+ns+":"+saName {
		return Workload{}, invalid(ReasonSubjectMismatch)
	}
	w.Subject, w.Namespace, w.ServiceAccount, w.ServiceAccountUID = sub, ns, saName, saUID

	pod, ok := k8s.obj("pod")
	if !ok {
		return Workload{}, invalid(ReasonInvalidPod)
	}
	if pod == nil {
		if v.requirePod {
			return Workload{}, invalid(ReasonNoPodBinding)
		}
	} else {
		name, namePresent, ok1 := pod.str("name")
		uid, uidPresent, ok2 := pod.str("uid")
		switch {
		case !ok1 || !ok2:
			return Workload{}, invalid(ReasonInvalidPod)
		case !namePresent || !uidPresent:
			return Workload{}, invalid(ReasonNoPodBinding)
		case !isDNSSubdomain(name) || !isUID(uid):
			return Workload{}, invalid(ReasonInvalidPod)
		}
		w.PodName, w.PodUID = name, uid
	}

	node, ok := k8s.obj("node")
	if !ok {
		return Workload{}, invalid(ReasonInvalidNode)
	}
	if node != nil {
		name, _, ok1 := node.str("name")
		uid, _, ok2 := node.str("uid")
		if !ok1 || !ok2 || !isDNSSubdomain(name) || !isUID(uid) {
			return Workload{}, invalid(ReasonInvalidNode)
		}
		w.NodeName, w.NodeUID = name, uid
	}

	id, err := spiffeid.FromSegments(v.td, "ns", ns, "sa", saName)
	if err != nil {
		// Unreachable for valid DNS names; keep the reason fixed.
		return Workload{}, invalid(ReasonInvalidSA)
	}
	w.ID = id
	return w, nil
}
