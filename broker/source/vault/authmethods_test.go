package vault

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/internal/testlog"
)

const (
	testRoleID   = "role-id-3f9a"
	testSecretID = "secret-id-value-81c2"
	testWrapTok  = "hvs.wrapping-token-55d0"
)

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func approleEnv(t *testing.T, wrapped bool) (*env, string) {
	t.Helper()
	roleFile := writeTemp(t, "role-id", testRoleID+"\n")
	secretFile := writeTemp(t, "secret-id", testSecretID+"\n")
	if wrapped {
		secretFile = writeTemp(t, "secret-id", testWrapTok)
	}
	e := newEnv(t, func(c *Config) {
		c.Auth = AuthConfig{Method: MethodAppRole, RoleIDFile: roleFile, SecretIDFile: secretFile, SecretIDWrapped: wrapped}
	})
	e.f.approle[testRoleID] = testSecretID
	if wrapped {
		e.f.wrapped[testWrapTok] = testSecretID
	}
	return e, secretFile
}

func assertNoCredentials(t *testing.T, logs string) {
	t.Helper()
	for _, bad := range []string{testRoleID, testSecretID, testWrapTok} {
		if strings.Contains(logs, bad) {
			t.Errorf("logs contain %q", bad)
		}
	}
}

func TestSource_Login_appRole(t *testing.T) {
	e, secretFile := approleEnv(t, false)
	e.f.putKV2("a", map[string]any{"k": "s3cr3t"})
	if _, err := e.s.Fetch(ctxT(t), ref(t, kv2("a"))); err != nil {
		t.Fatal(err)
	}
	if n := e.f.count("PUT auth/approle/login"); n != 1 {
		t.Fatalf("approle logins = %d", n)
	}
	// A wrong secret ID is refused as configuration (unavailable), with no Vault text.
	if err := os.WriteFile(secretFile, []byte("wrong"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.f.revokeAllTokens()
	e.s.auth.invalidate(e.s.auth.token)
	err := e.s.Login(ctxT(t))
	if !errors.Is(err, source.ErrUnavailable) || !strings.Contains(err.Error(), "login refused") || strings.Contains(err.Error(), vaultErrText) {
		t.Fatalf("wrong secret ID: %v", err)
	}
	assertNoCredentials(t, e.logs.String()+err.Error())
}

func TestSource_Login_appRoleWrappedSecretIDUnwrappedOnce(t *testing.T) {
	e, _ := approleEnv(t, true)
	if err := e.s.Login(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	// The token is gone (max TTL, revocation): the next login reuses the unwrapped secret ID,
	// since the single-use wrapping token in the file cannot be unwrapped again.
	e.f.revokeAllTokens()
	e.s.auth.invalidate(e.s.auth.token)
	if err := e.s.Login(ctxT(t)); err != nil {
		t.Fatalf("second login: %v", err)
	}
	if u, l := e.f.count("PUT sys/wrapping/unwrap"), e.f.count("PUT auth/approle/login"); u != 1 || l != 2 {
		t.Fatalf("unwraps = %d, logins = %d; want 1 and 2", u, l)
	}
	assertNoCredentials(t, e.logs.String())
	// An orchestrator places a wrapping token that was already used: refused, clearly.
	if err := os.WriteFile(e.s.cfg.Auth.SecretIDFile, []byte("hvs.used-wrapping-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.f.revokeAllTokens()
	e.s.auth.invalidate(e.s.auth.token)
	e.clock.Step(time.Hour)
	err := e.s.Login(ctxT(t))
	if !errors.Is(err, source.ErrUnavailable) || !strings.Contains(err.Error(), "unwrap approle secret ID") {
		t.Fatalf("used wrapping token: %v", err)
	}
}

func TestSource_Login_jwtWritesRoleAndToken(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Auth.Method = MethodJWT })
	if err := e.s.Login(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if n := e.f.count("PUT auth/jwt/login"); n != 1 {
		t.Fatalf("jwt logins = %d", n)
	}
}

// newCertVault is a TLS Vault answering auth/cert/login for clients presenting a certificate
// with common name "keywarden-node".
func newCertVault(t *testing.T) (*httptest.Server, string, *int) {
	t.Helper()
	logins := new(int)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/auth/cert/login":
			var body map[string]any
			_ = json.NewDecoder(r.Body).Decode(&body)
			if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != "keywarden-node" || body["name"] != "node" {
				vaultError(w, http.StatusBadRequest)
				return
			}
			*logins++
			writeJSON(w, 200, map[string]any{"auth": map[string]any{"client_token": "hvs.fake-token-cert", "lease_duration": 600, "renewable": true}})
		default:
			vaultError(w, http.StatusNotFound)
		}
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile := writeTemp(t, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})))
	return srv, caFile, logins
}

func clientCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "keywarden-node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writeTemp(t, "client.crt", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))),
		writeTemp(t, "client.key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})))
}

func TestSource_Login_certPresentsClientCertificate(t *testing.T) {
	srv, caFile, logins := newCertVault(t)
	certFile, keyFile := clientCert(t)
	logs := &testlog.Buffer{}
	s, err := New(Config{Address: srv.URL, CACertFile: caFile, Logger: slog.New(slog.NewJSONHandler(logs, nil)),
		Auth: AuthConfig{Method: MethodCert, Role: "node", ClientCertFile: certFile, ClientKeyFile: keyFile}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Login(ctxT(t)); err != nil {
		t.Fatalf("cert login: %v", err)
	}
	if *logins != 1 {
		t.Fatalf("cert logins = %d", *logins)
	}
	// The wrong certificate role is refused as configuration.
	s2, err := New(Config{Address: srv.URL, CACertFile: caFile, Logger: slog.New(slog.DiscardHandler),
		Auth: AuthConfig{Method: MethodCert, Role: "other", ClientCertFile: certFile, ClientKeyFile: keyFile}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Login(ctxT(t)); !errors.Is(err, source.ErrUnavailable) || !strings.Contains(err.Error(), "login refused") {
		t.Fatalf("wrong role: %v", err)
	}
	if strings.Contains(logs.String(), "hvs.fake-token-cert") {
		t.Fatal("token logged")
	}
}

func TestNew_authConfigBadInput(t *testing.T) {
	certFile, keyFile := clientCert(t)
	tests := []struct {
		name, addr string
		auth       AuthConfig
		want       string
	}{
		{"unknown method", "", AuthConfig{Method: "token"}, "auth method must be"},
		{"kubernetes without role", "", AuthConfig{Method: MethodKubernetes, TokenFile: "/t"}, "auth role is required with method kubernetes"},
		{"jwt without token file", "", AuthConfig{Method: MethodJWT, Role: "r"}, "auth token file is required with method jwt"},
		{"kubernetes with secret id", "", AuthConfig{Method: MethodKubernetes, Role: "r", TokenFile: "/t", SecretIDFile: "/s"}, "secret ID file is not used"},
		{"approle without role id", "", AuthConfig{Method: MethodAppRole, SecretIDFile: "/s"}, "role ID file is required"},
		{"approle without secret id", "", AuthConfig{Method: MethodAppRole, RoleIDFile: "/r"}, "secret ID file is required"},
		{"approle with role", "", AuthConfig{Method: MethodAppRole, RoleIDFile: "/r", SecretIDFile: "/s", Role: "x"}, "role (the role ID file names the role) is not used"},
		{"wrapped without approle", "", AuthConfig{Method: MethodJWT, Role: "r", TokenFile: "/t", SecretIDWrapped: true}, "wrapping is only used with method approle"},
		{"cert without key", "https://v", AuthConfig{Method: MethodCert, ClientCertFile: certFile}, "client key file is required"},
		{"cert over http", "http://v", AuthConfig{Method: MethodCert, ClientCertFile: certFile, ClientKeyFile: keyFile}, "needs an https address"},
		{"cert with unreadable key", "https://v", AuthConfig{Method: MethodCert, ClientCertFile: certFile, ClientKeyFile: "/nonexistent"}, "load vault client certificate"},
		{"cert key mismatch", "https://v", AuthConfig{Method: MethodCert, ClientCertFile: certFile, ClientKeyFile: certFile}, "load vault client certificate"},
		{"key without cert method", "", AuthConfig{Method: MethodKubernetes, Role: "r", TokenFile: "/t", ClientKeyFile: keyFile}, "client key file is not used"},
		{"role with slash", "", AuthConfig{Method: MethodKubernetes, Role: "a/b", TokenFile: "/t"}, "auth role must be a single name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := tt.addr
			if addr == "" {
				addr = "http://127.0.0.1:1"
			}
			_, err := New(Config{Address: addr, Auth: tt.auth, Logger: slog.New(slog.DiscardHandler)})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Fatal("error repeats key material")
			}
		})
	}
}
