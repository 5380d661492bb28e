package vault

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/broker/source/vaultref"
)

// Keys of a certificate secret: the files a TLS server or client loads.
const (
	KeyTLSCert = "tls.crt" // the leaf, then the intermediates (PEM)
	KeyTLSKey  = "tls.key" // the private key, PKCS #8 (PEM)
	KeyCACert  = "ca.crt"  // the trust anchor(s) the chain ends in (PEM)
)

// errBadCertificate means Vault answered with a certificate we will not deliver.
var errBadCertificate = errors.New("certificate answer rejected")

// pkiAnswer is the data of a pki/issue or pki/sign answer.
type pkiAnswer struct {
	Certificate string          `json:"certificate"`
	IssuingCA   string          `json:"issuing_ca"`
	CAChain     []string        `json:"ca_chain"`
	SerialNum   string          `json:"serial_number"`
	PrivateKey  keyText         `json:"private_key"`
	Expiration  json.RawMessage `json:"expiration"`
}

// keyText is a private key in an answer; it never prints.
type keyText string

func (keyText) String() string               { return "[REDACTED]" }
func (keyText) GoString() string             { return "[REDACTED]" }
func (keyText) LogValue() slog.Value         { return slog.StringValue("[REDACTED]") }
func (k keyText) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte("[REDACTED]")) }

// fetchPKI issues a certificate for spec: the key is generated here and a CSR sent to
// <mount>/sign/<role> (the key never leaves the node), or Vault generates it
// (<mount>/issue/<role>). A certificate is not renewable: it is re-issued at ⅔ of its
// lifetime (NotBefore to NotAfter), which the rotation engine reads from RenewAfter. Nothing
// is kept here: the value lives in the engine's cache (and its sealed stores) only.
func (s *Source) fetchPKI(ctx context.Context, spec vaultref.Spec) (*source.Secret, error) {
	req := spec.PKI
	body := map[string]any{"format": "pem"}
	if req.CommonName != "" {
		body["common_name"] = req.CommonName
	}
	if len(req.DNSNames) > 0 {
		body["alt_names"] = strings.Join(req.DNSNames, ",")
	}
	if req.URISAN != "" {
		body["uri_sans"] = req.URISAN
	}
	if req.TTL > 0 {
		body["ttl"] = strconv.FormatInt(req.TTL, 10) + "s"
	}
	var key crypto.Signer
	op := "issue"
	if req.KeyGen == vaultref.KeyGenNode {
		op = "sign"
		var err error
		if key, err = generateKey(req.KeyType); err != nil {
			return nil, fmt.Errorf("generate certificate key: %w", err)
		}
		csr, err := certificateRequest(key, req)
		if err != nil {
			return nil, err
		}
		body["csr"] = string(csr)
	} else {
		body["private_key_format"] = "pkcs8"
	}
	path := spec.Mount + "/" + op + "/" + spec.Role
	resp, err := s.do(ctx, call{class: "lease-issue", method: http.MethodPut, path: path, body: body, ns: s.nsOf(spec)})
	if err != nil {
		return nil, err
	}
	var ans pkiAnswer
	if len(resp.Data) == 0 || json.Unmarshal(resp.Data, &ans) != nil {
		return nil, fmt.Errorf("%w: %s: %w: data is not a certificate answer", source.ErrUnavailable, path, errMalformed)
	}
	sec, leaf, err := s.certificateSecret(&ans, key, req)
	if err != nil {
		s.log.Warn("certificate answer rejected", slog.String("path", path), slog.String("reason", err.Error()))
		return nil, fmt.Errorf("%w: %s: %w", source.ErrUnavailable, path, err)
	}
	s.log.Info("issued a certificate", slog.String("path", path), slog.String("serial", ans.SerialNum),
		slog.Time("not_after", leaf.NotAfter), slog.Time("renew_after", sec.RenewAfter), slog.Bool("key_on_node", key != nil))
	return sec, nil
}

