//go:build e2e

package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/source/vault"
	"github.com/keywarden/keywarden/broker/source/vaultref"
	"github.com/keywarden/keywarden/e2e/framework"
	"github.com/keywarden/keywarden/internal/testlog"
)

// TestVault_certLogin logs the Vault source in with TLS certificate auth against a real Vault
// with an https listener, and reads a KV secret with the token; a certificate of another CA
// is refused.
func TestVault_certLogin(t *testing.T) {
	v := framework.StartVaultTLS(t)
	v.PutPolicy(t, "keywarden", daemonPolicy)
	dir := t.TempDir()
	caPEM, certFile, keyFile := clientCA(t, dir, "node", "keywarden-node")
	v.Write(t, "sys/auth/cert", map[string]any{"type": "cert"})
	v.Write(t, "auth/cert/certs/keywarden", map[string]any{"certificate": string(caPEM), "allowed_common_names": "keywarden-node",
		"token_policies": "keywarden", "token_ttl": "1h"})
	remember("cert-kv-value")
	if _, err := v.Client.KVv2("secret").Put(ctx(t), "app/api", map[string]any{"token": "cert-kv-value"}); err != nil {
		t.Fatal(err)
	}
	logs := &testlog.Buffer{}
	src, err := vault.New(vault.Config{Address: v.Addr, CACertFile: v.CAFile, Logger: slog.New(slog.NewJSONHandler(logs, nil)),
		Auth: vault.AuthConfig{Method: vault.MethodCert, Role: "keywarden", ClientCertFile: certFile, ClientKeyFile: keyFile}})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Login(ctx(t)); err != nil {
		t.Fatalf("cert login: %v\n%s", err, logs.String())
	}
	ref, err := vaultref.Spec{Engine: vaultref.KVv2, Mount: "secret", Path: "app/api"}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	sec, err := src.Fetch(ctx(t), ref)
	if err != nil || string(sec.Data["token"]) != "cert-kv-value" {
		t.Fatalf("fetch with the cert login's token: %v", err)
	}

	// A certificate from a CA Vault does not trust: the login is refused.
	_, otherCert, otherKey := clientCA(t, t.TempDir(), "other", "keywarden-node")
	other, err := vault.New(vault.Config{Address: v.Addr, CACertFile: v.CAFile, Logger: slog.New(slog.DiscardHandler),
		Auth: vault.AuthConfig{Method: vault.MethodCert, ClientCertFile: otherCert, ClientKeyFile: otherKey}})
	if err != nil {
		t.Fatal(err)
	}
	err = other.Login(ctx(t))
	if err == nil || !strings.Contains(err.Error(), "login refused") {
		t.Fatalf("untrusted certificate: %v", err)
	}
	t.Logf("untrusted certificate: %v", err)
	if strings.Contains(logs.String(), "hvs.") {
		t.Fatal("a Vault token reached the log")
	}
}

// clientCA writes a CA and a client certificate (common name cn) it signed; it returns the
// CA's PEM and the certificate and key files.
func clientCA(t *testing.T, dir, name, cn string) (caPEM []byte, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " client CA"}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writeFile(t, certFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	writeFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})))
	return caPEM, certFile, keyFile
}
