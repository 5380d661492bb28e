package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/identity"
)

// Identity modes.
const (
	identityModeJWT         = "jwt"         // verify signatures locally with the issuer's keys
	identityModeTokenReview = "tokenreview" // ask the apiserver
)

// rawIdentityRemote are the identity keys for Kubernetes issuers.
type rawIdentityRemote struct {
	Mode            string `json:"mode"`
	JWKSURL         string `json:"jwksURL"`
	DiscoveryURL    string `json:"discoveryURL"`
	CAFile          string `json:"caFile"`
	BearerTokenFile string `json:"bearerTokenFile"`
	NodeBinding     *bool  `json:"nodeBinding"`
}

// identityConfig is the typed identity section: which tokens are accepted and how they are
// verified.
type identityConfig struct {
	Issuer            string
	Audiences         []string
	TrustDomain       spiffeid.TrustDomain
	Leeway            time.Duration
	MaxLifetime       time.Duration
	RequirePodBinding bool

	Mode             string // identityModeJWT or identityModeTokenReview
	JWKSFile         string
	JWKSURL          string
	DiscoveryURL     string
	DevIssuerKeyFile string
	CAFile           string // of the issuer's JWKS and discovery endpoints
	BearerTokenFile  string
	NodeBinding      bool
}

func (r rawConfig) typedIdentity(c *config, fail func(field, format string, args ...any)) {
	ri := r.Identity.rawIdentityRemote
	c.Identity = identityConfig{
		Issuer:            r.Identity.Issuer,
		Audiences:         r.Identity.Audiences,
		RequirePodBinding: r.Identity.RequirePodBinding == nil || *r.Identity.RequirePodBinding,
		Mode:              or(ri.Mode, identityModeJWT),
		JWKSFile:          r.Identity.JWKSFile,
		JWKSURL:           ri.JWKSURL,
		DiscoveryURL:      ri.DiscoveryURL,
		DevIssuerKeyFile:  r.Identity.DevIssuerKeyFile,
		CAFile:            ri.CAFile,
		BearerTokenFile:   ri.BearerTokenFile,
		// Node binding is on unless switched off: a token is honoured only for a pod that
		// runs on this node.
		NodeBinding: ri.NodeBinding == nil || *ri.NodeBinding,
	}
	if c.Identity.Issuer == "" {
		fail("identity.issuer", "is required: the `iss` of the tokens to accept (the cluster's service-account issuer)")
	}
	keySources := 0
	for _, v := range []string{c.Identity.JWKSFile, c.Identity.JWKSURL, c.Identity.DiscoveryURL, c.Identity.DevIssuerKeyFile} {
		if v != "" {
			keySources++
		}
	}
	switch c.Identity.Mode {
	case identityModeJWT:
		if keySources != 1 {
			fail("identity", "set exactly one of jwksFile, jwksURL, discoveryURL (the issuer's public keys) or devIssuerKeyFile (single machine); or mode: tokenreview")
		}
	case identityModeTokenReview:
		if keySources != 0 {
			fail("identity", "mode tokenreview asks the apiserver: remove jwksFile, jwksURL, discoveryURL and devIssuerKeyFile")
		}
	default:
		fail("identity.mode", "want jwt or tokenreview; got %q", ri.Mode)
	}
	for _, u := range []struct{ field, v string }{{"identity.jwksURL", c.Identity.JWKSURL}, {"identity.discoveryURL", c.Identity.DiscoveryURL}} {
		if u.v == "" {
			continue
		}
		if pu, err := url.Parse(u.v); err != nil || pu.Scheme != "https" || pu.Host == "" {
			fail(u.field, "want an https URL; got %q", u.v)
		}
	}
	if c.Identity.NodeBinding && c.NodeName == "" {
		fail("nodeName", "is required while identity.nodeBinding is on: set it from the downward API (spec.nodeName) or with --node-name")
	}
}

// verifierParts is what buildVerifier made: the verifier for the broker and the parts that
// must run for it to work.
type verifierParts struct {
	verifier identity.TokenVerifier
	// binding re-checks open streams; nil without node binding.
	binding *identity.BindingVerifier
	dev     *identity.DevIssuer
	runners []func(context.Context) error
	pods    *identity.PodIndex // nil without node binding; the CSI driver checks pods with it
}

// kubeAPI are the apiserver clients buildVerifier needs; both nil without the kubernetes section.
type kubeAPI struct {
	typed kubernetes.Interface
	meta  metadata.Interface
}

