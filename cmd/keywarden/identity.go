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

	"k8s.io/client-go/kubernetes"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/identity"
)

// Identity modes.
const (
	identityModeJWT         = "jwt"         // verify signatures locally with the issuer's keys
	identityModeTokenReview = "tokenreview" // ask the apiserver
)

// rawNode is the node this daemon serves (set from the downward API: spec.nodeName).
type rawNode struct {
	NodeName string `json:"nodeName"`
}

// rawIdentityRemote are the identity keys for Kubernetes issuers.
type rawIdentityRemote struct {
	Mode            string `json:"mode"`
	JWKSURL         string `json:"jwksURL"`
	DiscoveryURL    string `json:"discoveryURL"`
	CAFile          string `json:"caFile"`
	BearerTokenFile string `json:"bearerTokenFile"`
	NodeBinding     *bool  `json:"nodeBinding"`
}

// identityRemote is the typed form of rawIdentityRemote and rawNode.
type identityRemote struct {
	NodeName        string
	IdentityMode    string
	JWKSURL         string
	DiscoveryURL    string
	IssuerCAFile    string
	BearerTokenFile string
	NodeBinding     bool
}

func (r rawConfig) typedIdentity(c *config, fail func(field, format string, args ...any)) {
	ri := r.Identity.rawIdentityRemote
	c.identityRemote = identityRemote{
		NodeName:        r.NodeName,
		IdentityMode:    or(ri.Mode, identityModeJWT),
		JWKSURL:         ri.JWKSURL,
		DiscoveryURL:    ri.DiscoveryURL,
		IssuerCAFile:    ri.CAFile,
		BearerTokenFile: ri.BearerTokenFile,
		// Node binding is on unless switched off: a token is honoured only for a pod that
		// runs on this node.
		NodeBinding: ri.NodeBinding == nil || *ri.NodeBinding,
	}
	keySources := 0
	for _, v := range []string{c.JWKSFile, c.JWKSURL, c.DiscoveryURL, c.DevIssuerKeyFile} {
		if v != "" {
			keySources++
		}
	}
	switch c.IdentityMode {
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
	for _, u := range []struct{ field, v string }{{"identity.jwksURL", c.JWKSURL}, {"identity.discoveryURL", c.DiscoveryURL}} {
		if u.v == "" {
			continue
		}
		if pu, err := url.Parse(u.v); err != nil || pu.Scheme != "https" || pu.Host == "" {
			fail(u.field, "want an https URL; got %q", u.v)
		}
	}
	if c.NodeBinding && c.NodeName == "" {
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

// buildVerifier composes token verification: key source (dev issuer, JWKS file, remote JWKS)
// or TokenReview, then the verification cache, then the node binding (never cached: pods come
// and go), then metrics. kube may be nil unless TokenReview or node binding is on.
func buildVerifier(cfg config, log *slog.Logger, kube kubernetes.Interface, m *identity.Metrics) (*verifierParts, error) {
	out := &verifierParts{}
	var base identity.TokenVerifier
	if cfg.IdentityMode == identityModeTokenReview {
		if kube == nil {
			return nil, errors.New("identity mode tokenreview needs a Kubernetes client: configure kubernetes")
		}
		tr, err := identity.NewTokenReviewVerifier(identity.TokenReviewConfig{
			Reviewer: kube.AuthenticationV1().TokenReviews(), Audiences: cfg.Audiences, TrustDomain: cfg.TrustDomain,
		})
		if err != nil {
			return nil, err
		}
		base = tr
	} else {
		var keys identity.KeySet
		switch {
		case cfg.DevIssuerKeyFile != "":
			dev, err := identity.LoadOrCreateDevIssuer(cfg.DevIssuerKeyFile, cfg.Issuer)
			if err != nil {
				return nil, fmt.Errorf("dev issuer: %w", err)
			}
			out.dev, keys = dev, dev.KeySet()
		case cfg.JWKSFile != "":
			data, err := os.ReadFile(cfg.JWKSFile)
			if err != nil {
				return nil, fmt.Errorf("read JWKS file: %w", err)
			}
			if keys, err = identity.ParseJWKS(data); err != nil {
				return nil, fmt.Errorf("JWKS file %s: %w", cfg.JWKSFile, err)
			}
		default:
			client, err := issuerHTTPClient(cfg.IssuerCAFile)
			if err != nil {
				return nil, err
			}
			remote, err := identity.NewRemoteKeySet(identity.RemoteKeySetConfig{
				Issuer: cfg.Issuer, DiscoveryURL: cfg.DiscoveryURL, JWKSURL: cfg.JWKSURL, HTTPClient: client,
				BearerTokenFile: cfg.BearerTokenFile, Logger: log.With(slog.String("component", "issuer-keys")), Metrics: m,
			})
			if err != nil {
				return nil, err
			}
			keys = remote
			out.runners = append(out.runners, remote.Run)
		}
		v, err := identity.NewVerifier(identity.Config{
			Issuer: cfg.Issuer, Audiences: cfg.Audiences, Keys: keys, TrustDomain: cfg.TrustDomain,
			Leeway: cfg.Leeway, MaxLifetime: cfg.MaxLifetime, DisablePodBinding: !cfg.RequirePodBinding,
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
	if cfg.NodeBinding {
		if kube == nil {
			return nil, errors.New("identity.nodeBinding needs a Kubernetes client to watch this node's pods: configure kubernetes, or set identity.nodeBinding: false")
		}
		pods, err := identity.NewPodIndex(identity.PodIndexConfig{Client: kube, NodeName: cfg.NodeName, Logger: log.With(slog.String("component", "pod-index")), Metrics: m})
		if err != nil {
			return nil, err
		}
		bound, err := identity.NewBindingVerifier(identity.BindingConfig{Verifier: cached, Pods: pods, NodeName: cfg.NodeName, Logger: log})
		if err != nil {
			return nil, err
		}
		out.verifier, out.binding = bound, bound
		out.runners = append(out.runners, pods.Run)
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