func generateKey(keyType string) (crypto.Signer, error) {
	switch keyType {
	case vaultref.KeyTypeEC256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case vaultref.KeyTypeEC384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case vaultref.KeyTypeRSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return nil, errors.New("unknown key type")
}

// certificateRequest is a PEM CSR carrying the request's names, so a role with use_csr_sans
// (the default) reads the same names as the request body gives.
func certificateRequest(key crypto.Signer, req vaultref.PKIRequest) ([]byte, error) {
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: req.CommonName}, DNSNames: req.DNSNames}
	if req.URISAN != "" {
		u, err := url.Parse(req.URISAN)
		if err != nil {
			return nil, fmt.Errorf("certificate request: the URI SAN does not parse")
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// certificateSecret checks Vault's answer and lays it out as tls.crt, tls.key and ca.crt.
// key is the node-generated key, nil when Vault generated it. The certificate must carry the
// requested URI SAN and match the key; its lifetime must be at least the grant's min TTL.
func (s *Source) certificateSecret(ans *pkiAnswer, key crypto.Signer, req vaultref.PKIRequest) (*source.Secret, *x509.Certificate, error) {
	leaf, err := parseCert(ans.Certificate)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: the certificate does not parse", errBadCertificate)
	}
	var keyPEM []byte
	if key != nil {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, nil, fmt.Errorf("encode certificate key: %w", err)
		}
		keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	} else {
		keyPEM = []byte(strings.TrimSpace(string(ans.PrivateKey)) + "\n")
		blk, _ := pem.Decode(keyPEM)
		if blk == nil {
			return nil, nil, fmt.Errorf("%w: no private key in the answer", errBadCertificate)
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: the private key is not PKCS #8", errBadCertificate)
		}
		signer, ok := k.(crypto.Signer)
		if !ok {
			return nil, nil, fmt.Errorf("%w: the private key cannot sign", errBadCertificate)
		}
		key = signer
	}
	if !publicKeysEqual(leaf.PublicKey, key.Public()) {
		return nil, nil, fmt.Errorf("%w: the certificate is not for the private key", errBadCertificate)
	}
	if req.URISAN != "" && !slices.ContainsFunc(leaf.URIs, func(u *url.URL) bool { return u.String() == req.URISAN }) {
		return nil, nil, fmt.Errorf("%w: the certificate lacks the workload's SPIFFE ID as URI SAN (does the role allow it in allowed_uri_sans?)", errBadCertificate)
	}
	lifetime := leaf.NotAfter.Sub(leaf.NotBefore)
	if lifetime <= 0 {
		return nil, nil, fmt.Errorf("%w: the certificate has no lifetime", errBadCertificate)
	}
	if req.MinTTL > 0 && leaf.NotAfter.Sub(leaf.NotBefore) < time.Duration(req.MinTTL)*time.Second {
		return nil, nil, fmt.Errorf("%w: the certificate lives %s, less than the grant's ttl.min %s (the role's max_ttl caps it?)",
			errBadCertificate, lifetime.Round(time.Second), time.Duration(req.MinTTL)*time.Second)
	}

	chain := ans.CAChain
	if len(chain) == 0 && ans.IssuingCA != "" {
		chain = []string{ans.IssuingCA}
	}
	var crt, ca bytes.Buffer
	crt.WriteString(strings.TrimSpace(ans.Certificate) + "\n")
	var issuing []byte
	for _, p := range chain {
		c, err := parseCert(p)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: a CA certificate does not parse", errBadCertificate)
		}
		block := strings.TrimSpace(p) + "\n"
		if issuing == nil {
			issuing = []byte(block)
		}
		if isSelfSigned(c) {
			ca.WriteString(block) // a root: the trust anchor, not sent by a TLS peer
		} else {
			crt.WriteString(block) // an intermediate: part of the chain the peer presents
		}
	}
	if ca.Len() == 0 {
		// The chain stops below its root (an intermediate mount that does not return it):
		// the issuing CA is the anchor the pod can verify against.
		ca.Write(issuing)
	}
	if ca.Len() == 0 {
		return nil, nil, fmt.Errorf("%w: the answer has no CA certificate", errBadCertificate)
	}

	now := s.clock.Now()
	// ⅔ of the lifetime, from NotBefore: Vault backdates NotBefore a little, so this is ⅔ of
	// what the certificate is valid for. A certificate already past that point (a skewed
	// clock) is re-issued at ⅔ of what is left, never in a loop.
	renew := leaf.NotBefore.Add(lifetime * 2 / 3)
	if !renew.After(now) {
		renew = now.Add(leaf.NotAfter.Sub(now) * 2 / 3)
	}
	data := map[string]source.Value{
		KeyTLSCert: crt.Bytes(),
		KeyTLSKey:  keyPEM,
		KeyCACert:  ca.Bytes(),
	}
	return &source.Secret{
		Data:       data,
		Version:    "cert-" + shortHash(ans.SerialNum+"/"+leaf.SerialNumber.String()),
		ExpiresAt:  leaf.NotAfter,
		RenewAfter: renew,
	}, leaf, nil
}

func parseCert(p string) (*x509.Certificate, error) {
	blk, _ := pem.Decode([]byte(strings.TrimSpace(p)))
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