// buildVerifier composes token verification: key source (dev issuer, JWKS file, remote JWKS)
// or TokenReview, then the verification cache, then the node binding (never cached: pods and
// service accounts come and go), then metrics. The clients may be nil unless TokenReview or
// node binding is on.
func buildVerifier(cfg config, log *slog.Logger, api kubeAPI, m *identity.Metrics) (*verifierParts, error) {
	kube := api.typed
	out := &verifierParts{}
	var base identity.TokenVerifier
	if cfg.Identity.Mode == identityModeTokenReview {
		if kube == nil {
			return nil, errors.New("identity mode tokenreview needs a Kubernetes client: configure kubernetes")
		}
		tr, err := identity.NewTokenReviewVerifier(identity.TokenReviewConfig{
			Reviewer: kube.AuthenticationV1().TokenReviews(), Audiences: cfg.Identity.Audiences, TrustDomain: cfg.Identity.TrustDomain,
		})
		if err != nil {
			return nil, err
		}
		base = tr
	} else {
		var keys identity.KeySet
		switch {
		case cfg.Identity.DevIssuerKeyFile != "":
			dev, err := identity.LoadOrCreateDevIssuer(cfg.Identity.DevIssuerKeyFile, cfg.Identity.Issuer)
			if err != nil {
				return nil, fmt.Errorf("dev issuer: %w", err)
			}
			out.dev, keys = dev, dev.KeySet()
		case cfg.Identity.JWKSFile != "":
			data, err := os.ReadFile(cfg.Identity.JWKSFile)
			if err != nil {
				return nil, fmt.Errorf("read JWKS file: %w", err)
			}
			if keys, err = identity.ParseJWKS(data); err != nil {
				return nil, fmt.Errorf("JWKS file %s: %w", cfg.Identity.JWKSFile, err)
			}
		default:
			client, err := issuerHTTPClient(cfg.Identity.CAFile)
			if err != nil {
				return nil, err
			}
			remote, err := identity.NewRemoteKeySet(identity.RemoteKeySetConfig{
				Issuer: cfg.Identity.Issuer, DiscoveryURL: cfg.Identity.DiscoveryURL, JWKSURL: cfg.Identity.JWKSURL, HTTPClient: client,
				BearerTokenFile: cfg.Identity.BearerTokenFile, Logger: log.With(slog.String("component", "issuer-keys")), Metrics: m,
			})
			if err != nil {
				return nil, err
			}
			keys = remote
			out.runners = append(out.runners, remote.Run)
		}
		v, err := identity.NewVerifier(identity.Config{
			Issuer: cfg.Identity.Issuer, Audiences: cfg.Identity.Audiences, Keys: keys, TrustDomain: cfg.Identity.TrustDomain,
			Leeway: cfg.Identity.Leeway, MaxLifetime: cfg.Identity.MaxLifetime, DisablePodBinding: !cfg.Identity.RequirePodBinding,
		})
		if err != nil {
			return nil, fmt.Errorf("token verifier: %w", err)
		}
		base = v
	}
	// Verifying a signature costs ~0.2 ms (a TokenReview a round trip); a pod calls with the
	// same token until kubelet rotates it, so results are reused, never past the token's exp.
	cached, err := identity.NewCachingVerifier(identity.CacheConfig{Verifier: base, Metrics: m})
	if err != nil {
		return nil, err
	}
	out.verifier = cached
	if cfg.Identity.NodeBinding {
		if kube == nil || api.meta == nil {
			return nil, errors.New("identity.nodeBinding needs a Kubernetes client to watch this node's pods and the service accounts: configure kubernetes, or set identity.nodeBinding: false")
		}
		pods, err := identity.NewPodIndex(identity.PodIndexConfig{Client: kube, NodeName: cfg.NodeName, Logger: log.With(slog.String("component", "pod-index")), Metrics: m})
		if err != nil {
			return nil, err
		}
		// Tokens name their service account by UID too: a recreated account with the same
		// name must not inherit the old one's tokens.
		sas, err := identity.NewServiceAccountIndex(identity.ServiceAccountIndexConfig{Client: api.meta, Logger: log.With(slog.String("component", "serviceaccount-index"))})
		if err != nil {
			return nil, err
		}
		bound, err := identity.NewBindingVerifier(identity.BindingConfig{Verifier: cached, Pods: pods, ServiceAccounts: sas, NodeName: cfg.NodeName, Logger: log})
		if err != nil {
			return nil, err
		}
		out.verifier, out.binding = bound, bound
		out.runners = append(out.runners, pods.Run, sas.Run)
		out.pods = pods
	}
	out.verifier = identity.Measured(out.verifier, m)
	return out, nil
}

// issuerHTTPClient trusts the system roots plus caFile when set.
func issuerHTTPClient(caFile string) (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("identity.caFile: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("identity.caFile %s: no PEM certificate found", caFile)
		}
		tc.RootCAs = pool
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	return &http.Client{Transport: tr, Timeout: 15 * time.Second}, nil
}

// bindingChecker keeps a nil *BindingVerifier from becoming a non-nil interface.
func bindingChecker(b *identity.BindingVerifier) broker.BindingChecker {
	if b == nil {
		return nil
	}
	return b
}
