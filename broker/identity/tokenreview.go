package identity

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TokenReviewer is the part of the Kubernetes TokenReview client the verifier uses.
type TokenReviewer interface {
	Create(ctx context.Context, tr *authnv1.TokenReview, opts metav1.CreateOptions) (*authnv1.TokenReview, error)
}

// TokenReviewConfig configures a TokenReviewVerifier.
type TokenReviewConfig struct {
	// Reviewer sends TokenReviews to the apiserver. Required.
	Reviewer TokenReviewer
	// Audiences are sent with every review and re-checked in the answer. Default ["keywarden"].
	Audiences []string
	// TrustDomain of the SPIFFE IDs built for workloads. Required.
	TrustDomain spiffeid.TrustDomain
	// MaxTokenSize is checked before the token is sent anywhere. Default DefaultMaxTokenSize.
	MaxTokenSize int
}

// TokenReviewVerifier asks the apiserver whether a token is valid (the authoritative answer:
// it knows about revoked service accounts and deleted pods) instead of checking the signature
// locally. An unreachable apiserver is ErrUnavailable, never a rejection.
type TokenReviewVerifier struct {
	cfg TokenReviewConfig
}

var _ TokenVerifier = (*TokenReviewVerifier)(nil)

// Extra keys the apiserver sets for bound service-account tokens.
const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
	extraNode    = "authentication.kubernetes.io/node-name"
	extraNodeUID = "authentication.kubernetes.io/node-uid"
)

// NewTokenReviewVerifier returns a TokenReviewVerifier.
func NewTokenReviewVerifier(cfg TokenReviewConfig) (*TokenReviewVerifier, error) {
	if cfg.Reviewer == nil {
		return nil, errors.New("token review: reviewer is required")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("token review: trust domain is required")
	}
	if len(cfg.Audiences) == 0 {
		cfg.Audiences = []string{DefaultAudience}
	}
	if cfg.MaxTokenSize <= 0 {
		cfg.MaxTokenSize = DefaultMaxTokenSize
	}
	return &TokenReviewVerifier{cfg: cfg}, nil
}

// Verify implements TokenVerifier.
func (v *TokenReviewVerifier) Verify(ctx context.Context, tok Token) (Workload, error) {
	raw := tok.Reveal()
	if len(raw) > v.cfg.MaxTokenSize {
		return Workload{}, invalid(ReasonTooLarge)
	}
	if strings.Count(raw, ".") != 2 {
		return Workload{}, invalid(ReasonMalformed)
	}
	// The apiserver's JSON decoding takes the last of duplicated claims; refuse such
	// payloads before asking, as the JWT path does.
	payload, err := base64.RawURLEncoding.DecodeString(strings.Split(raw, ".")[1])
	if err != nil {
		return Workload{}, invalid(ReasonMalformed)
	}
	switch err := checkJSONObject(payload); {
	case errors.Is(err, errDuplicateKey):
		return Workload{}, invalid(ReasonDuplicateClaim)
	case err != nil:
		return Workload{}, invalid(ReasonMalformed)
	}
	res, err := v.cfg.Reviewer.Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: raw, Audiences: v.cfg.Audiences}}, metav1.CreateOptions{})
	if err != nil {
		return Workload{}, errors.Join(ErrUnavailable, errors.New("token review request failed"))
	}
	st := res.Status
	if !st.Authenticated {
		return Workload{}, invalid(ReasonRejectedByReview)
	}
	// The apiserver answers with the audiences it matched; an answer without ours would
	// mean it validated the token for someone else.
	if !slices.ContainsFunc(st.Audiences, func(a string) bool { return slices.Contains(v.cfg.Audiences, a) }) {
		return Workload{}, invalid(ReasonWrongAudience)
	}
	ns, sa, ok := parseServiceAccountUser(st.User.Username)
	if !ok {
		return Workload{}, invalid(ReasonInvalidSA)
	}
	w := Workload{
		Subject:           st.User.Username,
		Namespace:         ns,
		ServiceAccount:    sa,
		ServiceAccountUID: st.User.UID,
		PodName:           first(st.User.Extra[extraPodName]),
		PodUID:            first(st.User.Extra[extraPodUID]),
		NodeName:          first(st.User.Extra[extraNode]),
		NodeUID:           first(st.User.Extra[extraNodeUID]),
		Audiences:         slices.Clone(st.Audiences),
	}
	if w.PodName == "" || w.PodUID == "" {
		return Workload{}, invalid(ReasonNoPodBinding)
	}
	// The apiserver vouched for the token, so its payload can be read for exp and iat (the
	// verification cache must not outlive exp). No claim here decides anything else.
	w.IssuedAt, w.ExpiresAt = unverifiedTimes(raw)
	if w.ExpiresAt.IsZero() {
		return Workload{}, invalid(ReasonMissingExp)
	}
	id, err := spiffeid.FromSegments(v.cfg.TrustDomain, "ns", ns, "sa", sa)
	if err != nil {
		return Workload{}, invalid(ReasonInvalidSA)
	}
	w.ID = id
	return w, nil
}

func first(v authnv1.ExtraValue) string {
	if len(v) == 1 {
		return v[0]
	}
	return ""
}

func parseServiceAccountUser(u string) (ns, sa string, ok bool) {
	rest, found := strings.CutPrefix(u, "system:serviceaccount:")
	if !found {
		return "", "", false
	}
	ns, sa, ok = strings.Cut(rest, ":")
	if !ok || !isDNSLabel(ns) || sa == "" || strings.Contains(sa, ":") {
		return "", "", false
	}
	return ns, sa, true
}

func unverifiedTimes(raw string) (iat, exp time.Time) {
	parts := strings.Split(raw, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, time.Time{}
	}
	var c struct {
		Exp *float64 `json:"exp"`
		Iat *float64 `json:"iat"`
	}
	if json.Unmarshal(b, &c) != nil || c.Exp == nil {
		return time.Time{}, time.Time{}
	}
	if c.Iat != nil {
		iat = time.Unix(int64(*c.Iat), 0)
	}
	return iat, time.Unix(int64(*c.Exp), 0)
}
